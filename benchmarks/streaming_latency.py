"""Per-frame latency of dense vs streaming (channel-sparse) AdaFuse inference on CPU.

For each backbone, every variant is timed frame by frame in one interleaved loop (the
order rotates every frame), so load from other processes on a shared machine hits all
variants alike; reported numbers are medians over the timed frames after warm-up.

Variants:
- ``dense eager``: the unpatched timm model, eval mode, as shipped (BatchNorm unfolded,
  plain weights that oneDNN re-packs on every call).
- ``dense engine``: `StreamingRunner` on the model patched with policy ``keep``: every
  channel executed, with the runner's folded, prepacked convs.
- ``dense compiled`` (``--compile``): ``torch.compile`` (inductor, weights frozen) of the
  unpatched model: the strongest dense baseline we found. Speedups are measured against
  the fastest dense variant.
- streaming runners with synthetic policies executing a given share of the channels:
  a real `PolicyNet` runs every frame (its cost is paid), but its decisions come from a
  schedule: ``static`` (one random decision vector, repeated: a policy that settled on
  a channel set) or ``dynamic`` (fresh random decisions every frame: the worst case).
  A quarter of the executed channels are reused, the rest kept.
- ``--work-dirs``: policies trained on the generated dataset (mmaction2 work folders of
  ``adafuse demo`` or ``benchmarks/ablation.py``, TSN-style ResNets), streamed on generated
  videos rendered at ``--size`` (8 frames per clip, the runners reset between clips),
  against the same backbone unpatched (eager) and patched with policy ``keep`` (engine).

Ideal speedup = dense FLOPs / Eq. 5 FLOPs (the runner's counters, policy included);
"executed" adds what dense fallbacks computed and discarded.
Run ``python benchmarks/streaming_latency.py --help`` for options.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

import adafuse_plugin as af
from adafuse_plugin.gate import KEEP, REUSE, SKIP, PolicyNet
from adafuse_plugin.streaming import StreamingRunner


class ScheduledPolicy(PolicyNet):
    """A policy network that returns the decisions of a fixed schedule (one row per call,
    cycling) after paying the cost of what the runner executes for a real `PolicyNet`:
    cat, fc1 with BatchNorm folded in, ReLU, fc2."""

    def __init__(self, net: PolicyNet, schedule: torch.Tensor) -> None:
        super().__init__(net.in_channels, net.groups, net.fc1.out_features)
        self.load_state_dict(net.state_dict())
        self.register_buffer("table", F.one_hot(schedule, 3).float() * 10.0)
        self.calls = 0

    def forward(self, pooled_prev: torch.Tensor, pooled: torch.Tensor) -> torch.Tensor:
        hidden = F.linear(torch.cat([pooled_prev, pooled], dim=1), self.fc1.weight, self.fc1.bias)
        F.linear(hidden.relu_(), self.fc2.weight, self.fc2.bias)
        row = self.table[self.calls % len(self.table)]
        self.calls += 1
        return row.unsqueeze(0).expand(pooled.shape[0], -1, -1)


def synthetic_schedule(
    groups: int, executed: float, dynamic: bool, generator: torch.Generator
) -> torch.Tensor:
    """(P, groups) actions executing ``executed`` of the groups in expectation, a quarter
    of them reused; P = 1 for a static schedule, 101 rows for a dynamic one."""
    rows = 101 if dynamic else 1
    table = torch.full((rows, groups), SKIP, dtype=torch.long)
    for row in table:
        count = executed * groups
        count = int(count) + int(torch.rand((), generator=generator) < count - int(count))
        chosen = torch.randperm(groups, generator=generator)[:count]
        reused = round(0.25 * count)
        row[chosen[:reused]] = REUSE
        row[chosen[reused:]] = KEEP
    return table


def install_schedules(
    model: torch.nn.Module, nets: dict[str, PolicyNet], executed: float, dynamic: bool, seed: int
) -> None:
    """Give every gate a `ScheduledPolicy` built on its original policy network."""
    generator = torch.Generator().manual_seed(seed)
    for name, gate in af.iter_gates(model):
        schedule = synthetic_schedule(nets[name].groups, executed, dynamic, generator)
        gate.policy_net = ScheduledPolicy(nets[name], schedule).eval()


#: ``--paths``: which of the runner's selection paths are on (the leads, one at a time).
PATHS: dict[str, dict[str, object]] = {
    "oneDNN": {"gemm": False, "bucket_channels": 1, "direct": False},
    "+bucket": {"gemm": False, "bucket_channels": 16, "direct": False},
    "+gemm": {"gemm": True, "bucket_channels": 1, "direct": False},
    "+direct": {"gemm": False, "bucket_channels": 1, "direct": True, "planar": False},
    "all-planar": {"gemm": True, "bucket_channels": 16, "direct": True, "planar": False},
    "all": {"gemm": True, "bucket_channels": 16, "direct": True},
}


@dataclasses.dataclass
class Variant:
    label: str
    run: Callable[[torch.Tensor], object]
    runner: StreamingRunner | None = None
    times: list[float] = dataclasses.field(default_factory=list)

    flops: list[float] = dataclasses.field(default_factory=lambda: [0.0, 0.0, 0.0])

    def reset(self) -> None:
        """Start a new clip, keeping the FLOPs counts of the previous ones."""
        if self.runner is not None:
            self.flops = self.counts()
            self.runner.reset()

    def counts(self) -> list[float]:
        """Eq. 5, executed and dense FLOPs streamed so far (all clips)."""
        counters = self.runner.executed_flops
        eq5, total, dense = self.flops
        return [eq5 + counters.eq5, total + counters.total, dense + counters.dense]


def build_variants(args: argparse.Namespace, name: str) -> list[Variant]:
    import timm

    torch.manual_seed(0)
    base = timm.create_model(name, num_classes=args.classes).eval()
    variants = [Variant("dense eager", base)]
    if args.compile:
        from torch._inductor import config as inductor_config

        inductor_config.freezing = True
        variants.append(Variant("dense compiled", torch.compile(copy.deepcopy(base))))
    dense = af.patch_model(copy.deepcopy(base), num_segments=1, policy="keep").eval()
    engine = StreamingRunner(dense)
    variants.append(Variant("dense engine", engine.step, engine))
    for granularity in args.granularity:
        patched = af.patch_model(copy.deepcopy(base), num_segments=1, granularity=granularity)
        patched.eval()
        nets = {name: gate.policy_net for name, gate in af.iter_gates(patched)}
        for executed in args.executed:
            for schedule in args.schedules:
                dynamic = schedule == "dynamic"
                install_schedules(patched, nets, executed, dynamic, seed=granularity)
                label = f"{schedule} {executed:.0%} g={granularity}"
                variants += runner_variants(patched, label, args)
    return variants


def runner_variants(model: torch.nn.Module, label: str, args: argparse.Namespace) -> list[Variant]:
    """One streaming runner of ``model`` per ``--dense-fallback`` and ``--paths`` value,
    labelled with the values that vary."""
    variants = []
    for fallback in args.dense_fallback:
        for paths in args.paths:
            runner = StreamingRunner(
                model, cache_size=args.cache_size, dense_fallback=fallback, **PATHS[paths]
            )
            name = label + (f" {fallback}" if len(args.dense_fallback) > 1 else "")
            name += f" [{paths}]" if len(args.paths) > 1 else ""
            variants.append(Variant(name, runner.step, runner))
    return variants


def build_trained_variants(
    args: argparse.Namespace, work_dir: Path
) -> tuple[list[Variant], torch.Tensor, torch.Tensor]:
    """Variants of a trained model, and its data preprocessor's mean and std."""
    from adafuse_plugin.mmaction.streaming import FrameClassifier, load_work_dir

    recognizer, _ = load_work_dir(work_dir, allow_unsafe=args.allow_unsafe_checkpoints)
    trained = FrameClassifier(recognizer).eval()
    base = af.unpatch_model(copy.deepcopy(trained)).eval()
    dense = af.patch_model(copy.deepcopy(base), num_segments=1, policy="keep").eval()
    engine = StreamingRunner(dense)
    variants = [Variant("dense eager", base), Variant("dense engine", engine.step, engine)]
    config = af.get_config(trained)
    label = f"trained {config.policy} g={config.granularity} ({work_dir.name})"
    variants += runner_variants(trained, label, args)
    preprocessor = recognizer.data_preprocessor
    return variants, preprocessor.mean.view(3, 1, 1), preprocessor.std.view(3, 1, 1)


def generated_clips(
    size: int, count: int, mean: torch.Tensor, std: torch.Tensor, frames: int = 8
) -> torch.Tensor:
    """(count, frames, 3, size, size) clips of the generated dataset's classes in turn,
    every other frame of 16, normalised by ``mean`` and ``std`` (0-255 scale)."""
    from adafuse_plugin.demo.videos import CLASSES, render_clip, sample_spec

    rng = np.random.default_rng(0)
    clips = []
    for index in range(count):
        spec = sample_spec(index % len(CLASSES), rng, num_frames=2 * frames, frame_size=size)
        video = torch.from_numpy(render_clip(spec)[::2]).permute(0, 3, 1, 2).float()
        clips.append((video - mean) / std)
    return torch.stack(clips)


def decision_mix(runner: StreamingRunner, clips: torch.Tensor) -> str:
    """keep / reuse / skip shares of a runner's decisions over some clips."""
    counts = np.zeros(3)
    for clip in clips:
        runner.reset()
        for frame in clip:
            runner.step(frame)
            for block in runner._blocks.values():
                counts += np.bincount(block.state.actions, minlength=3)[:3]
    runner.reset()
    return "/".join(f"{c / counts.sum():.0%}" for c in counts)


def measure(
    variants: list[Variant],
    args: argparse.Namespace,
    desc: str,
    clips: torch.Tensor | None = None,
) -> None:
    """Time every variant frame by frame, interleaved. Without ``clips``, random frames
    stream on and on; with them, every variant resets at the start of each clip."""
    frames = torch.randn(16, 3, args.size, args.size) if clips is None else clips.flatten(0, 1)
    total = args.warmup + args.frames
    with torch.inference_mode():
        for index in tqdm(range(total), desc=desc):
            frame = frames[index % len(frames)]
            if clips is not None and index % clips.shape[1] == 0:
                for variant in variants:
                    variant.reset()
            shift = index % len(variants)
            for variant in variants[shift:] + variants[:shift]:
                start = time.perf_counter()
                variant.run(frame.unsqueeze(0) if variant.runner is None else frame)
                elapsed = time.perf_counter() - start
                if index >= args.warmup:
                    variant.times.append(elapsed)


def mode_shares(runner: StreamingRunner) -> str:
    """Share of first/second conv runs per execution mode, warm-up included."""
    counts = runner.execution_modes()
    total = sum(counts.values()) or 1
    modes = ("packed", "per-group", "pack-now", "gemm", "direct", "dense")
    return " / ".join(f"{counts.get(mode, 0) / total:.0%}" for mode in modes)


def report(variants: list[Variant], name: str) -> str:
    eager = variants[0]
    medians = {v.label: statistics.median(v.times) * 1e3 for v in variants}
    dense_ms = min(medians[v.label] for v in variants if v.label.startswith("dense"))
    lines = [
        f"### {name}, {len(eager.times)} timed frames, torch threads {torch.get_num_threads()}",
        "",
        "| variant | Eq. 5 FLOPs | executed FLOPs | ideal speedup | median ms/frame "
        "| measured speedup | measured / ideal | vs dense eager | conv runs: packed / "
        "per-group / pack-now / gemm / direct / dense |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for variant in variants:
        ms = medians[variant.label]
        eq5 = executed = 1.0
        modes = ""
        if variant.runner is not None:
            eq5, total, dense = variant.counts()
            eq5, executed = eq5 / dense, total / dense
            modes = mode_shares(variant.runner)
        speedup = dense_ms / ms
        lines.append(
            f"| {variant.label} | {eq5:.1%} | {executed:.1%} | {1 / eq5:.2f}x | {ms:.1f} "
            f"| {speedup:.2f}x | {speedup * eq5:.2f} | {medians[eager.label] / ms:.2f}x "
            f"| {modes} |"
        )
    return "\n".join(lines)


def leads_table(variants: list[Variant], name: str) -> str:
    """The synthetic variants side by side per ``--paths`` setting: speedup against the
    fastest dense variant, executed FLOPs in brackets (the lead-by-lead table)."""
    medians = {v.label: statistics.median(v.times) for v in variants}
    dense = min(t for label, t in medians.items() if label.startswith("dense"))
    rows: dict[str, dict[str, str]] = {}
    ideal: dict[str, str] = {}
    for variant in variants:
        if variant.runner is None or " [" not in variant.label:
            continue
        config, paths = variant.label[:-1].split(" [")
        eq5, total, flops = variant.counts()
        speedup = dense / medians[variant.label]
        rows.setdefault(config, {})[paths] = f"{speedup:.2f}x ({total / flops:.1%})"
        ideal[config] = f"{eq5 / flops:.1%} | {flops / eq5:.2f}x"
    paths = list(next(iter(rows.values())))
    lines = [
        "| model | selections | Eq. 5 FLOPs | ideal | "
        + " | ".join(f"{p}: speedup (exec. FLOPs)" for p in paths)
        + " |",
        "|---|---|---|---|" + "---|" * len(paths),
    ]
    for config, by in rows.items():
        lines.append(f"| {name} | {config} | {ideal[config]} | " + " | ".join(by.values()) + " |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="*", default=["resnet18", "resnet50"])
    parser.add_argument("--size", type=int, default=224, help="frame height and width")
    parser.add_argument(
        "--executed",
        nargs="+",
        type=float,
        default=[0.4, 0.6],
        help="share of channel groups the synthetic policies execute",
    )
    parser.add_argument("--granularity", nargs="+", type=int, default=[1, 32, 64])
    parser.add_argument(
        "--schedules", nargs="+", choices=("static", "dynamic"), default=["static", "dynamic"]
    )
    parser.add_argument("--frames", type=int, default=60, help="timed frames per variant")
    parser.add_argument(
        "--warmup",
        type=int,
        default=30,
        help="untimed frames first (the runner times its execution modes during the first frames)",
    )
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument(
        "--dense-fallback",
        nargs="+",
        default=["timed"],
        choices=("timed", "never", "always"),
        help="StreamingRunner dense_fallback (one variant each)",
    )
    parser.add_argument(
        "--paths",
        nargs="+",
        default=["all"],
        choices=tuple(PATHS),
        help="selection paths on (one variant each): oneDNN only, + rounded-up channel "
        "counts, + matrix products, + the compiled direct conv, all but the planar "
        "kernel for few output channels, all",
    )
    parser.add_argument(
        "--cache-size",
        type=int,
        default=8,
        help="StreamingRunner cache_size (packed selections per conv)",
    )
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument(
        "--work-dirs",
        nargs="*",
        type=Path,
        default=[],
        help="mmaction2 work folders of trained TSN-style AdaFuse models to "
        "time on generated videos (with no --models: only these)",
    )
    parser.add_argument(
        "--allow-unsafe-checkpoints",
        action="store_true",
        help="unpickle the checkpoints fully (trusted files only)",
    )
    parser.add_argument(
        "--compile", action="store_true", help="add torch.compile'd dense models (slow to build)"
    )
    parser.add_argument(
        "--quick", action="store_true", help="fast check: ResNet-18, 112x112, 40%%, g=32, 10 frames"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.models, args.size, args.executed = ["resnet18"], 112, [0.4]
        args.granularity, args.frames, args.warmup = [32], 10, 3
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    for name in args.models:
        variants = build_variants(args, name)
        measure(variants, args, desc=name)
        print(report(variants, f"{name} at {args.size}x{args.size}, batch 1") + "\n", flush=True)
        if len(args.paths) > 1:
            print(leads_table(variants, name) + "\n", flush=True)
    for work_dir in args.work_dirs:
        variants, mean, std = build_trained_variants(args, work_dir)
        clips = generated_clips(args.size, -(-(args.warmup + args.frames) // 8), mean, std)
        measure(variants, args, desc=work_dir.name, clips=clips)
        title = f"{work_dir.name} (trained) on generated {args.size}x{args.size} videos, batch 1"
        mixes = [
            f"- {v.label}: keep/reuse/skip {decision_mix(v.runner, clips)}" for v in variants[2:]
        ]
        print(report(variants, title) + "\n\n" + "\n".join(mixes) + "\n", flush=True)


if __name__ == "__main__":
    main()
