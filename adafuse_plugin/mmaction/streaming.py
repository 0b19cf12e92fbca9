"""Stream a trained mmaction2 TSN-style recognizer frame by frame (`StreamingRunner`)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import AdaFuseConfigError
from ..streaming import StreamingRunner
from .audit import build_model
from .runner import load_config_dump

#: Pipeline steps that pack frames into model inputs (the preprocessor's job in a stream).
_PACKING = ("FormatShape", "PackActionInputs")


class FrameClassifier(nn.Module):
    """A TSN recognizer seen one frame at a time: backbone, average pool, the head's linear
    classifier. ``TSNHead`` averages pooled features over the clip before that (linear)
    classifier, so the mean of these per-frame logits is the recognizer's clip logit."""

    def __init__(self, recognizer: nn.Module) -> None:
        super().__init__()
        head: Any = recognizer.cls_head
        if type(head).__name__ != "TSNHead" or getattr(head, "spatial_type", "avg") != "avg":
            raise AdaFuseConfigError(
                f"only TSNHead with spatial_type='avg' can be streamed per frame, got "
                f"{type(head).__name__}; TSM heads and backbones read future frames"
            )
        self.backbone: nn.Module = recognizer.get_submodule("backbone")
        self.fc: nn.Module = head.fc_cls

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.backbone(x).mean((2, 3)))


def load_work_dir(work_dir: str | Path, allow_unsafe: bool = False) -> tuple[nn.Module, Any]:
    """(recognizer in eval mode, config) of an mmengine work folder: its config dump (parsed,
    never executed) and its last ``epoch_*.pth`` (weights only), unless ``allow_unsafe``."""
    work_dir = Path(work_dir)
    configs = sorted(work_dir.glob("*.py"))
    checkpoints = sorted(work_dir.glob("epoch_*.pth"), key=lambda p: int(p.stem.split("_")[1]))
    if len(configs) != 1 or not checkpoints:
        raise AdaFuseConfigError(
            f"{work_dir}: expected one config dump (*.py) and epoch_*.pth checkpoints, found "
            f"{[p.name for p in configs]} and {[p.name for p in checkpoints]}"
        )
    cfg = load_config_dump(configs[0], allow_unsafe=allow_unsafe)
    return build_model(cfg, str(checkpoints[-1]), allow_unsafe=allow_unsafe), cfg


def streaming_runner(recognizer: nn.Module, **options: Any) -> StreamingRunner:
    """A `StreamingRunner` over a patched TSN recognizer (options: the runner's)."""
    return StreamingRunner(FrameClassifier(recognizer).eval(), **options)


def frame_transform(cfg: Any) -> Callable[[np.ndarray], torch.Tensor]:
    """BGR frames as ``cv2.VideoCapture`` reads them (a webcam, a stream) -> the normalised
    (3, H, W) frames the recognizer saw in testing: the config's own test pipeline after
    its decode step (resize, crop...), then its data preprocessor's mean and std."""
    import cv2
    from mmcv.transforms import Compose
    from mmengine.registry import init_default_scope

    init_default_scope(cfg.get("default_scope", "mmaction"))
    pipeline = list(cfg.get("test_pipeline") or cfg.test_dataloader.dataset.pipeline)
    decoded = max(i for i, step in enumerate(pipeline) if step["type"].endswith("Decode"))
    spatial = [s for s in pipeline[decoded + 1 :] if s["type"] not in _PACKING]
    views = [s["type"] for s in spatial if s["type"] in ("ThreeCrop", "TenCrop")]
    if views:
        raise AdaFuseConfigError(
            f"the test pipeline makes {views[0]} views; a stream has one view per frame: "
            "use a pipeline with CenterCrop"
        )
    transforms = Compose(spatial)
    preprocessor = cfg.model.data_preprocessor
    if preprocessor.get("to_rgb") or preprocessor.get("mean") is None:
        raise AdaFuseConfigError(
            "frame_transform needs a data_preprocessor with mean and std and to_rgb=False "
            "(the pipeline decodes RGB, as decord does)"
        )
    mean = torch.tensor(preprocessor.mean, dtype=torch.float32).view(3, 1, 1)
    std = torch.tensor(preprocessor.std, dtype=torch.float32).view(3, 1, 1)

    def transform(bgr: np.ndarray) -> torch.Tensor:
        rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        shape = rgb.shape[:2]
        results = transforms(dict(imgs=[rgb], img_shape=shape, original_shape=shape))
        frame = torch.from_numpy(np.ascontiguousarray(results["imgs"][0])).permute(2, 0, 1)
        return (frame.float() - mean) / std

    return transform
