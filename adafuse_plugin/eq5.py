"""The paper's Eq. 5, defined once: which channels of a block's two convs a frame needs.

- Channel i of the first conv must be computed at frame t iff it is kept at t or reused
  at t+1 (the last frame of a clip has no t+1; the released code's off-by-one is fixed).
- Input channel i of the second conv is zero at frame t iff it is skipped.

The functions take 0/1 masks (N, T, ...) as floats or integers: on hard decisions they
count, on straight-through masks they are differentiable (``a + b - a*b`` is OR on 0/1).
`audit_flops` (counts), `AdaFuseFlopsLoss` (expectations) and the streaming runner
(per frame, as frames arrive, on numpy masks) all evaluate these.
"""

from __future__ import annotations

from typing import TypeVar

import numpy as np
import torch

from .config import FlopsMode

Mask = TypeVar("Mask", torch.Tensor, np.ndarray, float, int)
Share = TypeVar("Share", torch.Tensor, float)


def either(a: Mask, b: Mask) -> Mask:
    """a OR b for 0/1 values, differentiable for masks in between."""
    return a + b - a * b


def next_frame(masks: torch.Tensor) -> torch.Tensor:
    """``masks`` of frame t+1 at frame t (dim 1 is time), zeros at each clip's last frame."""
    return torch.cat([masks[:, 1:], torch.zeros_like(masks[:, :1])], dim=1)


def first_conv_needed(keep: torch.Tensor, reuse: torch.Tensor) -> torch.Tensor:
    """(N, T, ...) 1 where the first conv must run: kept at t or reused at t+1."""
    return either(keep, next_frame(reuse))


def second_conv_needed(skip: torch.Tensor) -> torch.Tensor:
    """(N, T, ...) 1 where the second conv's input channel is not zero."""
    return 1 - skip


def block_flops(
    first_share: Share, second_share: Share, first_conv: float, second_conv: float, mode: FlopsMode
) -> Share:
    """FLOPs per frame of a block's two convs, given the shares of needed channels;
    ``upb`` (the paper's upper bound) counts the first conv dense."""
    second = second_conv * second_share
    return first_conv * first_share + second if mode == "real" else first_conv + second
