"""The streaming block (one residual block run causally, frame by frame, channel-sparsely)
and the folded, prepacked convs outside the blocks."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .. import eq5
from ..adapters import qualified_name
from ..errors import AdaFuseStreamingError
from ..gate import FORBIDDEN_ACTIONS, KEEP, REUSE, AdaFuseGate, PolicyNet
from ._conv import _IDENTITY, CHANNELS_LAST, _Act, _activation, _Conv, _plain_conv
from ._grouped import _DepthwiseGroupedConv, _GroupedConv, _Part
from ._selection import _Tuning
from .plans import StreamingPlan, _norm_act


class _FoldedPolicy:
    """A `PolicyNet` in eval mode with its BatchNorm1d folded into fc1: 4 ops per frame."""

    def __init__(self, net: PolicyNet) -> None:
        norm = net.norm
        mean, var = norm.running_mean, norm.running_var
        if mean is None or var is None:
            raise AdaFuseStreamingError("a policy BatchNorm1d without running statistics")
        scale = torch.rsqrt(var + norm.eps) * norm.weight
        self.w1 = (net.fc1.weight * scale[:, None]).detach().contiguous()
        self.b1 = ((net.fc1.bias - mean) * scale + norm.bias).detach()
        self.w2, self.b2 = net.fc2.weight.detach(), net.fc2.bias.detach()

    def __call__(self, pooled_prev: torch.Tensor, pooled: torch.Tensor) -> torch.Tensor:
        hidden = F.linear(torch.cat([pooled_prev, pooled], dim=1), self.w1, self.b1).relu_()
        return F.linear(hidden, self.w2, self.b2)


def _is_conv_norm_module(module: Any) -> bool:
    """An mmcv ``ConvModule`` that is exactly conv then norm."""
    return (
        tuple(getattr(module, "order", ())) == ("conv", "norm", "act")
        and getattr(module, "with_norm", False)
        and not getattr(module, "with_activation", True)
    )


def _shortcut(downsample: Any, backend: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """The shortcut path; a trailing (Conv2d, BatchNorm2d) pair is folded and prepacked."""
    if downsample is None or isinstance(downsample, nn.Identity):
        return lambda x: x
    layers = list(downsample) if isinstance(downsample, nn.Sequential) else [downsample]
    if _is_conv_norm_module(downsample):  # mmcv ConvModule without activation (mmaction2)
        layers = [downsample.conv, downsample.norm]
    if (
        len(layers) >= 2
        and _plain_conv(layers[-2])
        and type(layers[-1]) is nn.BatchNorm2d
        and all(isinstance(m, (nn.AvgPool2d, nn.Identity)) for m in layers[:-2])
    ):
        conv = _Conv.fold(layers[-2], layers[-1], backend)
        prefix = layers[:-2]

        def folded(x: torch.Tensor) -> torch.Tensor:
            for module in prefix:
                x = module(x)
            return conv(x.contiguous(memory_format=CHANNELS_LAST))

        return folded
    return downsample


@dataclasses.dataclass(slots=True)
class _BlockState:
    """A block's memory of the previous frame, and what the current frame executed."""

    keep_mask: np.ndarray  # (groups,) kept at t-1 (for Eq. 5 counting)
    held_mask: np.ndarray  # (groups,) present in ``y`` (kept, a rounded-up superset, or all)
    held: np.ndarray | None = None  # sorted group ids of y's channels
    y: torch.Tensor | None = None  # first-stage output of t-1 for the held groups
    input: torch.Tensor | None = None  # block input of t-1 (for late computation)
    pooled: torch.Tensor | None = None  # GAP of the block input of t-1 (policy input)
    started: bool = False
    actions: np.ndarray | None = None  # this frame's decisions per group
    channels: tuple[int, int] = (0, 0)  # executed first / second conv channels
    eq5_channels: tuple[int, int] = (0, 0)  # the same, counted by Eq. 5


class _StreamingBlock(nn.Module):
    """Replaces one residual block inside the runner's copy of the model.

    Holds the folded convs, the gate's policy (none for unpatched blocks and the ``keep``
    policy: every group kept) and the causal state of the previous frame.
    """

    def __init__(
        self,
        name: str,
        plan: StreamingPlan,
        gate: AdaFuseGate | None,
        backend: str,
        tuning: _Tuning,
    ) -> None:
        super().__init__()
        self.name = name
        net = gate.policy_net if gate is not None else None
        # A plain PolicyNet is folded; any other policy module (a subclass) runs as is.
        self.policy = _FoldedPolicy(net) if type(net) is PolicyNet else net
        granularity = gate.config.granularity if gate is not None else plan.first.out_channels
        self.size = granularity
        forbidden = FORBIDDEN_ACTIONS.get(gate.config.policy, ()) if gate is not None else ()
        self._forbidden = list(forbidden)
        self.may_reuse = self.policy is not None and REUSE not in forbidden
        first = _Conv.fold(plan.first, plan.first_norm, backend)
        second = _Conv.fold(plan.second, plan.second_norm, backend)
        self.channels = first.out_channels
        self.groups = self.channels // granularity
        self.first_act = _activation(plan.first_act)
        self.first = _GroupedConv(first, granularity, outputs=True, tuning=tuning)
        self.second_act = _activation(plan.second_act)
        self.second: _GroupedConv | _DepthwiseGroupedConv
        if second.groups == 1:
            self.second = _GroupedConv(second, granularity, outputs=False, tuning=tuning)
        elif second.groups == second.out_channels == self.channels:
            self.second = _DepthwiseGroupedConv(second, granularity, self.second_act, tuning)
        else:
            raise AdaFuseStreamingError(
                f"block {name!r}: a grouped second conv (groups={second.groups}) is not "
                "supported; only dense or depthwise second convs"
            )
        self.second_conv = second
        self.mid = nn.ModuleList(plan.mid)
        self.third = _Conv.fold(plan.third, plan.third_norm, backend) if plan.third else None
        self.third_act = _activation(plan.third_act)
        self.post = nn.ModuleList(plan.post)
        self.residual = plan.residual
        self.shortcut = _shortcut(plan.downsample, backend)
        self.out_act = _activation(plan.out_act)
        self._all_keep = np.full(self.groups, KEEP, np.int64)
        self._shapes: dict[torch.Size, tuple[int, ...]] = {}
        self._second_shapes: dict[torch.Size, tuple[int, ...]] = {}
        self.reset()

    def reset(self) -> None:
        """Forget the previous frame."""
        # A plain object: nn.Module.__setattr__ would cost ~10 us per per-frame write.
        self.state = _BlockState(np.zeros(self.groups, bool), np.zeros(self.groups, bool))

    def _actions(self, x: torch.Tensor) -> np.ndarray:
        """Per-group decisions for this frame: 0 keep / 1 reuse / 2 skip."""
        if self.policy is None:
            return self._all_keep
        state = self.state
        pooled = x.mean(dim=(2, 3))
        prev = state.pooled if state.pooled is not None else torch.zeros_like(pooled)
        state.pooled = pooled
        logits = self.policy(prev, pooled).view(self.groups, 3)
        if self._forbidden:
            logits[:, self._forbidden] = float("-inf")
        return logits.argmax(dim=-1).cpu().numpy()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.contiguous(memory_format=CHANNELS_LAST)
        state = self.state
        actions = self._actions(x)
        keep_mask = actions == KEEP
        keep = np.flatnonzero(keep_mask)
        reuse = np.flatnonzero(actions == REUSE)
        parts: list[_Part] = []
        y, held, first_executed = None, keep, 0
        if len(keep):
            y, held, first_executed = self.first.outputs_for(x, keep, self.first_act)
            parts.append(_Part(y, held, keep))
        late = reuse[:0]
        if len(reuse):
            if not state.started:  # y_{-1} = 0: the reused history is zeros
                shape = list(self._first_shape(x))
                shape[1] = len(reuse) * self.size
                zeros = x.new_zeros(shape).contiguous(memory_format=CHANNELS_LAST)
                parts.append(_Part(zeros, reuse, reuse, zero=True))
            else:
                in_cache = state.held_mask[reuse]
                cached, late = reuse[in_cache], reuse[~in_cache]
                if len(cached):  # held groups: frame t-1's first-stage output has them
                    assert state.y is not None and state.held is not None
                    parts.append(_Part(state.y, state.held, cached))
                if len(late):  # after frame 0 the state holds frame t-1's input
                    assert state.input is not None
                    y_late, held_late, executed = self.first.outputs_for(
                        state.input, late, self.first_act
                    )
                    parts.append(_Part(y_late, held_late, late))
                    first_executed += executed
        out, second_executed = self._finish(x, parts)
        state.actions = actions
        state.channels = (first_executed, second_executed)
        # Eq. 5 as frames arrive: frame t-1 needs its first conv where kept at t-1 or reused
        # at t (eq5.either); kept groups were charged at t-1, so of the groups reused now
        # only those not kept then are charged now (no full-width arrays on this hot path).
        first_eq5 = len(keep)
        if state.started and len(reuse):
            kept_then = state.keep_mask[reuse].astype(np.int64)
            needed = eq5.either(kept_then, np.ones_like(kept_then))
            first_eq5 += int((needed - kept_then).sum())
        state.eq5_channels = (first_eq5 * self.size, (len(keep) + len(reuse)) * self.size)
        state.keep_mask, state.y, state.held = keep_mask, y, held
        if held is keep:
            state.held_mask = keep_mask
        else:
            state.held_mask = np.zeros(self.groups, bool)
            state.held_mask[held] = True
        state.input = x if self.may_reuse else None
        state.started = True
        return out

    def _first_shape(self, x: torch.Tensor) -> tuple[int, ...]:
        """Output shape of the first conv for input x (memoised per input shape)."""
        shape = self._shapes.get(x.shape)
        if shape is None:
            shape = self._shapes[x.shape] = self.first.conv.output_shape(x.shape)
        return shape

    def _finish(self, x: torch.Tensor, parts: list[_Part]) -> tuple[torch.Tensor, int]:
        """Second conv over the fused map, then the rest of the block, densely; returns the
        block output and the second conv's executed input channels."""
        shortcut = self.shortcut(x) if self.residual else None
        last_act = self.third_act if self.third is not None else self.second_act
        fuse_add = not self.post and last_act is _IDENTITY and self.out_act.attr in ("relu", "none")
        out_shape = self._second_shapes.get(x.shape)
        if out_shape is None:
            out_shape = self.second_conv.output_shape(self._first_shape(x))
            self._second_shapes[x.shape] = out_shape
        second = self.second
        if isinstance(second, _DepthwiseGroupedConv):
            z, executed = second.inputs_for(parts, out_shape)
        elif self.third is None and fuse_add:
            return second.inputs_for(parts, out_shape, self.out_act, shortcut)
        else:
            z, executed = second.inputs_for(parts, out_shape, self.second_act, None)
        if self.third is not None:
            for module in self.mid:
                z = module(z)
            z = z.contiguous(memory_format=CHANNELS_LAST)
            if fuse_add:
                return self.third(z, self.out_act, shortcut), executed
            z = self.third(z, self.third_act)
        for module in self.post:
            z = module(z)
        if shortcut is not None:
            z = z + shortcut
        return self.out_act(z), executed


class _PackedConv2d(nn.Module):
    """Stands in for an nn.Conv2d outside the blocks (with the BatchNorm that follows it
    and that norm's activation folded in, where known)."""

    def __init__(self, conv: _Conv, act: _Act = _IDENTITY) -> None:
        super().__init__()
        self.conv, self.act = conv, act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x.contiguous(memory_format=CHANNELS_LAST), self.act)


def _batch_norm_act_class() -> type | None:
    try:
        from timm.layers import BatchNormAct2d
    except ImportError:
        return None
    return BatchNormAct2d


#: timm's BatchNorm + activation (its activation is fused into the folded conv).
_BATCH_NORM_ACT = _batch_norm_act_class()

#: (conv, norm) attribute pairs run one after the other by a model class's forward.
_STEM_PAIRS: dict[str, tuple[tuple[str, str], ...]] = {
    "timm.models.resnet.ResNet": (("conv1", "bn1"),),
    "torchvision.models.resnet.ResNet": (("conv1", "bn1"),),
    "timm.models.efficientnet.EfficientNet": (("conv_stem", "bn1"), ("conv_head", "bn2")),
}


def _folded_conv_module(module: Any, backend: str) -> _PackedConv2d | None:
    """An mmcv ``ConvModule`` (conv-norm-act order, plain conv, BatchNorm2d or no norm,
    parameter-free activation) as one folded, prepacked conv; None for anything else."""
    if tuple(getattr(module, "order", ())) != ("conv", "norm", "act"):
        return None
    if getattr(module, "with_explicit_padding", False):
        return None
    norm = module.norm if module.with_norm else None
    act = module.activate if module.with_activation else None
    if not _plain_conv(module.conv) or (norm is not None and type(norm) is not nn.BatchNorm2d):
        return None
    if act is not None and any(True for _ in act.parameters()):
        return None
    return _PackedConv2d(_Conv.fold(module.conv, norm, backend), _activation(act))


def _pack_dense_parts(model: nn.Module, backend: str) -> None:
    """Fold and prepack the convs outside the converted blocks, in place.

    A BatchNorm is folded only where order is certain: right after its conv inside an
    nn.Sequential, in the known stem / head pairs of `_STEM_PAIRS`, or inside an mmcv
    ``ConvModule`` (mmaction2's stems). Every other plain nn.Conv2d is only prepacked.
    """
    replacements: list[tuple[nn.Module, str, nn.Module]] = []
    folded: set[int] = set()
    for parent in model.modules():
        for name, child in parent.named_children():
            packed = _folded_conv_module(child, backend)
            if packed is not None:
                replacements.append((parent, name, packed))
                folded.update(id(m) for m in child.modules())
    for parent in model.modules():
        if id(parent) in folded:
            continue
        pairs = list(_STEM_PAIRS.get(qualified_name(type(parent)), ()))
        if isinstance(parent, nn.Sequential):
            names = [name for name, _ in parent.named_children()]
            pairs += list(zip(names, names[1:]))
        for conv_name, norm_name in pairs:
            conv, norm = getattr(parent, conv_name, None), getattr(parent, norm_name, None)
            if not _plain_conv(conv) or type(norm) not in (nn.BatchNorm2d, _BATCH_NORM_ACT):
                continue
            act = _norm_act(norm)
            fused = _activation(act) if act is not None else _IDENTITY
            packed = _PackedConv2d(_Conv.fold(conv, norm, backend), fused)
            replacements += [(parent, conv_name, packed), (parent, norm_name, nn.Identity())]
            folded.update((id(conv), id(norm)))
    for parent in model.modules():
        for name, child in parent.named_children():
            if _plain_conv(child) and id(child) not in folded:
                replacements.append((parent, name, _PackedConv2d(_Conv.fold(child, None, backend))))
    for parent, name, module in replacements:
        setattr(parent, name, module)
