"""Dense vs adaptive GFLOPs of timm backbones under fixed AdaFuse policies (Eq. 5).

Prints one row per (model, policy): fvcore dense GFLOPs per clip, adaptive GFLOPs
("real" and "upb") and the analytic expectation for a uniform random policy, so the
audit can be checked by eye: with keep/reuse/skip each 1/3, the second conv saves 1/3
and the first conv saves (2/3)^2 for all but the last frame (2/3 there).

    python benchmarks/flops_table.py --models resnet18 resnet50 --frames 8 --size 224
"""

from __future__ import annotations

import argparse

import timm
import torch
from tqdm import tqdm

import adafuse_plugin as af


def expected_uniform(report: af.FlopsReport, frames: int) -> float:
    """Eq. 5 in expectation for a uniform random policy over ``frames`` frames."""
    first_saved = ((frames - 1) * (2 / 3) ** 2 + 2 / 3) / frames
    saved = sum(b.first_conv * first_saved + b.second_conv / 3 for b in report.blocks)
    return report.dense - frames * saved + report.policy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["resnet18", "resnet50"])
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--clips", type=int, default=8, help="random clips to draw decisions")
    parser.add_argument("--policies", nargs="+", default=["random", "threshold"])
    args = parser.parse_args()
    rows = []
    for name in tqdm(args.models, desc="models"):
        for policy in args.policies:
            torch.manual_seed(0)
            model = timm.create_model(name, num_classes=174).eval()
            af.patch_model(model, num_segments=args.frames, policy=policy)
            counts = af.DecisionCounts()
            with torch.no_grad():
                for _ in range(args.clips):
                    model(torch.randn(args.frames, 3, args.size, args.size))
                    counts.update(af.collect_decisions(model))
            shape = (args.frames, 3, args.size, args.size)
            report = af.audit_flops(model, shape, decisions=counts)
            expected = expected_uniform(report, args.frames) if policy == "random" else None
            rows.append((name, policy, report, expected))
    print(f"\n{args.frames} frames x {args.size}x{args.size}, {args.clips} clips, GFLOPs per clip")
    print(
        "| model | policy | dense | adaptive (real) | adaptive (upb) | saving | expected (real) |"
    )
    print("|---|---|---|---|---|---|---|")
    for name, policy, r, expected in rows:
        exp = f"{expected / 1e9:.3f}" if expected is not None else "-"
        print(
            f"| {name} | {policy} | {r.dense / 1e9:.3f} | {r.adaptive / 1e9:.3f} | "
            f"{r.adaptive_upb / 1e9:.3f} | {r.saving:.1%} | {exp} |"
        )


if __name__ == "__main__":
    main()
