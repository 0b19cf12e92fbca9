"""Which clips of a pair trained models get wrong, and what those clips have in common.

A per-pair accuracy says that a model misses a temporal distinction, not why. This probe
renders fresh clips of the two classes of one pair (a split of their own: the dataset's
seed with split index 3, never trained or tested on), tests every given work folder on
them through its own test pipeline (the clips written as videos, as the test split is),
and tabulates within-pair accuracy (the class scores above its time-reversed partner) by
the clip's attributes: the actor's shape, texture and radius, how far the action goes
(the turn of a rotation, the shift of a move...), and the number of distractors and how
fast they turn.

    python benchmarks/pair_probe.py --pair rotating_clockwise --clips 300 \\
        --work-dirs RUN/work_dirs/TSM-seed0 RUN/work_dirs/TSN-seed0 --out probe_output

Writes ``pair_probe.md`` (the tables) and ``clips.jsonl`` (every clip's attributes and each
model's scores) to ``--out``. Work folders hold an mmengine config dump and checkpoints
(``--allow-unsafe-checkpoints`` for checkpoints that hold more than weights).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from tabulate import tabulate
from tqdm import tqdm

from adafuse_plugin.demo.videos import FAMILIES, ClipSpec, render_clip, sample_spec, write_video
from adafuse_plugin.mmaction.streaming import load_work_dir

#: Split index of the probe's clips (train, val and test are 0, 1 and 2).
PROBE_SPLIT = 3
#: What each canonical class acts on: a pose attribute of the actor, or the background pan.
ACTED = {
    "moving_right": "x",
    "moving_down": "y",
    "approaching": "scale",
    "rotating_clockwise": "angle",
    "appearing": "opacity",
    "orbiting_clockwise": "orbit",
    "hue_rising": "hue",
    "texture_scrolling_forward": "scroll",
    "background_moving_left": "pan",
}


def attributes(spec: ClipSpec) -> dict:
    """What a clip shows, symmetric in time (a clip and its reversal share them)."""
    actor = spec.actor
    canonical = FAMILIES[spec.family][spec.label & ~1]
    acted = ACTED[canonical]
    if acted == "pan":
        amount = abs(spec.pan[1] - spec.pan[0])
    else:
        amount = abs(getattr(actor.end, acted) - getattr(actor.start, acted))
    distractors = spec.behind + spec.front
    turns = [abs(d.end.angle - d.start.angle) for d in distractors]
    return {
        "shape": actor.shape,
        "texture": actor.texture,
        "radius_px": actor.radius * spec.frame_size,
        "amount": amount,
        "distractors": len(distractors),
        "distractor_turn": max(turns, default=0.0),
    }


def _dataset_params(cfg) -> dict:
    """The generation parameters of the dataset a work folder was tested on."""
    root = Path(cfg.test_dataloader.dataset.data_prefix["video"])
    return json.loads((root / "manifest.json").read_text())["params"]


def render_probe(out: Path, params: dict, pair: Sequence[int], clips: int) -> list[dict]:
    """Write ``clips`` fresh clips of each class of ``pair`` as videos; their records."""
    records = []
    (out / "videos").mkdir(parents=True, exist_ok=True)
    for index in tqdm(range(clips), desc="rendering"):
        for label in pair:
            rng = np.random.default_rng([params["seed"], PROBE_SPLIT, label, index])
            spec = sample_spec(
                label,
                rng,
                params["num_frames"],
                params["frame_size"],
                params["phase"],
                params["family"],
            )
            path = out / "videos" / f"{label}_{index:04d}.mp4"
            write_video(path, render_clip(spec))
            records.append({"video": str(path), "label": label, **attributes(spec)})
    return records


def scores_of(work_dir: Path, records: list[dict], allow_unsafe: bool, batch: int = 16) -> list:
    """Class scores of a work folder's model for every clip, through its test pipeline."""
    from mmcv.transforms import Compose
    from mmengine.dataset import pseudo_collate
    from mmengine.registry import init_default_scope

    model, cfg = load_work_dir(work_dir, allow_unsafe=allow_unsafe)
    init_default_scope(cfg.get("default_scope", "mmaction"))
    pipeline = Compose(cfg.test_dataloader.dataset.pipeline)
    scores = []
    for start in tqdm(range(0, len(records), batch), desc=work_dir.name):
        items = [
            pipeline({"filename": r["video"], "label": r["label"], "start_index": 0})
            for r in records[start : start + batch]
        ]
        with torch.no_grad():
            samples = model.test_step(pseudo_collate(items))
        scores += [sample.pred_scores.item.tolist() for sample in samples]
    return scores


def _terciles(values: Sequence[float], digits: int) -> Callable[[float], str]:
    """A function naming the tercile of ``values`` a value falls in ("low-high")."""
    edges = np.quantile(values, [0.0, 1 / 3, 2 / 3, 1.0])

    def name(value: float) -> str:
        k = min(int(np.searchsorted(edges, value, side="right")) - 1, 2)
        return f"{edges[k]:.{digits}f}-{edges[k + 1]:.{digits}f}"

    return name


def tables(records: list[dict], models: Sequence[str]) -> str:
    """Within-pair accuracy of each model, overall and by each attribute."""
    radius = _terciles([r["radius_px"] for r in records], 1)
    amount = _terciles([r["amount"] for r in records], 2)
    turn = _terciles([r["distractor_turn"] for r in records], 0)
    groupings: dict[str, Callable[[dict], str]] = {
        "all clips": lambda r: "all",
        "actor shape": lambda r: r["shape"],
        "actor texture": lambda r: r["texture"],
        "actor radius (px)": lambda r: radius(r["radius_px"]),
        "action amount": lambda r: amount(r["amount"]),
        "distractors": lambda r: str(r["distractors"]),
        "fastest distractor turn (deg)": lambda r: turn(r["distractor_turn"]),
    }
    sections = []
    for title, key in groupings.items():
        groups: dict[str, list[dict]] = {}
        for record in records:
            groups.setdefault(key(record), []).append(record)
        rows = []
        for value, members in sorted(groups.items()):
            row: list[object] = [value, len(members)]
            for model in models:
                hits = [r["correct"][model] for r in members]
                row.append(f"{100 * sum(hits) / len(hits):.1f}")
            rows.append(row)
        headers = [title, "clips", *(f"{m} within-pair %" for m in models)]
        sections.append(tabulate(rows, headers, tablefmt="github", disable_numparse=True))
    return "\n\n".join(sections)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work-dirs", nargs="+", type=Path, required=True)
    parser.add_argument("--pair", required=True, help="a class name of the pair to probe")
    parser.add_argument("--clips", type=int, default=300, help="clips per class")
    parser.add_argument("--out", type=Path, default=Path("pair_probe_output"))
    parser.add_argument("--allow-unsafe-checkpoints", action="store_true")
    args = parser.parse_args(argv)
    if args.clips < 3:
        parser.error("--clips must be at least 3 (attribute terciles)")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    _, cfg = load_work_dir(args.work_dirs[0], allow_unsafe=args.allow_unsafe_checkpoints)
    params = _dataset_params(cfg)
    classes = params["classes"]
    if args.pair not in classes:
        raise SystemExit(f"--pair {args.pair!r} is not a class of this dataset: {classes}")
    label = classes.index(args.pair)
    pair = (label & ~1, label | 1)
    records = render_probe(args.out, params, pair, args.clips)
    models = [w.name for w in args.work_dirs]
    for work_dir in args.work_dirs:
        model_scores = scores_of(work_dir, records, args.allow_unsafe_checkpoints)
        for record, scores in zip(records, model_scores):
            record.setdefault("scores", {})[work_dir.name] = scores
            correct = scores[record["label"]] > scores[record["label"] ^ 1]
            record.setdefault("correct", {})[work_dir.name] = bool(correct)
    title = f"# Pair probe: {classes[pair[0]]} / {classes[pair[1]]}, {args.clips} clips per class"
    report = f"{title}\n\n{tables(records, models)}\n"
    (args.out / "pair_probe.md").write_text(report)
    with open(args.out / "clips.jsonl", "w") as file:
        file.writelines(json.dumps(record) + "\n" for record in records)
    print(report)


if __name__ == "__main__":
    main()
