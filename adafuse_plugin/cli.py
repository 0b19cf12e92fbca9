"""The ``adafuse`` command line: ``adafuse demo``, ``adafuse audit``."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from .config import POLICIES


def _audit(args: argparse.Namespace) -> int:
    import timm
    import torch

    from . import AdaFuseConfig, audit_flops, patch_model

    if args.model not in timm.list_models():
        print(f"adafuse audit: unknown timm model {args.model!r}", file=sys.stderr)
        return 2
    model = timm.create_model(args.model, pretrained=False, num_classes=args.num_classes)
    config = AdaFuseConfig(num_segments=args.frames, policy=args.policy,
                           granularity=args.granularity)  # fmt: skip
    patch_model(model, config)
    shape = (args.frames, 3, args.size, args.size)
    if args.policy != "adafuse":  # fixed policies have decisions without training
        torch.manual_seed(args.seed)
        model.eval()
        with torch.no_grad():
            model(torch.randn(args.clips * args.frames, 3, args.size, args.size))
    report = audit_flops(model, input_shape=shape)
    print(json.dumps(report.to_dict(), indent=2) if args.json else report.table())
    return 0


def _demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    run_demo(output_dir=args.output_dir, quick=args.quick, epochs=args.epochs, size=args.size)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="adafuse", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser("demo", help="train and compare TSN vs AdaFuse on generated videos")
    demo.add_argument("--output-dir", default="adafuse_demo_output")
    demo.add_argument("--quick", action="store_true", help="a 1-2 minute smoke run")
    demo.add_argument("--epochs", type=int, default=None, help="training epochs per model")
    demo.add_argument("--size", default=None, help="dataset size: tiny/small/medium/large")
    demo.set_defaults(func=_demo)

    audit = commands.add_parser("audit", help="dense and adaptive FLOPs of a timm backbone")
    audit.add_argument("model", help="a timm model name, e.g. resnet50")
    audit.add_argument("--frames", type=int, default=8, help="frames per clip (num_segments)")
    audit.add_argument("--size", type=int, default=224, help="frame height and width")
    audit.add_argument("--policy", default="random", choices=sorted(POLICIES))
    audit.add_argument("--granularity", type=int, default=1)
    audit.add_argument("--clips", type=int, default=4, help="random clips for fixed policies")
    audit.add_argument("--num-classes", type=int, default=1000)
    audit.add_argument("--seed", type=int, default=0)
    audit.add_argument("--json", action="store_true", help="print JSON instead of a table")
    audit.set_defaults(func=_audit)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``adafuse`` console script."""
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
