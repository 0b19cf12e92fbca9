"""FLOPs audit of an mmaction2 config: dense FLOPs, and adaptive FLOPs over a data split."""

from __future__ import annotations

import itertools
import warnings
from typing import Any

import torch
from torch import nn

from ..errors import AdaFuseConfigError
from ..flops import DecisionCounts, FlopsReport
from ..summary import parameter_counts
from .compat import safe_load_checkpoint
from .recognizer import COUNTS_FIELD, AdaFuseRecognizer2D, report_from_counts
from .runner import validate_config


def dense_backbone_flops(backbone: nn.Module, clip_shape: tuple[int, int, int, int]) -> float:
    """fvcore multiply-adds (BN included) of the backbone on one clip of (T, 3, H, W)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        from fvcore.nn import FlopCountAnalysis
    weight = next(backbone.parameters())
    was_training = backbone.training
    backbone.eval()
    try:
        with torch.no_grad():
            analysis = FlopCountAnalysis(backbone, torch.zeros(clip_shape, dtype=weight.dtype))
            analysis.unsupported_ops_warnings(False)
            analysis.uncalled_modules_warnings(False)
            return float(analysis.total())
    finally:
        backbone.train(was_training)


def build_model(cfg: Any, checkpoint: str | None = None, allow_unsafe: bool = False) -> nn.Module:
    """The config's recognizer with ``checkpoint`` loaded (safely by default).

    Without a checkpoint the model keeps its construction-time weights: FLOPs do not
    depend on them, and ``init_weights`` would download pretrained backbones.
    """
    from mmaction.registry import MODELS
    from mmengine.registry import init_default_scope
    from mmengine.runner import load_state_dict

    init_default_scope(cfg.get("default_scope", "mmaction"))
    model = MODELS.build(without_pretrained_weights(cfg.model))
    if checkpoint is not None:
        state = safe_load_checkpoint(checkpoint, allow_unsafe=allow_unsafe)
        load_state_dict(model, state.get("state_dict", state), strict=True)
    return model.eval()


def without_pretrained_weights(model_cfg: Any) -> Any:
    """A copy of a model config whose backbone fetches no weights when built: an audit needs
    shapes, not values (timm backbones download in their constructor with pretrained=True)."""
    import copy

    model_cfg = copy.deepcopy(model_cfg)
    backbone = model_cfg.get("backbone")
    if isinstance(backbone, dict):
        if "pretrained" in backbone:
            backbone["pretrained"] = False if isinstance(backbone["pretrained"], bool) else None
        init_cfg = backbone.get("init_cfg")
        if isinstance(init_cfg, dict) and init_cfg.get("type") == "Pretrained":
            backbone["init_cfg"] = None
    return model_cfg


def count_split(model: AdaFuseRecognizer2D, loader: Any, max_batches: int | None) -> DecisionCounts:
    """Run ``predict`` over a dataloader and sum every clip's decision counts."""
    counts = DecisionCounts()
    with torch.no_grad():
        for batch in itertools.islice(loader, max_batches):
            for sample in model.test_step(batch):
                tally = sample.metainfo[COUNTS_FIELD]
                for name, block in tally.blocks.items():
                    total = counts.blocks.setdefault(name, dict.fromkeys(tally.FIELDS, 0))
                    for field, value in block.items():
                        total[field] += value
                counts.clips += tally.clips
    return counts


def audit_config(
    cfg: Any,
    checkpoint: str | None = None,
    split: str | None = None,
    max_batches: int | None = None,
    allow_unsafe: bool = False,
) -> dict[str, Any]:
    """FLOPs and parameters of the config's model per clip: dense FLOPs for any recognizer;
    for AdaFuse models also the per-block table and, with ``split`` ('train', 'val' or
    'test'), the adaptive FLOPs and policy mix over that split's dataloader. Builds the
    model without pretrained weights (nothing is downloaded)."""
    model = build_model(cfg, checkpoint, allow_unsafe)
    if not isinstance(model, AdaFuseRecognizer2D):
        if split is not None:
            raise AdaFuseConfigError(
                f"--data needs an AdaFuse model; {type(model).__name__} makes no decisions"
            )
        segments = getattr(model.backbone, "num_segments", None) or _pipeline_frames(cfg)
        shape = (segments, 3, 224, 224)
        dense = dense_backbone_flops(model.get_submodule("backbone"), shape)
        params = parameter_counts(model)
        return {"model": type(model).__name__, "frames": segments, "dense": dense, "params": params}
    report: FlopsReport = model.flops_report()
    if split is not None:
        from mmengine.runner import Runner

        name = f"{split}_dataloader"
        if cfg.get(name) is None:
            raise AdaFuseConfigError(f"--data {split}: the config has no {name}")
        validate_config(cfg)
        loader = Runner.build_dataloader(cfg[name])
        report = report_from_counts(report, count_split(model, loader, max_batches))
    return {"model": type(model).__name__, "report": report, "params": parameter_counts(model)}


def _pipeline_frames(cfg: Any) -> int:
    for step in cfg.get("val_pipeline") or cfg.val_dataloader.dataset.pipeline:
        if step.get("type") == "SampleFrames":
            return step.get("clip_len", 1) * step.get("num_clips", 1)
    raise AdaFuseConfigError("cannot find SampleFrames in the config's val pipeline")
