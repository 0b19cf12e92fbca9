"""The private oneDNN calls of the streaming runner, fenced into one module.

``torch.ops.mkldnn`` is PyTorch's internal interface to oneDNN (what its Inductor CPU
backend calls), not a public API: if a release renames or changes it, this module is the
only place to adapt, and `available` turns the fast path off instead of breaking.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def available() -> bool:
    """True when this torch build has oneDNN and the pointwise-fused convolution ops."""
    return torch.backends.mkldnn.is_available() and hasattr(
        torch.ops.mkldnn, "_convolution_pointwise"
    )


def reorder_weight(
    weight: torch.Tensor,
    padding: list[int],
    stride: list[int],
    dilation: list[int],
    groups: int,
    input_shape: Sequence[int],
) -> torch.Tensor:
    """``weight`` packed into oneDNN's blocked layout for inputs of ``input_shape``."""
    return torch.ops.mkldnn._reorder_convolution_weight(
        weight, padding, stride, dilation, groups, list(input_shape)
    )


def conv(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    args: tuple[list[int], list[int], list[int], int],
    attr: str = "none",
    scalars: Sequence[float] = (),
) -> torch.Tensor:
    """attr(conv(x) + bias) with a packed weight; ``args`` = (padding, stride, dilation,
    groups); ``attr`` a oneDNN post-op name ("none", "relu", "hardtanh", "swish"...)."""
    return torch.ops.mkldnn._convolution_pointwise(x, weight, bias, *args, attr, list(scalars), "")


def conv_add(
    x: torch.Tensor,
    other: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    args: tuple[list[int], list[int], list[int], int],
    relu: bool,
) -> torch.Tensor:
    """conv(x) + bias + other, then ReLU if asked; ``other`` is left untouched."""
    unary = "relu" if relu else None
    return torch.ops.mkldnn._convolution_pointwise.binary(
        x, other, weight, bias, *args, "add", None, unary, [], None
    )


def conv_accumulate_(
    out: torch.Tensor,
    x: torch.Tensor,
    weight: torch.Tensor,
    args: tuple[list[int], list[int], list[int], int],
    relu: bool,
) -> None:
    """out += conv(x) (no bias), in place, then ReLU if asked."""
    torch.ops.mkldnn._convolution_pointwise_.binary(
        out, x, weight, None, *args, "add", None, "relu" if relu else None, [], None
    )
