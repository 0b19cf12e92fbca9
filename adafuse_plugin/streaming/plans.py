"""Streaming plans: how a residual block class maps onto first conv / second conv / tail.

A block adapter (`register_block_adapter(..., streaming=plan)`) carries the plan of its
class: a function from a block to a `StreamingPlan` naming the block's modules, which
`StreamingRunner` folds, prepacks and runs channel-sparsely. The plans of the built-in
classes are below; a plan refuses, by name, a block it cannot run exactly.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from torch import nn

from ..errors import AdaFuseStreamingError


@dataclasses.dataclass
class StreamingPlan:
    """A residual block as: act1(first(x)) -> [AdaFuse] -> act2(second) -> mid ->
    third (+ third_act) -> post -> (+ shortcut) -> out_act.

    ``first`` / ``second`` / ``third`` are plain ``nn.Conv2d`` (zero padding); each norm is
    an eval-mode ``BatchNorm2d`` or None; activations are parameter-free elementwise
    modules or None; ``mid`` and ``post`` run as they are; ``downsample`` is the shortcut
    (None: identity), ``residual=False`` for blocks without one.
    """

    first: nn.Conv2d
    first_norm: nn.Module | None
    first_act: nn.Module | None
    second: nn.Conv2d
    second_norm: nn.Module | None
    second_act: nn.Module | None = None
    mid: tuple[nn.Module, ...] = ()
    third: nn.Conv2d | None = None
    third_norm: nn.Module | None = None
    third_act: nn.Module | None = None
    post: tuple[nn.Module, ...] = ()
    residual: bool = True
    downsample: nn.Module | None = None
    out_act: nn.Module | None = None


def _norm_act(norm: Any) -> nn.Module | None:
    """The activation inside a timm BatchNormAct2d (None for a plain BatchNorm)."""
    return getattr(norm, "act", None)


def _present(*modules: nn.Module | None) -> tuple[nn.Module, ...]:
    return tuple(m for m in modules if m is not None and not isinstance(m, nn.Identity))


def _no_module(block: Any, attr: str) -> None:
    module = getattr(block, attr, None)
    if module is not None and not isinstance(module, nn.Identity):
        raise AdaFuseStreamingError(
            f"{type(block).__name__}.{attr} ({type(module).__name__}) sits between the first "
            "and second conv; streaming supports only blocks where it is absent"
        )


def _plain_norms(block: Any, *names: str) -> None:
    """ResNet plans fold these norms as plain BatchNorm: refuse norms with an activation."""
    for name in names:
        norm = getattr(block, name)
        if type(norm) is not nn.BatchNorm2d:
            raise AdaFuseStreamingError(
                f"{type(block).__name__}.{name} is a {type(norm).__name__}; streaming folds "
                "only plain BatchNorm2d in ResNet blocks"
            )


def timm_basic(block: Any) -> StreamingPlan:
    """timm's ResNet ``BasicBlock`` (SE / ECA attention after the second conv)."""
    _no_module(block, "aa")
    _plain_norms(block, "bn1", "bn2")
    return StreamingPlan(
        block.conv1,
        block.bn1,
        block.act1,
        block.conv2,
        block.bn2,
        post=_present(block.se),
        downsample=block.downsample,
        out_act=block.act2,
    )


def timm_bottleneck(block: Any) -> StreamingPlan:
    """timm's ResNet ``Bottleneck`` (anti-aliasing between the convs, attention after)."""
    _plain_norms(block, "bn1", "bn2", "bn3")
    return StreamingPlan(
        block.conv1,
        block.bn1,
        block.act1,
        block.conv2,
        block.bn2,
        block.act2,
        mid=_present(block.aa),
        third=block.conv3,
        third_norm=block.bn3,
        post=_present(block.se),
        downsample=block.downsample,
        out_act=block.act3,
    )


def torchvision_basic(block: Any) -> StreamingPlan:
    """torchvision's ResNet ``BasicBlock`` (one ReLU module, reused)."""
    _plain_norms(block, "bn1", "bn2")
    return StreamingPlan(
        block.conv1,
        block.bn1,
        block.relu,
        block.conv2,
        block.bn2,
        downsample=block.downsample,
        out_act=block.relu,
    )


def torchvision_bottleneck(block: Any) -> StreamingPlan:
    """torchvision's ResNet ``Bottleneck``."""
    _plain_norms(block, "bn1", "bn2", "bn3")
    return StreamingPlan(
        block.conv1,
        block.bn1,
        block.relu,
        block.conv2,
        block.bn2,
        block.relu,
        third=block.conv3,
        third_norm=block.bn3,
        downsample=block.downsample,
        out_act=block.relu,
    )


def timm_inverted_residual(block: Any) -> StreamingPlan:
    """timm's ``InvertedResidual`` (EfficientNet, MobileNetV2/V3): pw, dw, pwl."""
    _no_module(block, "conv_s2d")
    return StreamingPlan(
        block.conv_pw,
        block.bn1,
        _norm_act(block.bn1),
        block.conv_dw,
        block.bn2,
        _norm_act(block.bn2),
        mid=_present(block.aa, block.se),
        third=block.conv_pwl,
        third_norm=block.bn3,
        third_act=_norm_act(block.bn3),
        residual=block.has_skip,
    )


def _conv_module(block: Any, name: str) -> tuple[nn.Conv2d, nn.Module | None, nn.Module | None]:
    """(conv, norm, activation) of an mmcv ``ConvModule`` in the default conv-norm-act order."""
    module = getattr(block, name)
    conv = module.conv
    if not isinstance(conv, nn.Conv2d):  # ResNetTSM wraps conv1.conv in a TemporalShift
        raise AdaFuseStreamingError(
            f"{type(block).__name__}.{name}.conv is a {type(conv).__name__}, not a Conv2d: "
            "a temporal shift (TSM) reads the next frame, so it cannot run causally; "
            "stream TSN-style backbones (mmaction2 ResNet) instead"
        )
    if tuple(module.order) != ("conv", "norm", "act"):
        raise AdaFuseStreamingError(
            f"{type(block).__name__}.{name} has order {module.order}; streaming folds only "
            "conv-norm-act ConvModules"
        )
    norm = module.norm if module.with_norm else None
    if norm is not None and type(norm) is not nn.BatchNorm2d:
        raise AdaFuseStreamingError(
            f"{type(block).__name__}.{name} normalises with {type(norm).__name__}; streaming "
            "folds only plain BatchNorm2d"
        )
    return conv, norm, module.activate if module.with_activation else None


def mmaction_basic(block: Any) -> StreamingPlan:
    """mmaction2's ResNet ``BasicBlock`` (mmcv ConvModules; TSN-style, no shift)."""
    first, second = _conv_module(block, "conv1"), _conv_module(block, "conv2")
    return StreamingPlan(*first, *second, downsample=block.downsample, out_act=block.relu)


def mmaction_bottleneck(block: Any) -> StreamingPlan:
    """mmaction2's ResNet ``Bottleneck``."""
    first, second = _conv_module(block, "conv1"), _conv_module(block, "conv2")
    third, third_norm, third_act = _conv_module(block, "conv3")
    return StreamingPlan(
        *first,
        *second,
        third=third,
        third_norm=third_norm,
        third_act=third_act,
        downsample=block.downsample,
        out_act=block.relu,
    )
