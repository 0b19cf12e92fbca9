"""Early exit on trained models: top-1 vs average GFLOPs per clip, frame by frame.

Takes the work folders of models trained by ``adafuse demo`` or ``benchmarks/ablation.py``
(TSN-style mmaction2 ResNets: the config dump and the last ``epoch_*.pth``), streams every
val and test clip through a `StreamingRunner` (causal, one frame at a time, only the channels
AdaFuse executes), calibrates exit thresholds on val for each frame budget (AdaFocusV2: exit
fractions proportional to p^k) and evaluates them on test. Costs are the executed FLOPs of
each clip's frames (exactly Eq. 5 plus the policy networks: no dense fallback). Prints a
markdown table and writes ``early_exit.png`` / ``.json`` / ``.md`` to ``--out``.

    python benchmarks/early_exit_curve.py ablation_output/work_dirs/TSN-seed0 \\
        ablation_output/work_dirs/AdaFuse-seed0 --out early_exit_output
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from tqdm import tqdm

from adafuse_plugin.early_exit import exit_curve
from adafuse_plugin.mmaction.streaming import load_work_dir, streaming_runner


def stream_split(recognizer: torch.nn.Module, cfg: object, split: str) -> dict[str, torch.Tensor]:
    """Per-frame logits (N, T, K), executed FLOPs (N, T) and labels (N,) of a split."""
    import copy

    from mmengine.runner import Runner

    loader_cfg = copy.deepcopy(cfg.test_dataloader)
    ann_file = Path(loader_cfg.dataset.ann_file)
    loader_cfg.dataset.ann_file = str(ann_file.with_name(f"{split}_list.txt"))
    loader_cfg.num_workers, loader_cfg.persistent_workers = 0, False
    # No dense fallback: executed work is then exactly Eq. 5 (+ policy), the paper's measure.
    runner = streaming_runner(recognizer, dense_fallback="never")
    logits, flops, labels = [], [], []
    with torch.no_grad():
        for batch in tqdm(Runner.build_dataloader(loader_cfg), desc=split, leave=False):
            batch = recognizer.data_preprocessor(batch, False)
            for clip, sample in zip(batch["inputs"], batch["data_samples"], strict=True):
                runner.reset()
                steps = [runner.step(frame) for frame in clip]
                logits.append(torch.stack([s.logits for s in steps]))
                flops.append(torch.tensor([float(s.flops) for s in steps]))
                labels.append(int(sample.gt_labels.item))
    return {
        "logits": torch.stack(logits),
        "flops": torch.stack(flops),
        "labels": torch.tensor(labels),
    }


def plot(curves: dict[str, list[dict]], path: Path) -> Path:
    from adafuse_plugin.demo.plots import new_figure

    figure = new_figure(6.4, 4.6)
    ax = figure.add_subplot()
    for name, points in curves.items():
        ax.plot([p["gflops"] for p in points], [p["top1"] for p in points], "o-", label=name)
    ax.set_xlabel("average executed GFLOPs per clip")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_title("Early exit (thresholds calibrated on val, evaluated on test)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("work_dirs", type=Path, nargs="+")
    parser.add_argument(
        "--budgets",
        type=float,
        nargs="+",
        default=None,
        help="average frames per clip (default: 1..T)",
    )
    parser.add_argument("--out", type=Path, default=Path("early_exit_output"))
    parser.add_argument(
        "--allow-unsafe-checkpoints",
        action="store_true",
        help="unpickle checkpoints fully (only files you trust)",
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    curves: dict[str, list[dict]] = {}
    lines = [
        "| model | frame budget | avg frames | avg GFLOPs / clip | top-1 % |",
        "|---|---|---|---|---|",
    ]
    for work_dir in args.work_dirs:
        recognizer, cfg = load_work_dir(work_dir, args.allow_unsafe_checkpoints)
        val, test = stream_split(recognizer, cfg, "val"), stream_split(recognizer, cfg, "test")
        frames = test["logits"].shape[1]
        budgets = args.budgets or [float(b) for b in range(1, frames + 1)]
        evaluations = exit_curve(
            val["logits"], test["logits"], test["labels"], budgets, test["flops"]
        )
        points = []
        for budget, e in zip(budgets, evaluations, strict=True):
            point = {
                "budget": budget,
                "frames": e.avg_frames,
                "gflops": e.avg_gflops,
                "top1": 100 * e.accuracy,
            }
            points.append(point)
            lines.append(
                f"| {work_dir.name} | {budget:g} | {e.avg_frames:.2f} | "
                f"{e.avg_gflops:.4f} | {100 * e.accuracy:.1f} |"
            )
        curves[work_dir.name] = points
    table = "\n".join(lines)
    print(table)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "early_exit.json").write_text(json.dumps(curves, indent=2) + "\n")
    (args.out / "early_exit.md").write_text(table + "\n")
    print(f"written: {plot(curves, args.out / 'early_exit.png')}, early_exit.json, early_exit.md")


if __name__ == "__main__":
    main()
