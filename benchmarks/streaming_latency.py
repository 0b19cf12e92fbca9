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


@dataclasses.dataclass
class Variant:
    label: str
    run: Callable[[torch.Tensor], object]
    runner: StreamingRunner | None = None
    times: list[float] = dataclasses.field(default_factory=list)


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
                runner = StreamingRunner(patched, cache_size=args.cache_size)
                label = f"{schedule} {executed:.0%} g={granularity}"
                variants.append(Variant(label, runner.step, runner))
    return variants


def measure(variants: list[Variant], args: argparse.Namespace, desc: str) -> None:
    frames = torch.randn(16, 3, args.size, args.size)
    total = args.warmup + args.frames
    with torch.inference_mode():
        for index in tqdm(range(total), desc=desc):
            frame = frames[index % len(frames)]
            shift = index % len(variants)
            for variant in variants[shift:] + variants[:shift]:
                start = time.perf_counter()
                variant.run(frame.unsqueeze(0) if variant.runner is None else frame)
                elapsed = time.perf_counter() - start
                if index >= args.warmup:
                    variant.times.append(elapsed)


def report(variants: list[Variant], name: str) -> str:
    eager = variants[0]
    medians = {v.label: statistics.median(v.times) * 1e3 for v in variants}
    dense_ms = min(medians[v.label] for v in variants if v.label.startswith("dense"))
    lines = [
        f"### {name}, {len(eager.times)} timed frames, torch threads {torch.get_num_threads()}",
        "",
        "| variant | Eq. 5 FLOPs | executed FLOPs | ideal speedup | median ms/frame "
        "| measured speedup | measured / ideal | vs dense eager |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for variant in variants:
        ms = medians[variant.label]
        eq5 = executed = 1.0
        if variant.runner is not None:
            counters = variant.runner.executed_flops
            eq5, executed = counters.eq5 / counters.dense, counters.total / counters.dense
        speedup = dense_ms / ms
        lines.append(
            f"| {variant.label} | {eq5:.1%} | {executed:.1%} | {1 / eq5:.2f}x | {ms:.1f} "
            f"| {speedup:.2f}x | {speedup * eq5:.2f} | {medians[eager.label] / ms:.2f}x |"
        )
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["resnet18", "resnet50"])
    parser.add_argument("--size", type=int, default=224, help="frame height and width")
    parser.add_argument("--executed", nargs="+", type=float, default=[0.4, 0.6],
                        help="share of channel groups the synthetic policies execute")  # fmt: skip
    parser.add_argument("--granularity", nargs="+", type=int, default=[1, 32, 64])
    parser.add_argument("--schedules", nargs="+", choices=("static", "dynamic"),
                        default=["static", "dynamic"])  # fmt: skip
    parser.add_argument("--frames", type=int, default=60, help="timed frames per variant")
    parser.add_argument("--warmup", type=int, default=8, help="untimed frames first")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument("--cache-size", type=int, default=8,
                        help="StreamingRunner cache_size (packed selections per conv)")  # fmt: skip
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--compile", action="store_true",
                        help="add torch.compile'd dense models (slow to build)")  # fmt: skip
    parser.add_argument("--quick", action="store_true",
                        help="fast check: ResNet-18, 112x112, 40%%, g=32, 10 frames")  # fmt: skip
    args = parser.parse_args(argv)
    if args.quick:
        args.models, args.size, args.executed = ["resnet18"], 112, [0.4]
        args.granularity, args.frames, args.warmup = [32], 10, 3
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    tables = []
    for name in args.models:
        variants = build_variants(args, name)
        measure(variants, args, desc=name)
        tables.append(report(variants, f"{name} at {args.size}x{args.size}, batch 1"))
        print(tables[-1] + "\n", flush=True)


if __name__ == "__main__":
    main()
