"""mmaction2 model-zoo configs as AdaFuse configs: the three edits, done and checked.

A 2D recognizer config of mmaction2's zoo becomes an AdaFuse one by swapping the model
type for ``AdaFuseRecognizer2D``, adding its ``adafuse`` settings (``num_segments`` = the
frames of one clip, read from the config) and importing this plugin. Everything else (data,
schedule, runtime, pretrained weights) stays the zoo's.

    zoo = "mmaction::recognition/tsm/tsm_imagenet-pretrained-r50_8xb16-1x1x8-50e_sthv2-rgb.py"
    cfg = adafuse_zoo_config(zoo, flops_weight=0.1)
"""

from __future__ import annotations

import os
from typing import Any

from ..errors import AdaFuseConfigError

PLUGIN_IMPORT = "adafuse_plugin.mmaction"


def clip_frames(cfg: Any) -> int:
    """Frames of one training clip: the backbone's / head's ``num_segments`` where they
    have one (TSM, TRN, TANet...), else ``clip_len x num_clips`` of the train pipeline's
    ``SampleFrames`` / ``DenseSampleFrames`` (TSN)."""
    for owner in ("backbone", "cls_head"):
        segments = (cfg.model.get(owner) or {}).get("num_segments")
        if segments:
            return int(segments)
    pipeline = cfg.get("train_pipeline") or cfg.train_dataloader.dataset.pipeline
    for step in pipeline:
        if step.get("type") in ("SampleFrames", "DenseSampleFrames"):
            return int(step.get("clip_len", 1) * step.get("num_clips", 1))
    raise AdaFuseConfigError(
        "cannot tell the frames per clip: no num_segments in the backbone or head and no "
        "SampleFrames in the train pipeline; pass num_segments=..."
    )


def to_adafuse(cfg: Any, **adafuse: Any) -> Any:
    """``cfg`` (an mmaction2 ``Recognizer2D`` config) turned into an AdaFuse config, in
    place; ``adafuse``: `AdaFuseConfig` fields and recognizer settings (``flops_weight``,
    ``policy``...), ``num_segments`` read from the config unless given."""
    model_type = cfg.model.get("type")
    if model_type != "Recognizer2D":
        raise AdaFuseConfigError(
            f"model.type is {model_type!r}: AdaFuse patches 2D recognizers "
            "(Recognizer2D: TSN, TSM, TRN, TANet, TIN...), not 3D or transformer ones"
        )
    adafuse.setdefault("num_segments", clip_frames(cfg))
    cfg.model.type = "AdaFuseRecognizer2D"
    cfg.model.adafuse = adafuse
    imports = dict(cfg.get("custom_imports") or {"imports": []})
    given = imports.get("imports") or []
    names = [given] if isinstance(given, str) else list(given)
    if PLUGIN_IMPORT not in names:
        names.append(PLUGIN_IMPORT)
    cfg.custom_imports = dict(imports, imports=names, allow_failed_imports=False)
    return cfg


def adafuse_zoo_config(path: str | os.PathLike, **adafuse: Any) -> Any:
    """Load an mmaction2 config (``'mmaction::...'`` paths included) and turn it into an
    AdaFuse config with :func:`to_adafuse`."""
    from .runner import load_config

    return to_adafuse(load_config(path), **adafuse)
