"""``adafuse demo``: TSN, TSM and AdaFuse-TSN / -TSM / -TSM+Last ResNet-18 through mmaction2,
on CPU, with the paper's recipe: plain models first, AdaFuse adapted from their weights.

Generates (and caches) the synthetic temporal-reasoning videos, then for each model builds an
mmaction2 config from the small synthetic config
(``adafuse_plugin/configs/adafuse-tsm_r18_1xb2-1x1x4-2e_synthetic-rgb.py``), trains it with
mmengine's ``Runner`` through the real data pipeline (``VideoDataset``, decord decoding,
``SampleFrames``, ``Resize``), tests it on the test split with ``AdaFuseMetric`` (top-1, dense
and adaptive GFLOPs, keep / reuse / skip mix, per block), prints a table and writes a report
folder: ``report.json`` and PNG plots (see :mod:`adafuse_plugin.demo.plots`).

TSN is ``AdaFuseRecognizer2D`` with ``policy='keep'``: its outputs equal the unpatched
network's, and the same metric reports its (dense == adaptive) FLOPs.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from pathlib import Path
from typing import Any, Literal

from ..config import PolicyName
from ..gate import GATE_ATTR
from .videos import Family, Phase

SYNTHETIC_CONFIG = "adafuse-tsm_r18_1xb2-1x1x4-2e_synthetic-rgb.py"
ACTIONS = ("keep", "reuse", "skip")


@dataclasses.dataclass(frozen=True)
class Variant:
    """One model of the comparison."""

    name: str
    backbone: Literal["tsn", "tsm"]  # mmaction2 ResNet + TSNHead, or ResNetTSM + TSMHead
    policy: PolicyName  # "keep" is the plain baseline
    options: dict[str, Any] = dataclasses.field(default_factory=dict)  # more AdaFuseConfig fields
    #: Name of a variant trained before whose weights this one starts from (``load_from``:
    #: pretrain, then adapt), trained for ``adapt_epochs`` at ``adapt_lr``.
    init_from: str | None = None


#: The paper's recipe at small scale: the plain models are trained first (the stand-in for
#: ImageNet pretraining), then every AdaFuse model adapts from their weights.
VARIANTS: tuple[Variant, ...] = (
    Variant("TSN-R18", "tsn", "keep"),
    Variant("TSM-R18", "tsm", "keep"),
    Variant("AdaFuse-TSN-R18", "tsn", "adafuse", init_from="TSN-R18"),
    Variant("AdaFuse-TSM-R18", "tsm", "adafuse", init_from="TSM-R18"),
    Variant("AdaFuse-TSM+Last-R18", "tsm", "adafuse", {"stages": (-1,)}, init_from="TSM-R18"),
)


@dataclasses.dataclass
class DemoSettings:
    """Budget of one demo run."""

    size: str | int = "small"
    epochs: int = 20
    num_frames: int = 8
    frame_size: int = 32
    batch_size: int = 16
    optimizer: Literal["adamw", "sgd"] = "adamw"  # sgd: the paper's; slow from scratch
    lr: float = 2e-3  # peak of the one-cycle schedule
    weight_decay: float = 1e-4
    warmup: float = 0.15  # share of the run spent warming the lr up
    dropout: float = 0.0  # before the classifier
    hidden_size: int = 64  # policy network width
    flops_weight: float = 0.05  # lambda, on FLOPs normalised by the dense FLOPs
    flops_warmup: float = 0.5  # share of the run over which lambda ramps up from 0
    num_workers: int = 1
    threads: int = 1
    log_interval: int = 10
    seed: int = 0
    quiet: bool = False
    data: str | None = None  # a video-list folder of your own instead of generated videos
    phase: Phase = "random"  # how the generated actions start (demo.videos)
    family: Family = "motion"  # which generated classes: "motion" or "cycles"
    #: A torchvision ResNet state dict the plain models (TSN / TSM) start from, loaded
    #: through ``backbone.pretrained`` as ImageNet weights are (frame-level pretraining).
    backbone_init: str | None = None
    #: With ``backbone_init``: the pretrained backbone's lr as a multiple of the head's, so
    #: that training on the videos refines what the pretraining learned instead of
    #: overwriting it (ImageNet fine-tuning's usual lower backbone lr).
    backbone_lr_mult: float = 1.0
    adapt_epochs: int = 10  # variants with init_from: fine-tuning epochs
    adapt_lr: float = 5e-4  # and their peak learning rate
    policy_lr_mult: float = 10.0  # the policy nets' lr, as a multiple of the model's
    #: The lr schedule (recorded so that runs of different schedules are not mixed up).
    schedule: Literal["warmup-cosine"] = "warmup-cosine"


QUICK: dict[str, Any] = dict(size="tiny", epochs=2, adapt_epochs=1)


def config_dir() -> Path:
    """The shipped mmaction2 configs: package data, so installed wheels have them too
    (``mmaction_configs/`` in a source checkout links here)."""
    return Path(__file__).resolve().parents[1] / "configs"


def _set_pipeline(pipeline: list, num_frames: int, frame_size: int) -> None:
    for step in pipeline:
        if step["type"] == "SampleFrames":
            step.update(clip_len=1, frame_interval=1, num_clips=num_frames)
        elif step["type"] == "Resize":
            step.update(scale=(frame_size, frame_size), keep_ratio=False)


def build_config(
    variant: Variant,
    settings: DemoSettings,
    data_root: Path,
    work_dir: Path,
    num_classes: int,
    load_from: Path | None = None,
    paired_classes: bool = True,
) -> Any:
    """The mmengine config of one demo model, derived from the synthetic base config;
    ``load_from`` (for a variant with ``init_from``): the checkpoint it adapts;
    ``paired_classes``: report within-pair accuracy (generated data)."""
    from ..mmaction.runner import load_config

    path = config_dir() / SYNTHETIC_CONFIG
    cfg = load_config(path)
    frames, size = settings.num_frames, settings.frame_size
    model = cfg.model
    adafuse = dict(model.adafuse)
    options = dict(variant.options)
    weight = options.pop("flops_weight", settings.flops_weight if variant.policy != "keep" else 0.0)
    adafuse.update(
        num_segments=frames,
        input_size=size,
        policy=variant.policy,
        flops_weight=weight,
        hidden_size=settings.hidden_size,
        **options,
    )
    model.adafuse = adafuse
    model.cls_head.dropout_ratio = settings.dropout
    if variant.backbone == "tsn":
        model.backbone = dict(type="ResNet", depth=18, pretrained=None, norm_eval=False)
        head = {k: v for k, v in model.cls_head.items() if k not in ("num_segments", "is_shift")}
        model.cls_head = dict(head, type="TSNHead", num_classes=num_classes)
    else:
        model.backbone.num_segments = frames
        model.cls_head.num_segments = frames
        model.cls_head.num_classes = num_classes
    if settings.backbone_init is not None and variant.init_from is None:
        model.backbone.pretrained = settings.backbone_init
        if variant.backbone == "tsm":
            model.backbone.pretrained2d = True  # ResNetTSM maps torchvision's names itself
    if variant.policy == "keep":
        cfg.custom_hooks = []  # no temperature to anneal, no decisions worth logging
    else:
        cfg.custom_hooks = [dict(type="AdaFuseHook", tau=0.67, flops_warmup=settings.flops_warmup)]

    for split in ("train", "test"):
        loader = cfg[f"{split}_dataloader"]
        loader.batch_size = settings.batch_size
        loader.num_workers = settings.num_workers
        loader.persistent_workers = settings.num_workers > 0
        loader.dataset.ann_file = str(data_root / f"{split}_list.txt")
        loader.dataset.data_prefix = dict(video=str(data_root))
        _set_pipeline(loader.dataset.pipeline, frames, size)
    cfg.test_evaluator = dict(cfg.test_evaluator, paired_classes=paired_classes)
    # Test once at the end, on the test split; no validation during training.
    cfg.val_dataloader = cfg.val_cfg = cfg.val_evaluator = None

    epochs, lr = settings.epochs, settings.lr
    if variant.init_from is not None:
        if load_from is None:
            raise ValueError(f"{variant.name} adapts {variant.init_from}: pass its checkpoint")
        cfg.load_from = str(load_from)
        epochs, lr = settings.adapt_epochs, settings.adapt_lr
    cfg.train_cfg = dict(type="EpochBasedTrainLoop", max_epochs=epochs, val_interval=epochs)
    optimizer = dict(lr=lr, weight_decay=settings.weight_decay)
    if settings.optimizer == "adamw":
        cfg.optim_wrapper.optimizer = dict(optimizer, type="AdamW")
    else:
        cfg.optim_wrapper.optimizer = dict(optimizer, type="SGD", momentum=0.9)
    cfg.auto_scale_lr = dict(enable=False, base_batch_size=settings.batch_size)
    # mmengine's default constructor: the policy nets (every parameter under a block's
    # ``adafuse`` gate) learn at ``policy_lr_mult`` times the lr. Adapting from a trained
    # backbone at its small fine-tuning lr, freshly initialised policies otherwise stay
    # at their initial uniform mix (docs/results.md); the authors' --gate_lr_factor.
    cfg.optim_wrapper.constructor = "DefaultOptimWrapperConstructor"
    custom_keys = {f".{GATE_ATTR}.": dict(lr_mult=settings.policy_lr_mult)}
    if settings.backbone_init is not None and variant.init_from is None:
        # mmengine matches the longest key first: the policy nets keep their own multiplier.
        custom_keys["backbone."] = dict(lr_mult=settings.backbone_lr_mult)
    cfg.optim_wrapper.paramwise_cfg = dict(custom_keys=custom_keys)
    # Warm-up, then cosine decay; both scale each parameter group's own lr, so the policy
    # multiplier holds throughout (OneCycleLR would set one absolute lr for every group).
    # A warm-up of a few epochs matters from scratch: with a one-epoch warm-up, AdamW at
    # 2e-3 memorised the 280 training clips (test top-1 < 15 %).
    warmup = round(settings.warmup * epochs)
    schedule = dict(by_epoch=True, convert_to_iter_based=True)
    cfg.param_scheduler = [
        dict(type="LinearLR", start_factor=0.04, begin=0, end=warmup, **schedule),
        dict(type="CosineAnnealingLR", eta_min_ratio=1e-3, begin=warmup, end=epochs, **schedule),
    ][0 if warmup else 1 :]
    cfg.default_hooks.logger = dict(type="LoggerHook", interval=settings.log_interval)
    # Weights only: all that adapting a model needs (``load_from``).
    cfg.default_hooks.checkpoint = dict(
        type="CheckpointHook",
        interval=epochs,
        save_best=None,
        max_keep_ckpts=1,
        save_optimizer=False,
        save_param_scheduler=False,
    )
    cfg.randomness = dict(seed=settings.seed)
    cfg.work_dir = str(work_dir)
    cfg.experiment_name = variant.name  # mmengine appends a timestamp
    if settings.quiet:
        cfg.log_level = "WARNING"  # only the progress bar and the table
    return cfg


@dataclasses.dataclass(frozen=True)
class VideoFolder:
    """A dataset folder in mmaction2's video-list format, as `read_video_folder` found it."""

    root: Path
    num_classes: int
    counts: dict[str, int]
    paired_classes: bool  # generated by us: classes in time-reversed pairs (2k, 2k + 1)


def read_video_folder(root: str | Path) -> VideoFolder:
    """Check a dataset folder: ``train_list.txt`` and ``test_list.txt`` with lines
    ``<video path relative to root> <label>``, optional ``classes.txt`` (one name per line;
    else the class count is the largest label + 1). Errors name the file and line."""
    root = Path(root)
    counts, labels = {}, set()
    for split in ("train", "test"):
        path = root / f"{split}_list.txt"
        if not path.is_file():
            raise FileNotFoundError(
                f"{path} is missing: a dataset folder needs train_list.txt and test_list.txt "
                "with lines '<video path relative to the folder> <integer label>'"
            )
        lines = [line for line in path.read_text().splitlines() if line.strip()]
        for number, line in enumerate(lines, 1):
            video, _, label = line.rpartition(" ")
            if not video or not label.isdigit():
                raise ValueError(f"{path}:{number}: expected '<video> <label>', got {line!r}")
            if not (root / video).is_file():
                raise FileNotFoundError(f"{path}:{number}: no video file {root / video}")
            labels.add(int(label))
        if not lines:
            raise ValueError(f"{path} lists no videos")
        counts[split] = len(lines)
    classes_file = root / "classes.txt"
    num_classes = max(labels) + 1
    if classes_file.is_file():
        names = [n for n in classes_file.read_text().splitlines() if n.strip()]
        if len(names) < num_classes:
            raise ValueError(
                f"{classes_file} names {len(names)} classes, but labels go up to {max(labels)}"
            )
        num_classes = len(names)
    manifest = root / "manifest.json"
    paired = manifest.is_file() and "generator_version" in json.loads(manifest.read_text()).get(
        "params", {}
    )
    return VideoFolder(root, num_classes, counts, paired)


def prepare_data(output_dir: Path, settings: DemoSettings) -> Path:
    """The dataset folder of a run: ``settings.data`` (checked), else generated videos
    (cached under ``output_dir``)."""
    from .videos import generate_dataset

    if settings.data is not None:
        return read_video_folder(settings.data).root
    root = dataset_root(output_dir, settings)
    generate_dataset(
        root,
        size=settings.size,
        num_frames=16,
        frame_size=settings.frame_size,
        phase=settings.phase,
        family=settings.family,
    )
    return root


def dataset_root(output_dir: Path, settings: DemoSettings) -> Path:
    """Where the generated dataset of these settings lives under ``output_dir``."""
    name = f"synthetic-{settings.family}-{settings.size}-{settings.frame_size}px-{settings.phase}"
    return Path(output_dir) / "data" / name


def _progress_hook(bar: Any, name: str) -> Any:
    """An mmengine hook that advances ``bar`` on every train and test iteration."""
    from mmengine.hooks import Hook

    class DemoProgressHook(Hook):
        priority = "VERY_LOW"

        def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None) -> None:
            bar.set_postfix_str(f"{name} epoch {runner.epoch + 1}/{runner.max_epochs}")
            bar.update()

        def after_test_iter(self, runner, batch_idx, data_batch=None, outputs=None) -> None:
            bar.set_postfix_str(f"{name} test")
            bar.update()

    return DemoProgressHook()


def _result(variant: Variant, metrics: dict, params: int, seconds: dict) -> dict:
    """One row of the report from ``AdaFuseMetric``'s metrics (prefix ``acc/``)."""
    from ..mmaction.metric import PAIR_KEY

    m = {k.removeprefix("acc/"): float(v) for k, v in metrics.items()}
    blocks: dict[str, dict[str, float]] = {}
    for key, value in m.items():
        block, _, action = key.rpartition("/")
        if block and action in ACTIONS:
            blocks.setdefault(block, {})[action] = value
    dense, adaptive = m["gflops_dense"], m["gflops_real"]
    return {
        "model": variant.name,
        "backbone": variant.backbone,
        "policy": variant.policy,
        "top1": m["top1"],
        "top5": m["top5"],
        "within_pair": m.get("within_pair"),
        # per pair of classes (2k, 2k + 1), keyed by k
        "pairs": {k.removeprefix(PAIR_KEY): v for k, v in m.items() if k.startswith(PAIR_KEY)},
        "dense_gflops": dense,
        "adaptive_gflops": adaptive,
        "upb_gflops": m["gflops_upb"],
        "saving": 1.0 - adaptive / dense,
        "mix": {a: m[a] for a in ACTIONS},
        "blocks": blocks,
        "params": params,
        **seconds,
    }


def _runner(
    variant: Variant,
    settings: DemoSettings,
    data_root: Path,
    work_dir: Path,
    load_from: Path | None,
) -> Any:
    """mmengine's Runner for one demo model on the dataset at ``data_root``."""
    from ..mmaction.runner import build_runner

    data = read_video_folder(data_root)
    cfg = build_config(
        variant, settings, data_root, work_dir, data.num_classes, load_from, data.paired_classes
    )
    if load_from is not None:
        cfg.load_from = str(load_from)  # also for a model trained from scratch
    return build_runner(cfg)


def _tested(variant: Variant, runner: Any, seconds: dict, checkpoint: Path) -> dict:
    """Test ``runner``'s model: its report row, with ``seconds`` and the weights tested."""
    start = time.perf_counter()
    metrics = runner.test()
    seconds = dict(seconds, test_seconds=time.perf_counter() - start)
    params = sum(p.numel() for p in runner.model.parameters())
    return dict(_result(variant, metrics, params, seconds), checkpoint=str(checkpoint))


def train_and_test(
    variant: Variant,
    settings: DemoSettings,
    data_root: Path,
    work_dir: Path,
    bar: Any,
    load_from: Path | None = None,
) -> dict:
    """Train one model with mmengine's Runner, then test it with ``AdaFuseMetric``.

    The result's ``checkpoint`` is the trained weights (for variants adapting this one).
    """
    runner = _runner(variant, settings, data_root, work_dir, load_from)
    runner.register_hook(_progress_hook(bar, variant.name))
    start = time.perf_counter()
    runner.train()
    seconds = {"train_seconds": time.perf_counter() - start}
    checkpoint = Path(runner.work_dir) / f"epoch_{runner.max_epochs}.pth"
    return _tested(variant, runner, seconds, checkpoint)


def evaluate_checkpoint(
    variant: Variant, settings: DemoSettings, data_root: Path, work_dir: Path, checkpoint: Path
) -> dict:
    """Test trained weights of ``variant`` again, as `train_and_test` tested them after
    training (same config, seed and metric): to check a recorded result or to add a
    metric reported since."""
    runner = _runner(variant, settings, data_root, work_dir, checkpoint)
    return _tested(variant, runner, {}, checkpoint)


def format_table(results: list[dict]) -> str:
    """The demo's result table (within-pair accuracy where the classes come in pairs)."""
    from tabulate import tabulate

    headers = ("model", "params", "top-1", "pair", "dense GF", "adaptive GF", "saving")
    rows = []
    for r in results:
        pair = "-" if r.get("within_pair") is None else f"{r['within_pair']:.0%}"
        rows.append(
            (
                r["model"],
                f"{r['params'] / 1e6:.2f}M",
                f"{r['top1']:.1%}",
                pair,
                f"{r['dense_gflops']:.3f}",
                f"{r['adaptive_gflops']:.3f}",
                f"{r['saving']:.1%}",
                "/".join(f"{r['mix'][a]:.0%}" for a in ACTIONS),
            )
        )
    align = ("left",) + ("right",) * (len(headers) - 1) + ("left",)
    return tabulate(rows, (*headers, "keep/reuse/skip"), disable_numparse=True, colalign=align)


def run_demo(
    output_dir: str | Path = "adafuse_demo_output",
    quick: bool = False,
    epochs: int | None = None,
    size: str | int | None = None,
    **overrides: Any,
) -> list[dict]:
    """Generate data, train and test the three models, print the table, write the report.

    ``overrides`` are further `DemoSettings` fields (``num_frames``, ``batch_size``...).
    Returns one result dict per model, as in ``report.json``.
    """
    import torch
    from tqdm.auto import tqdm

    try:
        import matplotlib  # noqa: F401
        import mmaction  # noqa: F401
    except ImportError as error:
        raise RuntimeError(
            f"adafuse demo needs mmaction2 and matplotlib ({error}); install the extras: "
            "pip install -c constraints.txt -e '.[mmaction,demo]' (or bash scripts/setup.sh)"
        ) from error
    from .plots import write_plots

    settings = DemoSettings(**QUICK) if quick else DemoSettings()
    given = dict(overrides, epochs=epochs, size=size)
    settings = dataclasses.replace(settings, **{k: v for k, v in given.items() if v is not None})
    output_dir = Path(output_dir)
    start = time.perf_counter()
    data_root = prepare_data(output_dir, settings)
    info = read_video_folder(data_root)
    per_epoch = math.ceil(info.counts["train"] / settings.batch_size)
    tests = math.ceil(info.counts["test"] / settings.batch_size)
    steps = sum(
        per_epoch * (settings.adapt_epochs if v.init_from else settings.epochs) + tests
        for v in VARIANTS
    )

    threads = torch.get_num_threads()
    torch.set_num_threads(settings.threads)  # 2 cores: more threads fight the data pipeline
    results: list[dict] = []
    try:
        with tqdm(total=steps, desc="adafuse demo", unit="it") as bar:
            for variant in VARIANTS:
                work_dir = output_dir / "work_dirs" / variant.name
                trained = {r["model"]: Path(r["checkpoint"]) for r in results}
                load_from = trained[variant.init_from] if variant.init_from else None
                results.append(
                    train_and_test(variant, settings, data_root, work_dir, bar, load_from)
                )
    finally:
        torch.set_num_threads(threads)

    table = format_table(results)
    print(table)
    plots = write_plots(results, output_dir)
    report = {
        "settings": dataclasses.asdict(settings),
        "dataset": {"root": str(data_root), "clips": info.counts},
        "flops_note": (
            f"GFLOPs per clip of {settings.num_frames} frames at {settings.frame_size}x"
            f"{settings.frame_size} (paper Eq. 5, 'real'), backbone only"
        ),
        "results": results,
        "plots": [p.name for p in plots],
        "table": table,
        "total_seconds": time.perf_counter() - start,
    }
    (output_dir / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"report written to {output_dir}: report.json, " + ", ".join(p.name for p in plots))
    return results
