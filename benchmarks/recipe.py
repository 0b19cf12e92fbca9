"""Pretrain, then adapt: the paper's recipe at small scale on the generated videos.

The paper never trains AdaFuse from scratch: its backbones start from ImageNet and the
policy learns on top of good features. Here the stand-in for ImageNet is the plain model
trained first on the same videos: TSN and TSM ResNet-18 from scratch (``--epochs``), then
every AdaFuse model starts from their weights through mmengine's ``load_from`` (only the
AdaFuse weights missing) and adapts for ``--adapt-epochs`` at ``--adapt-lr``:

- from TSN: AdaFuse over ``--lambdas`` (the FLOPs weight), Ada. Skip (keep/skip), TSN
  itself fine-tuned as long (a control for the extra epochs), and Random / Threshold
  matched to the FLOPs of AdaFuse at the first lambda;
- from TSM: AdaFuse-TSM and AdaFuse-TSM+Last (gates in the last stage only).

Every run is trained and tested like ``adafuse demo`` (mmaction2 pipeline,
``AdaFuseMetric`` with within-pair accuracy). Writes ``recipe.md`` (mean ± std over seeds),
``recipe.json`` (every run) and ``recipe.png`` (top-1 against GFLOPs) to ``--out``.

    python benchmarks/recipe.py --seeds 0 1 2 --out recipe_output
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
from pathlib import Path

from ablation import ACTIONS, matched_baselines, plot, run_phase

from adafuse_plugin.demo import DemoSettings, Variant, prepare_data
from adafuse_plugin.synthetic_videos import FAMILIES, PHASES

PRETRAINED = (Variant("TSN", "tsn", "keep"), Variant("TSM", "tsm", "keep"))


def adapted(lambdas: list[float]) -> list[Variant]:
    """The models that start from TSN's or TSM's weights."""
    variants = [Variant("TSN adapted", "tsn", "keep", init_from="TSN")]
    for weight in lambdas:
        variants.append(
            Variant(f"AdaFuse λ={weight:g}", "tsn", "adafuse", {"flops_weight": weight}, "TSN")
        )
    first = {"flops_weight": lambdas[0]}
    variants += [
        Variant(f"Ada. Skip λ={lambdas[0]:g}", "tsn", "keep_skip", first, "TSN"),
        Variant("AdaFuse-TSM", "tsm", "adafuse", first, "TSM"),
        Variant("AdaFuse-TSM+Last", "tsm", "adafuse", {**first, "stages": (-1,)}, "TSM"),
    ]
    return variants


def summarise(results: list[dict]) -> list[dict]:
    """Per model, in run order: mean and std over seeds."""
    by_name: dict[str, list[dict]] = {}
    for r in results:
        by_name.setdefault(r["model"], []).append(r)
    dense = statistics.mean(r["dense_gflops"] for r in by_name["TSN"])
    rows = []
    for name, runs in by_name.items():

        def stats(key: str, scale: float = 1.0, runs: list[dict] = runs) -> tuple[float, float]:
            values = [scale * r[key] for r in runs if r.get(key) is not None]
            return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0

        top1, top1_std = stats("top1", 100)
        pair, pair_std = stats("within_pair", 100)
        gflops, gflops_std = stats("adaptive_gflops")
        mix = {a: statistics.mean(r["mix"][a] for r in runs) for a in ACTIONS}
        rows.append(
            dict(
                model=name,
                top1=top1,
                top1_std=top1_std,
                within_pair=pair,
                within_pair_std=pair_std,
                gflops=gflops,
                gflops_std=gflops_std,
                flops_share=gflops / dense,
                mix=mix,
                seeds=len(runs),
            )
        )
    return rows


def markdown(rows: list[dict]) -> str:
    lines = [
        "| model | top-1 % | within-pair % | GFLOPs / clip | % of TSN FLOPs | "
        "keep / reuse / skip % | seeds |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        mix = " / ".join(f"{100 * r['mix'][a]:.0f}" for a in ACTIONS)
        lines.append(
            f"| {r['model']} | {r['top1']:.1f} ± {r['top1_std']:.1f} | "
            f"{r['within_pair']:.1f} ± {r['within_pair_std']:.1f} | {r['gflops']:.3f} | "
            f"{100 * r['flops_share']:.0f} | {mix} | {r['seeds']} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--workers", type=int, default=2, help="parallel runs, one core each")
    parser.add_argument("--size", default="small", help="dataset size (tiny/small/medium/large)")
    parser.add_argument("--phase", choices=PHASES, default="random")
    parser.add_argument("--family", choices=sorted(FAMILIES), default="motion")
    parser.add_argument("--data", default=None, metavar="DIR", help="your own video-list folder")
    parser.add_argument("--epochs", type=int, default=20, help="pretraining epochs")
    parser.add_argument("--adapt-epochs", type=int, default=10)
    parser.add_argument("--adapt-lr", type=float, default=5e-4)
    parser.add_argument("--lambdas", type=float, nargs="+", default=[0.05, 0.1, 0.2])
    parser.add_argument("--out", type=Path, default=Path("recipe_output"))
    args = parser.parse_args()
    settings = DemoSettings(
        size=args.size,
        epochs=args.epochs,
        adapt_epochs=args.adapt_epochs,
        adapt_lr=args.adapt_lr,
        num_workers=0,
        threads=1,
        quiet=True,
        phase=args.phase,
        family=args.family,
        data=args.data,
    )
    data_root = prepare_data(args.out, settings)

    def phase(variants, trained=()):
        return run_phase(variants, args.seeds, settings, data_root, args.out, args.workers, trained)

    results = phase(PRETRAINED)
    results += phase(adapted(args.lambdas), results)
    first = f"AdaFuse λ={args.lambdas[0]:g}"

    def matched(seed: int) -> list[Variant]:
        adafuse = next(r for r in results if r["model"] == first and r["seed"] == seed)
        return [dataclasses.replace(v, init_from="TSN") for v in matched_baselines(adafuse)]

    results += phase(matched, results)
    rows = summarise(results)
    table = markdown(rows)
    print(f"\nsettings: {dataclasses.asdict(settings)}\n\n{table}")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "recipe.md").write_text(table + "\n")
    report = {"settings": dataclasses.asdict(settings), "summary": rows, "results": results}
    (args.out / "recipe.json").write_text(json.dumps(report, indent=2) + "\n")
    title = "Pretrain, then adapt (ResNet-18, generated videos)"
    sweep = [r["model"] for r in rows if r["model"].startswith("AdaFuse λ")]
    path = plot(rows, args.out / "recipe.png", title, sweep)
    print(f"written: {path}, recipe.md, recipe.json")


if __name__ == "__main__":
    main()
