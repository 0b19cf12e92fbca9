"""Stream a trained mmaction2 TSN-style recognizer frame by frame (`StreamingRunner`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import AdaFuseConfigError
from ..streaming import StreamingRunner
from .audit import build_model
from .runner import load_config_dump


class FrameClassifier(nn.Module):
    """A TSN recognizer seen one frame at a time: backbone, average pool, the head's linear
    classifier. ``TSNHead`` averages pooled features over the clip before that (linear)
    classifier, so the mean of these per-frame logits is the recognizer's clip logit."""

    def __init__(self, recognizer: nn.Module) -> None:
        super().__init__()
        head = recognizer.cls_head
        if type(head).__name__ != "TSNHead" or getattr(head, "spatial_type", "avg") != "avg":
            raise AdaFuseConfigError(
                f"only TSNHead with spatial_type='avg' can be streamed per frame, got "
                f"{type(head).__name__}; TSM heads and backbones read future frames"
            )
        self.backbone, self.fc = recognizer.backbone, head.fc_cls

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
