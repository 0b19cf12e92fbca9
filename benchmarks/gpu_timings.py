"""GPU timings of AdaFuse models: streaming per frame, batched clips, and training steps.

Three tables, each variant timed with CUDA events in one interleaved loop (the order
rotates every iteration) and reported as the median after warm-up:

1. **Streaming, batch 1** (ResNet-18 / ResNet-50, 224x224): one frame per call, as a
   camera delivers them. ``dense eager`` is the unpatched model; ``dense engine`` the
   `StreamingRunner` with policy ``keep`` (folded BatchNorm, every channel); the others
   stream synthetic per-channel policies (``benchmarks/streaming_latency.py``'s
   schedules: ``static`` settles on one channel set, ``dynamic`` draws a fresh one every
   frame) executing 40 % or 60 % of the channels. The runner reads each frame's decisions
   on the host to pick channels, so every block costs a device-to-host sync.
2. **Batched clips, eval** (8 clips x 8 frames): the unpatched model against the patched
   one (learned policy with spread decisions; every conv dense, the fusion masks applied),
   float32 and bfloat16 autocast.
3. **Training step** (ResNet-50, 8 clips x 8 frames, 224x224, SGD): plain TSN against
   AdaFuse-TSN (cross-entropy + the FLOPs loss), float32 and bfloat16 autocast; peak
   memory too.

Needs a CUDA device; without one it says so and exits 0 (CI never has a GPU). Writes
``--output`` (markdown) and prints it. ``python benchmarks/gpu_timings.py --help``.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import adafuse_plugin as af
from adafuse_plugin.streaming import StreamingRunner

sys.path.insert(0, str(Path(__file__).resolve().parent))
from streaming_latency import install_schedules  # noqa: E402 - a sibling benchmark script


def _elapsed_ms(call: Callable[[], object], device: torch.device) -> float:
    """Milliseconds of one call: CUDA events on a GPU, the wall clock elsewhere."""
    if device.type != "cuda":
        start = time.perf_counter()
        call()
        return 1e3 * (time.perf_counter() - start)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    call()
    end.record()
    end.synchronize()
    return start.elapsed_time(end)


def time_interleaved(
    variants: dict[str, Callable[[], object]], iterations: int, warmup: int, device: torch.device
) -> dict[str, float]:
    """Median milliseconds per call of each variant, the order rotating every iteration."""
    times: dict[str, list[float]] = {name: [] for name in variants}
    names = list(variants)
    for iteration in range(warmup + iterations):
        shift = iteration % len(names)
        for name in names[shift:] + names[:shift]:
            elapsed = _elapsed_ms(variants[name], device)
            if iteration >= warmup:
                times[name].append(elapsed)
    return {name: statistics.median(values) for name, values in times.items()}


def spread_policies(model: nn.Module) -> nn.Module:
    """Random policy outputs so that a fresh patched model takes all three actions."""
    for _, gate in af.iter_gates(model):
        nn.init.normal_(gate.policy_net.fc2.weight, 0.0, 0.5)
    return model


def streaming_table(args: argparse.Namespace, device: torch.device) -> list[str]:
    import timm

    rows = [
        "| model | variant | ms / frame | vs dense eager | Eq. 5 share |",
        "|---|---|---|---|---|",
    ]
    frame = torch.randn(1, 3, args.size, args.size, device=device)
    for name in args.models:
        torch.manual_seed(0)
        base = timm.create_model(name, num_classes=174).eval()
        variants: dict[str, Callable[[], object]] = {}
        runners: dict[str, StreamingRunner] = {}
        dense_gpu = copy.deepcopy(base).to(device)
        variants["dense eager"] = lambda m=dense_gpu: m(frame)
        keep = af.patch_model(copy.deepcopy(base), num_segments=1, policy="keep").eval()
        runners["dense engine"] = StreamingRunner(keep.to(device))
        patched = af.patch_model(copy.deepcopy(base), num_segments=1).eval()
        nets = {block: gate.policy_net for block, gate in af.iter_gates(patched)}
        for executed in (0.4, 0.6):
            for schedule in ("static", "dynamic"):
                install_schedules(patched, nets, executed, schedule == "dynamic", seed=1)
                runner = StreamingRunner(copy.deepcopy(patched).to(device))
                runners[f"{schedule} {executed:.0%} per channel"] = runner
        with torch.inference_mode():
            for label, runner in runners.items():
                variants[label] = lambda r=runner: r.step(frame)
            times = time_interleaved(variants, args.iterations, args.warmup, device)
        for label, ms in times.items():
            runner = runners.get(label)
            share = "1.00"
            if runner is not None:
                share = f"{runner.executed_flops.eq5 / runner.executed_flops.dense:.2f}"
            speedup = times["dense eager"] / ms
            rows.append(f"| {name} | {label} | {ms:.2f} | {speedup:.2f}x | {share} |")
    return rows


def _autocast(dtype: str, device: torch.device) -> contextlib.AbstractContextManager[object]:
    if dtype == "float32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


def batched_table(args: argparse.Namespace, device: torch.device) -> list[str]:
    import timm

    frames = args.clips * args.segments
    rows = [
        "| model | precision | variant | plain ms / batch | variant ms / batch | overhead |",
        "|---|---|---|---|---|---|",
    ]
    x = torch.randn(frames, 3, args.size, args.size, device=device)
    for name in args.models:
        torch.manual_seed(0)
        plain = timm.create_model(name, num_classes=174).to(device).eval()
        patched = af.patch_model(copy.deepcopy(plain), num_segments=args.segments)
        patched = spread_policies(patched).eval()
        variants = {"plain": plain, "adafuse": patched}
        if args.compile:
            variants["adafuse compiled"] = torch.compile(patched)
        for precision in args.precisions:
            with torch.inference_mode(), _autocast(precision, device):
                times = time_interleaved(
                    {key: lambda m=model: m(x) for key, model in variants.items()},
                    args.iterations,
                    args.warmup,
                    device,
                )
            for key in [k for k in times if k != "plain"]:
                overhead = times[key] / times["plain"] - 1
                rows.append(
                    f"| {name} | {precision} | {key} | {times['plain']:.2f} | {times[key]:.2f} "
                    f"| {overhead:+.1%} |"
                )
    return rows


def training_table(args: argparse.Namespace, device: torch.device) -> list[str]:
    import timm

    frames = args.clips * args.segments
    rows = [
        "| model | precision | variant | plain ms / step | variant ms / step | overhead | "
        "peak GiB plain / variant |",
        "|---|---|---|---|---|---|---|",
    ]
    x = torch.randn(frames, 3, args.size, args.size, device=device)
    labels = torch.randint(0, 174, (args.clips,), device=device)
    torch.manual_seed(0)
    plain = timm.create_model("resnet50", num_classes=174).to(device).train()
    patched = spread_policies(
        af.patch_model(copy.deepcopy(plain), num_segments=args.segments)
    ).train()
    flops_loss = af.AdaFuseFlopsLoss(
        patched, input_shape=(args.segments, 3, args.size, args.size), weight=0.1
    )
    optimizers = {
        "plain": torch.optim.SGD(plain.parameters(), lr=1e-3, momentum=0.9),
        "adafuse": torch.optim.SGD(patched.parameters(), lr=1e-3, momentum=0.9),
    }

    models = {"plain": plain, "adafuse": patched}
    if args.compile:
        models["adafuse compiled"] = torch.compile(patched)
        optimizers["adafuse compiled"] = optimizers["adafuse"]

    def step(key: str, precision: str) -> None:
        with _autocast(precision, device):
            logits = af.consensus(models[key](x), args.segments)
            loss = F.cross_entropy(logits.float(), labels)
            if key != "plain":
                loss = loss + flops_loss()
        optimizers[key].zero_grad(set_to_none=True)
        loss.backward()
        optimizers[key].step()

    for precision in args.precisions:
        peaks: dict[str, str] = {}
        for key in models:
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            step(key, precision)
            if device.type == "cuda":
                peaks[key] = f"{torch.cuda.max_memory_allocated(device) / 2**30:.1f}"
        times = time_interleaved(
            {key: lambda k=key, p=precision: step(k, p) for key in models},
            args.train_iterations,
            args.warmup,
            device,
        )
        for key in [k for k in times if k != "plain"]:
            overhead = times[key] / times["plain"] - 1
            rows.append(
                f"| resnet50 | {precision} | {key} | {times['plain']:.1f} | {times[key]:.1f} | "
                f"{overhead:+.1%} | {peaks.get('plain', '-')} / {peaks.get(key, '-')} |"
            )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["resnet18", "resnet50"])
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--segments", type=int, default=8)
    parser.add_argument("--clips", type=int, default=8)
    parser.add_argument("--precisions", nargs="+", default=["float32", "bfloat16"])
    parser.add_argument("--iterations", type=int, default=100)
    parser.add_argument("--train-iterations", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--output", type=Path, default=Path("gpu_timings.md"))
    parser.add_argument(
        "--compile", action="store_true", help="add torch.compile'd AdaFuse variants (2 and 3)"
    )
    parser.add_argument("--skip-streaming", action="store_true", help="leave out table 1")
    parser.add_argument(
        "--device", default="cuda", help="'cpu' runs the same code as a smoke test (tests)"
    )
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: nothing to time (run this on a GPU machine)")
        return 0
    torch.backends.cudnn.benchmark = True
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    lines = [
        f"Device: {name}, torch {torch.__version__}, cuDNN {torch.backends.cudnn.version()}; "
        f"medians of {args.iterations} calls ({args.train_iterations} training steps) after "
        f"{args.warmup} warm-up, variants interleaved (CUDA events on a GPU).",
        "",
        *([] if args.skip_streaming else ["### Streaming, batch 1, one frame per call", ""]),
        *([] if args.skip_streaming else [*streaming_table(args, device), ""]),
        f"### Batched clips, eval ({args.clips} clips x {args.segments} frames, "
        f"{args.size}x{args.size})",
        "",
        *batched_table(args, device),
        "",
        f"### Training step ({args.clips} clips x {args.segments} frames, "
        f"{args.size}x{args.size}, SGD, AdaFuse with the FLOPs loss)",
        "",
        *training_table(args, device),
    ]
    text = "\n".join(lines)
    print(text)
    args.output.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
