"""The ``adafuse`` command line: ``demo``, ``audit``, ``convert`` and mmaction2 ``train`` /
``test``."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .config import EVAL_DECISIONS, POLICIES


def _audit(args: argparse.Namespace) -> int:
    if args.model.endswith(".py") or Path(args.model).is_file():
        return _audit_config(args)
    if args.checkpoint or args.data:
        print(
            "adafuse audit: --checkpoint and --data need a CONFIG, not a timm name", file=sys.stderr
        )
        return 2
    import timm
    import torch

    from . import AdaFuseConfig, audit_flops, patch_model
    from .summary import parameter_counts

    if args.model not in timm.list_models():
        print(f"adafuse audit: unknown timm model {args.model!r}", file=sys.stderr)
        return 2
    model = timm.create_model(args.model, pretrained=False, num_classes=args.num_classes)
    config = AdaFuseConfig(
        num_segments=args.frames, policy=args.policy, granularity=args.granularity
    )
    patch_model(model, config)
    shape = (args.frames, 3, args.size, args.size)
    if args.policy != "adafuse":  # fixed policies have decisions without training
        torch.manual_seed(args.seed)
        model.eval()
        with torch.no_grad():
            model(torch.randn(args.clips * args.frames, 3, args.size, args.size))
    report = audit_flops(model, input_shape=shape)
    params = parameter_counts(model)
    if args.json:
        print(json.dumps({**report.to_dict(), "model": args.model, "params": params}, indent=2))
    else:
        print(report.table())
        print(_parameters_line(params))
    return 0


class _CfgOptions(argparse.Action):
    """mmengine's public ``DictAction`` (``KEY=VALUE`` pairs into a dict), imported when the
    option is used: ``adafuse audit <timm model>`` needs no mmengine."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:  # noqa: ANN001
        from mmengine.config import DictAction

        DictAction(self.option_strings, self.dest)(parser, namespace, values, option_string)


def _audit_config(args: argparse.Namespace) -> int:
    from .mmaction.audit import audit_config
    from .mmaction.runner import load_config

    cfg = load_config(args.model, args.cfg_options or {})
    result = audit_config(
        cfg, args.checkpoint, args.data, args.max_batches, args.allow_unsafe_checkpoints
    )
    report = result.get("report")
    if args.json:
        data = report.to_dict() if report is not None else result
        print(json.dumps({**data, "model": result["model"], "params": result["params"]}, indent=2))
        return 0
    if report is not None:
        print(report.table())
    else:
        print(
            f"{result['model']}: dense {result['dense'] / 1e9:.2f} GFLOPs per clip of "
            f"{result['frames']} frames at 224x224"
        )
    print(_parameters_line(result["params"]))
    return 0


def _parameters_line(params: dict[str, int]) -> str:
    line = f"parameters            {params['total'] / 1e6:.2f} M"
    if params["adafuse"]:
        line += f" ({params['adafuse'] / 1e6:.3f} M added by AdaFuse)"
    return line


def _runner(args: argparse.Namespace) -> Any:
    from .mmaction.runner import build_runner, load_config

    cfg = load_config(args.config, args.cfg_options or {})
    cfg.work_dir = (
        args.work_dir or cfg.get("work_dir") or str(Path("work_dirs") / Path(args.config).stem)
    )
    if getattr(args, "resume", None) == "auto":
        cfg.resume, cfg.load_from = True, None
    elif getattr(args, "resume", None):
        cfg.resume, cfg.load_from = True, args.resume
    if getattr(args, "checkpoint", None):
        cfg.load_from = args.checkpoint
    if getattr(args, "decisions", None):
        cfg.model.adafuse.eval_decisions = args.decisions
    if args.seed is not None:
        cfg.randomness = dict(cfg.get("randomness") or {}, seed=args.seed)
    if args.deterministic:
        cfg.randomness = dict(cfg.get("randomness") or {}, deterministic=True)
    amp = getattr(args, "amp", False)  # as mmaction2's tools/train.py
    if amp and cfg.optim_wrapper.get("type", "OptimWrapper") != "AmpOptimWrapper":
        cfg.optim_wrapper.type = "AmpOptimWrapper"
        cfg.optim_wrapper.setdefault("loss_scale", "dynamic")
    if getattr(args, "auto_scale_lr", False):
        if not cfg.get("auto_scale_lr", {}).get("base_batch_size"):
            raise SystemExit(
                "adafuse train --auto-scale-lr: the config sets no auto_scale_lr.base_batch_size "
                "(the total batch size its learning rate was tuned for)"
            )
        cfg.auto_scale_lr.enable = True
    return build_runner(cfg, args.launcher)


def _train(args: argparse.Namespace) -> int:
    from .mmaction.compat import unsafe_checkpoints

    with unsafe_checkpoints(args.allow_unsafe_checkpoints):
        _runner(args).train()
    return 0


def _test(args: argparse.Namespace) -> int:
    from .mmaction.compat import unsafe_checkpoints

    with unsafe_checkpoints(args.allow_unsafe_checkpoints):
        metrics = _runner(args).test()
    print(json.dumps({k: float(v) for k, v in metrics.items()}, indent=2))
    return 0


def _add_runner_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--work-dir", default=None, help="default: work_dirs/<config name>")
    parser.add_argument("--launcher", default="none", choices=["none", "pytorch", "slurm"])
    parser.add_argument(
        "--cfg-options",
        nargs="+",
        action=_CfgOptions,
        default=None,
        metavar="KEY=VALUE",
        help="override config keys (mmengine's DictAction syntax)",
    )
    parser.add_argument("--seed", type=int, default=None, help="random seed (mmengine randomness)")
    parser.add_argument(
        "--deterministic", action="store_true", help="deterministic algorithms (cuDNN)"
    )
    parser.add_argument(
        "--allow-unsafe-checkpoints",
        action="store_true",
        help="fully unpickle checkpoints the safe loader rejects (trusted files only)",
    )


def _convert(args: argparse.Namespace) -> int:
    from .mmaction.convert import convert_checkpoint

    result = convert_checkpoint(args.source, args.output, args.config, args.variant)
    print(json.dumps(result, indent=2))
    print(
        f"\nnext: adafuse test {result['config']} {result['output']}   "
        "(add --decisions gumbel --seed 1007 for the authors' sampled protocol)",
        file=sys.stderr,
    )
    return 0


def _demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    size = int(args.size) if args.size and args.size.isdigit() else args.size
    run_demo(
        output_dir=args.output_dir,
        quick=args.quick,
        epochs=args.epochs,
        size=size,
        num_frames=args.frames,
        frame_size=args.frame_size,
        batch_size=args.batch_size,
        num_workers=args.workers,
        quiet=args.quiet or None,
        data=args.data,
        family=args.family,
    )
    return 0


def _tools(args: argparse.Namespace) -> int:
    from .mmaction.tools import run_tool

    return run_tool(args.tool, args.tool_args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="adafuse", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser(
        "demo",
        help="pretrain TSN / TSM R18, adapt AdaFuse from them, with mmaction2 on CPU",
        description="Generate (cached) synthetic videos (or read --data DIR), train TSN-R18 "
        "and TSM-R18, then adapt AdaFuse-TSN, AdaFuse-TSM and AdaFuse-TSM+Last from their "
        "weights (the paper's recipe) with mmengine's Runner through mmaction2's video "
        "pipeline, test them with AdaFuseMetric, print a table and write report.json plus "
        "PNG plots.",
    )
    demo.add_argument(
        "--output-dir",
        default="adafuse_demo_output",
        help="report, plots, work dirs and the cached dataset go here",
    )
    demo.add_argument("--quick", action="store_true", help="a 1-2 minute smoke run")
    demo.add_argument("--epochs", type=int, default=None, help="epochs per model (default 20)")
    demo.add_argument(
        "--size", default=None, help="dataset size: tiny/small/medium/large or clips per class"
    )
    demo.add_argument("--frames", type=int, default=None, help="frames per clip (default 8)")
    demo.add_argument("--frame-size", type=int, default=None, help="pixels (default 32)")
    demo.add_argument("--batch-size", type=int, default=None, help="clips per batch (default 16)")
    demo.add_argument("--workers", type=int, default=None, help="dataloader workers (default 1)")
    demo.add_argument(
        "--data",
        default=None,
        metavar="DIR",
        help="your own videos: a folder with train_list.txt / test_list.txt ('<video> <label>' "
        "lines, mmaction2's format) and optional classes.txt; the class count is read from it",
    )
    demo.add_argument(
        "--family",
        default=None,
        choices=["motion", "cycles"],
        help="generated classes: motion (default) or cycles (the second family)",
    )
    demo.add_argument(
        "--quiet",
        action="store_true",
        help="hide mmengine's log lines (progress bar and table only)",
    )
    demo.set_defaults(func=_demo)

    train = commands.add_parser("train", help="train an mmaction2 config (mmengine Runner)")
    train.add_argument("config")
    train.add_argument(
        "--resume",
        nargs="?",
        const="auto",
        default=None,
        help="resume from the latest checkpoint in the work dir, or from PATH",
    )
    train.add_argument("--amp", action="store_true", help="automatic mixed precision training")
    train.add_argument(
        "--auto-scale-lr",
        action="store_true",
        help="scale the learning rate by the total batch size / auto_scale_lr.base_batch_size",
    )
    _add_runner_options(train)
    train.set_defaults(func=_train)

    test = commands.add_parser("test", help="test a checkpoint of an mmaction2 config")
    test.add_argument("config")
    test.add_argument("checkpoint")
    test.add_argument(
        "--decisions",
        choices=list(EVAL_DECISIONS),
        default=None,
        help="eval decisions of learned policies: argmax (default, deterministic) or gumbel "
        "(sampled, the authors' test protocol; seed it with --seed)",
    )
    _add_runner_options(test)
    test.set_defaults(func=_test)

    convert = commands.add_parser(
        "convert",
        help="convert an authors' released AdaFuse checkpoint for a config in mmaction_configs/",
        description="Map every key of an authors' checkpoint (sthv1_adatsn50.pth.tar, "
        "sthv1_adatsm50.pth.tar, sthv1_adatsm50last.pth.tar) onto the matching config's "
        "model and write an mmengine checkpoint, loadable weights-only. Unmapped or missing "
        "keys, wrong shapes and a checkpoint that fits no config are errors naming them.",
    )
    convert.add_argument("source", help="the authors' .pth.tar file")
    convert.add_argument("output", help="the mmengine checkpoint to write (.pth)")
    convert.add_argument(
        "--config", default=None, help="default: the shipped config of the detected model"
    )
    convert.add_argument(
        "--variant",
        default=None,
        choices=["tsn", "tsm", "tsm-last"],
        help="needed when the file name does not say adatsn / adatsm",
    )
    convert.set_defaults(func=_convert)

    audit = commands.add_parser("audit", help="dense and adaptive FLOPs of a timm model or config")
    audit.add_argument("model", help="a timm model name (e.g. resnet50) or an mmaction2 config")
    audit.add_argument("--checkpoint", default=None, help="config mode: weights to load")
    audit.add_argument(
        "--data",
        default=None,
        choices=["train", "val", "test"],
        help="config mode: count decisions over this split's dataloader",
    )
    audit.add_argument("--max-batches", type=int, default=None)
    audit.add_argument(
        "--cfg-options", nargs="+", action=_CfgOptions, default=None, metavar="KEY=VALUE"
    )
    audit.add_argument("--allow-unsafe-checkpoints", action="store_true")
    audit.add_argument("--frames", type=int, default=8, help="frames per clip (num_segments)")
    audit.add_argument("--size", type=int, default=224, help="frame height and width")
    audit.add_argument("--policy", default="random", choices=sorted(POLICIES))
    audit.add_argument("--granularity", type=int, default=1)
    audit.add_argument("--clips", type=int, default=4, help="random clips for fixed policies")
    audit.add_argument("--num-classes", type=int, default=1000)
    audit.add_argument("--seed", type=int, default=0)
    audit.add_argument("--json", action="store_true", help="print JSON instead of a table")
    audit.set_defaults(func=_audit)

    tools = commands.add_parser(
        "tools",
        help="run one of mmaction2's own tools (train, test, get_flops...) with AdaFuse "
        "registered and 'mmaction::' configs working",
        description="Runs the script mmaction2 installs under mmaction/.mim/tools exactly as "
        "`python tools/NAME.py ARGS...`, after the compatibility fixes that 'mmaction::' "
        "configs need on a current setuptools. Example: adafuse tools train CONFIG "
        "--work-dir work_dirs/x; adafuse tools get_flops CONFIG --shape 8 3 224 224.",
    )
    tools.add_argument("tool", help="the tool's file name without .py: train, test, get_flops...")
    tools.add_argument("tool_args", nargs=argparse.REMAINDER, help="the tool's own arguments")
    tools.set_defaults(func=_tools)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``adafuse`` console script."""
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
