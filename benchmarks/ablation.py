"""The paper's policy ablation (Sec. 4.4), at small scale on the generated videos.

ResNet-18 from scratch, trained and tested exactly like ``adafuse demo`` (mmengine's Runner,
mmaction2's video pipeline, ``AdaFuseMetric``; the demo's default recipe), for

    TSN, Ada. Skip (keep/skip), Ada. Reuse (keep/reuse), Random (FLOPs-matched),
    Threshold (FLOPs-matched), AdaFuse, TSM, AdaFuse-TSM

over several seeds. Random draws keep/reuse/skip with the test mix of the learned AdaFuse
policy of the same seed (so its Eq. 5 FLOPs match in expectation); Threshold keeps the
channels with the largest pooled activation, as many as AdaFuse does not skip. Prints a
markdown table (mean and standard deviation over seeds), writes it with every run's result
to ``--out`` (``ablation.md``, ``ablation.json``) and plots top-1 against GFLOPs
(``ablation.png``).

    python benchmarks/ablation.py --seeds 0 1 2 --workers 2 --out ablation_output
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

from tqdm import tqdm

from adafuse_plugin.demo import DemoSettings, Variant, prepare_data, train_and_test
from adafuse_plugin.demo.videos import FAMILIES, PHASES

ACTIONS = ("keep", "reuse", "skip")
LEARNED = (
    Variant("TSN", "tsn", "keep"),
    Variant("Ada. Skip", "tsn", "keep_skip"),
    Variant("Ada. Reuse", "tsn", "keep_reuse"),
    Variant("AdaFuse", "tsn", "adafuse"),
    Variant("TSM", "tsm", "keep"),
    Variant("AdaFuse-TSM", "tsm", "adafuse"),
)
ORDER = ("TSN", "Ada. Skip", "Ada. Reuse", "Random", "Threshold", "AdaFuse", "TSM", "AdaFuse-TSM")
Job = tuple[Variant, DemoSettings, str, str, str | None]  # ..., work dir, load_from


def matched_baselines(adafuse: dict) -> tuple[Variant, Variant]:
    """Random and Threshold variants with the FLOPs of a trained AdaFuse result."""
    mix = adafuse["mix"]
    total = sum(mix.values())
    ratios = tuple(mix[a] / total for a in ACTIONS)
    return (
        Variant("Random", "tsn", "random", {"random_ratios": ratios}),
        Variant("Threshold", "tsn", "threshold", {"threshold_keep_ratio": 1.0 - ratios[2]}),
    )


def run_job(job: Job) -> dict:
    """Train and test one (variant, seed) in a worker process."""
    import torch

    variant, settings, data_root, work_dir, load_from = job
    torch.set_num_threads(settings.threads)
    start = Path(load_from) if load_from else None
    with tqdm(disable=True) as bar:
        result = train_and_test(variant, settings, Path(data_root), Path(work_dir), bar, start)
    return dict(result, seed=settings.seed)


def run_phase(
    variants: Sequence[Variant] | Callable[[int], Sequence[Variant]],
    seeds: Sequence[int],
    settings: DemoSettings,
    data_root: Path,
    out: Path,
    workers: int,
    trained: Sequence[dict] = (),
) -> list[dict]:
    """Train and test every (variant, seed); ``variants`` may depend on the seed. A variant
    with ``init_from`` starts from the checkpoint of that model and seed in ``trained``."""
    checkpoints = {(r["model"], r["seed"]): r["checkpoint"] for r in trained}
    jobs: list[Job] = []
    for seed in seeds:
        seeded = dataclasses.replace(settings, seed=seed)
        for variant in variants(seed) if callable(variants) else variants:
            work_dir = out / "work_dirs" / f"{variant.name.replace(' ', '_')}-seed{seed}"
            load_from = checkpoints[variant.init_from, seed] if variant.init_from else None
            jobs.append((variant, seeded, str(data_root), str(work_dir), load_from))
    results = []
    out.mkdir(parents=True, exist_ok=True)
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
        for result in tqdm(pool.map(run_job, jobs), total=len(jobs), desc="runs", unit="run"):
            results.append(result)
            with open(out / "runs.jsonl", "a") as log:  # every finished run, as it finishes
                log.write(json.dumps(result) + "\n")
    return results


def _mean_std(values: list[float], scale: float = 1.0) -> tuple[float, float]:
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return statistics.mean(values) * scale, spread * scale


def summarise(results: list[dict]) -> list[dict]:
    """Per model: mean and std over seeds of top-1 (%) and GFLOPs, mean mix, FLOPs vs TSN."""
    by_name: dict[str, list[dict]] = {}
    for r in results:
        by_name.setdefault(r["model"], []).append(r)
    tsn_flops = statistics.mean(r["adaptive_gflops"] for r in by_name["TSN"])
    rows = []
    for name in ORDER:
        runs = by_name.get(name)
        if not runs:
            continue
        top1, top1_std = _mean_std([r["top1"] for r in runs], 100)
        gflops, gflops_std = _mean_std([r["adaptive_gflops"] for r in runs])
        rows.append(
            {
                "model": name,
                "top1": top1,
                "top1_std": top1_std,
                "gflops": gflops,
                "gflops_std": gflops_std,
                "flops_vs_tsn": gflops / tsn_flops,
                "mix": {a: statistics.mean(r["mix"][a] for r in runs) for a in ACTIONS},
                "seeds": sorted(r["seed"] for r in runs),
            }
        )
    return rows


def markdown(rows: list[dict]) -> str:
    """The summary as a markdown table."""
    lines = [
        "| model | top-1 % (mean ± std) | GFLOPs / clip | % of TSN FLOPs | keep / reuse / skip % "
        "| seeds |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        mix = " / ".join(f"{100 * r['mix'][a]:.0f}" for a in ACTIONS)
        lines.append(
            f"| {r['model']} | {r['top1']:.1f} ± {r['top1_std']:.1f} | {r['gflops']:.3f} | "
            f"{100 * r['flops_vs_tsn']:.0f} | {mix} | {len(r['seeds'])} |"
        )
    return "\n".join(lines)


def plot(
    rows: list[dict],
    path: Path,
    title: str = "Policy ablation on generated videos (ResNet-18)",
    sweeps: Mapping[str, Sequence[str]] | None = None,
) -> Path:
    """Top-1 against GFLOPs per clip, error bars = std over seeds. Each of ``sweeps``
    (legend label -> model names, e.g. one method over lambdas) is drawn in one colour,
    linked in FLOPs order, each point tagged with its name minus the label."""
    from adafuse_plugin.demo.plots import new_figure

    figure = new_figure(6.8, 4.8)
    ax = figure.add_subplot()
    sweeps = sweeps or {}
    swept = {name for names in sweeps.values() for name in names}
    groups = [(label, [r for r in rows if r["model"] in names]) for label, names in sweeps.items()]
    groups += [(r["model"], [r]) for r in rows if r["model"] not in swept]
    for index, (label, group) in enumerate(g for g in groups if g[1]):
        group = sorted(group, key=lambda r: r["gflops"])
        ax.errorbar(
            [r["gflops"] for r in group],
            [r["top1"] for r in group],
            xerr=[r["gflops_std"] for r in group],
            yerr=[r["top1_std"] for r in group],
            fmt="o-" if len(group) > 1 else "o",
            color=f"C{index % 10}",
            capsize=3,
            markersize=7,
            label=label,
        )
        for r in group if len(group) > 1 else ():
            tag = r["model"].removeprefix(label).strip()
            ax.annotate(
                tag, (r["gflops"], r["top1"]), (4, -10), textcoords="offset points", fontsize=7
            )
    ax.set_xlabel("GFLOPs per clip (Eq. 5, adaptive)")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    figure.tight_layout()
    figure.savefig(path)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--workers", type=int, default=2, help="parallel runs, one core each")
    parser.add_argument("--size", default="small", help="dataset size (tiny/small/medium/large)")
    parser.add_argument("--epochs", type=int, default=None, help="default: the demo's")
    parser.add_argument(
        "--phase", choices=PHASES, default="random", help="generated actions' start phase"
    )
    parser.add_argument("--family", choices=sorted(FAMILIES), default="motion")
    parser.add_argument("--out", type=Path, default=Path("ablation_output"))
    args = parser.parse_args()
    settings = DemoSettings(
        size=args.size, num_workers=0, threads=1, quiet=True, phase=args.phase, family=args.family
    )
    if args.epochs:
        settings = dataclasses.replace(settings, epochs=args.epochs)
    data_root = prepare_data(args.out, settings)
    (args.out / "runs.jsonl").unlink(missing_ok=True)  # this run's log only

    results = run_phase(LEARNED, args.seeds, settings, data_root, args.out, args.workers)

    def matched(seed: int) -> tuple[Variant, Variant]:
        adafuse = next(r for r in results if r["model"] == "AdaFuse" and r["seed"] == seed)
        return matched_baselines(adafuse)

    results += run_phase(matched, args.seeds, settings, data_root, args.out, args.workers)
    rows = summarise(results)
    table = markdown(rows)
    print(f"\nsettings: {dataclasses.asdict(settings)}\n\n{table}")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "ablation.md").write_text(table + "\n")
    report = {"settings": dataclasses.asdict(settings), "summary": rows, "results": results}
    (args.out / "ablation.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"written: {plot(rows, args.out / 'ablation.png')}, ablation.md, ablation.json")


if __name__ == "__main__":
    main()
