"""PNG plots of an ``adafuse demo`` report (matplotlib, Agg canvas: no display needed).

Each function takes the demo's result dicts (``report.json``'s ``results``): ``model``,
``top1``, ``dense_gflops``, ``adaptive_gflops``, ``params``, ``mix`` ({keep, reuse, skip}),
``blocks`` ({block: {keep, reuse, skip}}) and ``policy``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

ACTIONS = ("keep", "reuse", "skip")
COLORS = {"keep": "#4C72B0", "reuse": "#55A868", "skip": "#C44E52"}


def new_figure(width: float, height: float) -> Any:
    """A matplotlib Figure on an Agg canvas (no display, no pyplot global state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=110)
    FigureCanvasAgg(figure)
    return figure


def plot_accuracy_vs_flops(results: list[dict], path: str | Path) -> Path:
    """Top-1 vs adaptive GFLOPs per clip; marker area proportional to parameters. A dashed
    arrow goes from each model's dense GFLOPs to its adaptive GFLOPs."""
    figure = new_figure(6.4, 4.6)
    ax = figure.add_subplot()
    largest = max(r["params"] for r in results)
    for index, r in enumerate(results):
        color = f"C{index}"
        x, y = r["adaptive_gflops"], 100 * r["top1"]
        if r["dense_gflops"] != r["adaptive_gflops"]:
            arrow = dict(arrowstyle="->", color=color, ls="--", alpha=0.6)
            ax.annotate("", xy=(x, y), xytext=(r["dense_gflops"], y), arrowprops=arrow)
            ax.scatter([r["dense_gflops"]], [y], s=20, color=color, alpha=0.4, marker="|")
        size = 120 + 900 * r["params"] / largest
        label = f"{r['model']} ({r['params'] / 1e6:.2f} M params)"
        ax.scatter([x], [y], s=size, color=color, alpha=0.75, edgecolors="black", label=label)
    ax.set_xlabel("GFLOPs per clip (adaptive; dashed arrow from dense)")
    ax.set_ylabel("test top-1 (%)")
    ax.set_title("Accuracy vs computation (marker size = parameters)")
    ax.grid(alpha=0.3)
    ax.margins(x=0.15, y=0.2)
    ax.legend(fontsize=8, loc="best", markerscale=0.4)
    figure.tight_layout()
    figure.savefig(path)
    return Path(path)


def _stacked_bars(ax, labels: list[str], shares: list[dict], rotate: bool = False) -> None:
    bottom = [0.0] * len(labels)
    for action in ACTIONS:
        values = [100 * share.get(action, 0.0) for share in shares]
        ax.bar(labels, values, bottom=bottom, color=COLORS[action], label=action, width=0.7)
        bottom = [b + v for b, v in zip(bottom, values)]
    ax.set_ylim(0, 100)
    ax.set_ylabel("share of channel decisions (%)")
    if rotate:
        ax.tick_params(axis="x", labelrotation=60, labelsize=7)


def plot_policy_mix(results: list[dict], path: str | Path) -> Path:
    """Dataset-level keep / reuse / skip shares, one stacked bar per model."""
    figure = new_figure(7.0, 4.4)
    ax = figure.add_subplot()
    _stacked_bars(ax, [r["model"] for r in results], [r["mix"] for r in results])
    for index, r in enumerate(results):
        note = f"saves {r['saving']:.0%} FLOPs" if r["saving"] > 0 else "dense"
        ax.text(index, 101, note, ha="center", va="bottom", fontsize=8)
    ax.set_ylim(0, 110)
    ax.set_title("Policy mix on the test split")
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8)
    figure.tight_layout()
    figure.savefig(path)
    return Path(path)


def plot_block_policies(results: list[dict], path: str | Path) -> Path:
    """Per-block keep / reuse / skip shares of the adaptive models, one panel per model."""
    adaptive = [r for r in results if r.get("policy") != "keep" and r.get("blocks")]
    adaptive = adaptive or results[:1]
    figure = new_figure(7.8, 3.4 * len(adaptive))
    for index, r in enumerate(adaptive):
        ax = figure.add_subplot(len(adaptive), 1, index + 1)
        names = list(r["blocks"])
        _stacked_bars(ax, names, [r["blocks"][n] for n in names], rotate=True)
        ax.set_title(f"{r['model']}: per-block policy on the test split", fontsize=10)
        ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=7)
    figure.tight_layout()
    figure.savefig(path)
    return Path(path)


def write_plots(results: list[dict], output_dir: str | Path) -> list[Path]:
    """All three plots into ``output_dir``; returns their paths."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    return [
        plot_accuracy_vs_flops(results, output_dir / "accuracy_vs_gflops.png"),
        plot_policy_mix(results, output_dir / "policy_mix.png"),
        plot_block_policies(results, output_dir / "block_policies.png"),
    ]
