"""Causal streaming inference that executes only the channels AdaFuse needs.

`StreamingRunner` converts a trained, patched model (eval mode) into a runner that takes
one frame at a time and keeps, per AdaFuse block, the state causal execution needs:
the pooled input of the previous frame (policy input), the first-stage output of the
previous frame for the channel groups computed then, and the previous block input.

Per frame t and block, with decisions keep K, reuse R, skip S per channel group:

- the first conv (BatchNorm and activation folded in) runs only for the groups in K;
- groups in R come from y_{t-1}: from the cache when they were kept at t-1, otherwise
  they are computed now from the cached input x_{t-1} ("late" computation). So the first
  conv runs for group i at frame tau iff keep_tau(i) or reuse_{tau+1}(i): exactly Eq. 5;
- the second conv runs only over the non-skipped input groups K + R (at t = 0 the reused
  groups are the zero history, and still count as executed, as in Eq. 5);
- everything else (stem, shortcut, third conv, head) runs densely.

Per-frame logits equal those of the patched model run on the whole clip (float
tolerance), and `StreamingRunner.executed_flops` equals `audit_flops`'s Eq. 5 count for
the same decisions after every frame.

Speed (CPU, batch 1). Weights are folded and packed once into oneDNN's blocked layout, so
no conv re-packs its weight per call (eager ``F.conv2d`` does, which dominates small-map
layers). A channel selection is served by a packed weight cached for exactly that
selection when there is one (packed when the selection recurs, so a stable policy pays
packing once and per-frame random decisions almost never do); otherwise by one call per
channel group with weights packed per group (coarse granularity; outputs concatenated,
inputs accumulated in place by oneDNN's fused add), by packing the gathered weight now,
or by the dense conv with the unused channels discarded, whichever online timings say
is fastest for that conv (``dense_fallback="timed"``). Activations are channels_last
from the stem on. See docs/online-inference.md for measurements.
"""

from __future__ import annotations

import collections
import copy
import dataclasses
import time
from collections.abc import Callable, Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .adapters import qualified_name
from .config import LEARNED_POLICIES
from .errors import AdaFuseError
from .flops import FlopsReport, audit_flops
from .gate import FORBIDDEN_ACTIONS, KEEP, REUSE, AdaFuseGate, PolicyNet
from .surgery import find_blocks, iter_gates, unpatch_model

__all__ = [
    "AdaFuseStreamingError",
    "ExecutedFlops",
    "StreamingRunner",
    "StreamingStep",
    "supported_streaming_blocks",
]

#: Policies the runner executes; ``random`` is not reproducible frame by frame and
#: ``threshold`` needs every first-conv channel to decide, so neither can save first-conv work.
STREAMING_POLICIES = frozenset(LEARNED_POLICIES | {"keep"})

_CHANNELS_LAST = torch.channels_last


class AdaFuseStreamingError(AdaFuseError):
    """The model, a block, a policy or a frame cannot be run by `StreamingRunner`."""


# --------------------------------------------------------------------------------------
# Folded, prepacked convolutions
# --------------------------------------------------------------------------------------


def _mkldnn_available() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(
        torch.ops.mkldnn, "_convolution_pointwise"
    )


@dataclasses.dataclass(frozen=True)
class _Act:
    """An elementwise activation: a oneDNN post-op name when fusable, and the module."""

    attr: str = "none"
    scalars: tuple[float, ...] = ()
    module: nn.Module | None = None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.module is None else self.module(x)


_IDENTITY = _Act()


def _activation(module: nn.Module | None) -> _Act:
    """The `_Act` of an activation module; parametrised ones (PReLU) cannot be sliced."""
    if module is None or isinstance(module, nn.Identity):
        return _IDENTITY
    if any(True for _ in module.parameters()):
        raise AdaFuseStreamingError(
            f"activation {type(module).__name__} has parameters; only parameter-free "
            "elementwise activations can run on a subset of channels"
        )
    if type(module) is nn.ReLU:
        return _Act("relu", (), module)
    if type(module) in (nn.ReLU6, nn.Hardtanh):
        return _Act("hardtanh", (float(module.min_val), float(module.max_val)), module)
    for cls, attr in ((nn.SiLU, "swish"), (nn.Hardswish, "hardswish"), (nn.Sigmoid, "sigmoid")):
        if type(module) is cls:
            return _Act(attr, (), module)
    return _Act("", (), module)  # not fusable: applied after the conv


# Conv2d subclasses whose forward equals nn.Conv2d's on non-empty inputs.
_PLAIN_CONV_SUBCLASSES = frozenset({"mmcv.cnn.bricks.wrappers.Conv2d"})


def _plain_conv(conv: nn.Module) -> bool:
    """An nn.Conv2d (or a subclass known to compute the same) with static zero padding."""
    return (
        (type(conv) is nn.Conv2d or qualified_name(type(conv)) in _PLAIN_CONV_SUBCLASSES)
        and conv.padding_mode == "zeros"
        and not isinstance(conv.padding, str)
    )


def _fold(conv: nn.Module, norm: nn.Module | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Weight and bias of conv followed by an eval-mode BatchNorm, as one conv."""
    if not _plain_conv(conv):
        raise AdaFuseStreamingError(
            f"only plain nn.Conv2d with static zero padding can be folded, got "
            f"{type(conv).__name__}(padding={conv.padding!r})"
        )
    weight = conv.weight.detach()
    bias = conv.bias.detach() if conv.bias is not None else weight.new_zeros(weight.shape[0])
    if norm is None:
        return weight.contiguous(), bias.contiguous()
    if not isinstance(norm, nn.BatchNorm2d) or norm.running_var is None:
        raise AdaFuseStreamingError(
            f"only BatchNorm2d with running statistics can be folded, got {type(norm).__name__}"
        )
    scale = torch.rsqrt(norm.running_var.detach() + norm.eps)
    if norm.weight is not None:
        scale = scale * norm.weight.detach()
    shift = -norm.running_mean.detach() * scale
    if norm.bias is not None:
        shift = shift + norm.bias.detach()
    folded_weight = weight * scale.view(-1, 1, 1, 1)
    return folded_weight.contiguous(), (bias * scale + shift).contiguous()


class _Conv:
    """A convolution with BatchNorm folded in.

    On the ``mkldnn`` backend the weight is packed into oneDNN's layout once per input
    shape and bias, activation and a residual add run as fused post-ops.
    """

    def __init__(
        self,
        weight: torch.Tensor,
        bias: torch.Tensor,
        stride: Sequence[int],
        padding: Sequence[int],
        dilation: Sequence[int],
        groups: int,
        backend: str,
    ) -> None:
        self.weight, self.bias = weight, bias
        self.stride, self.padding, self.dilation = list(stride), list(padding), list(dilation)
        self.groups = groups
        self.backend = backend
        self._packed: dict[tuple[int, ...], torch.Tensor] = {}

    @classmethod
    def fold(cls, conv: nn.Conv2d, norm: nn.Module | None, backend: str) -> _Conv:
        weight, bias = _fold(conv, norm)
        return cls(weight, bias, conv.stride, conv.padding, conv.dilation, conv.groups, backend)

    @property
    def out_channels(self) -> int:
        return self.weight.shape[0]

    def _like(self, weight: torch.Tensor, bias: torch.Tensor, groups: int) -> _Conv:
        return _Conv(
            weight.contiguous(), bias.contiguous(), self.stride, self.padding,
            self.dilation, groups, self.backend,
        )  # fmt: skip

    def select_outputs(self, channels: torch.Tensor) -> _Conv:
        """This conv restricted to some output channels (a depthwise conv: to some channels)."""
        groups = len(channels) if self.groups > 1 else 1
        return self._like(self.weight[channels], self.bias[channels], groups)

    def select_inputs(self, channels: torch.Tensor) -> _Conv:
        """This conv restricted to some input channels (bias kept whole)."""
        return self._like(self.weight[:, channels], self.bias, 1)

    def output_shape(self, shape: torch.Size) -> tuple[int, int, int, int]:
        size = [
            (n + 2 * p - d * (k - 1) - 1) // s + 1
            for n, p, d, k, s in zip(
                shape[2:], self.padding, self.dilation, self.weight.shape[2:], self.stride
            )
        ]
        return shape[0], self.out_channels, size[0], size[1]

    def _weight_for(self, x: torch.Tensor) -> torch.Tensor:
        key = tuple(x.shape)
        packed = self._packed.get(key)
        if packed is None:
            packed = torch.ops.mkldnn._reorder_convolution_weight(
                self.weight, self.padding, self.stride, self.dilation, self.groups, list(key)
            )
            self._packed[key] = packed
        return packed

    def __call__(
        self, x: torch.Tensor, act: _Act = _IDENTITY, add: torch.Tensor | None = None
    ) -> torch.Tensor:
        """act(conv(x) + bias + add); ``add`` is left untouched."""
        b = self.bias
        if self.backend != "mkldnn":
            y = F.conv2d(x, self.weight, b, self.stride, self.padding, self.dilation, self.groups)
            return act(y + add if add is not None else y)
        weight = self._weight_for(x)
        args = (self.padding, self.stride, self.dilation, self.groups)
        if add is None:
            if act.attr:
                return torch.ops.mkldnn._convolution_pointwise(
                    x, weight, b, *args, act.attr, list(act.scalars), ""
                )
            return act(torch.ops.mkldnn._convolution_pointwise(x, weight, b, *args, "none", [], ""))
        unary = "relu" if act.attr == "relu" else None
        y = torch.ops.mkldnn._convolution_pointwise.binary(
            x, add, weight, b, *args, "add", None, unary, [], None
        )
        return y if unary or act.attr == "none" else act(y)

    def accumulate_(self, out: torch.Tensor, x: torch.Tensor, relu: bool = False) -> None:
        """out += conv(x) without bias, in place, then ReLU if asked."""
        if self.backend != "mkldnn":
            out += F.conv2d(x, self.weight, None, self.stride, self.padding, self.dilation)
            if relu:
                out.relu_()
            return
        torch.ops.mkldnn._convolution_pointwise_.binary(
            out, x, self._weight_for(x), None, self.padding, self.stride, self.dilation,
            self.groups, "add", None, "relu" if relu else None, [], None,
        )  # fmt: skip


class _SelectionCache:
    """Convs restricted to channel selections (LRU), and which selections recur.

    Packing a gathered weight costs as much as the conv it serves on small maps, so a
    selection is packed only when it was also asked for in the last few calls: a stable
    policy pays packing once, per-frame varying decisions (almost) never do.
    """

    def __init__(self, capacity: int, window: int = 4) -> None:
        self.capacity = capacity
        self._convs: collections.OrderedDict[bytes, _Conv] = collections.OrderedDict()
        self._recent: collections.deque[bytes] = collections.deque(maxlen=window)

    def get(self, key: bytes) -> _Conv | None:
        conv = self._convs.get(key)
        if conv is not None:
            self._convs.move_to_end(key)
        return conv

    def recurs(self, key: bytes) -> bool:
        """Record a request for ``key``; True if it was requested in the last calls."""
        recurring = key in self._recent
        self._recent.append(key)
        return recurring

    def put(self, key: bytes, conv: _Conv) -> _Conv:
        if self.capacity > 0:
            self._convs[key] = conv
            if len(self._convs) > self.capacity:
                self._convs.popitem(last=False)
        return conv


#: Ways to run a channel selection: its cached packed weight, one call per group, its
#: gathered weight packed now, the dense conv.
_PACKED, _PER_GROUP, _PACK_NOW, _DENSE = "packed", "per-group", "pack-now", "dense"
#: ``dense_fallback`` values: choose by online timings / exactly Eq. 5 / always dense.
DENSE_FALLBACKS = ("timed", "never", "always")


@dataclasses.dataclass(frozen=True)
class _Tuning:
    """How a channel selection is executed (see `StreamingRunner`'s arguments)."""

    max_group_calls: int
    min_group_channels: int
    cache_size: int
    dense_fallback: str


class _ModeTimer:
    """Online cost model of one conv: which way of running a selection that is not cached
    is fastest on this machine, right now.

    A dense run costs the same whatever is selected; the sparse modes cost about their
    number of selected groups times a per-group rate. Keeps the last few measured
    seconds (per group, for sparse modes) per mode; an estimate is their minimum (other
    processes only ever add time, so a stalled run must not bar a mode). Each mode runs
    ``trials`` times before estimates are compared, its first run dropped (a first call
    of a new shape also creates oneDNN primitives); then every ``explore_every``
    choices another mode runs instead (in turn, among those estimated at most
    ``explore_within`` times the best: re-timing a hopeless mode costs more than it can
    tell), so the estimates follow the machine.
    """

    def __init__(
        self,
        explore_every: int = 64,
        samples: int = 5,
        trials: int = 3,
        explore_within: float = 2.0,
    ) -> None:
        self._explore_every, self._samples, self._trials = explore_every, samples, trials
        self._explore_within = explore_within
        self._times: dict[str, collections.deque[float]] = {}
        self._choices = 0

    def choose(self, modes: Sequence[str], selected: int) -> str:
        """The mode to run ``selected`` groups with: an untried one first, else the one
        with the lowest estimate (now and then another one close to it)."""
        estimates = []
        for mode in modes:
            times = self._times.get(mode)
            if times is None or len(times) < self._trials - 1:
                return mode
            estimates.append((min(times) * (1 if mode == _DENSE else selected), mode))
        estimates.sort()
        self._choices += 1
        explorations, rest = divmod(self._choices, self._explore_every)
        best = estimates[0][0]
        others = [mode for cost, mode in estimates[1:] if cost <= self._explore_within * best]
        if rest or not others:
            return estimates[0][1]
        return others[(explorations - 1) % len(others)]

    def record(self, mode: str, selected: int, seconds: float) -> None:
        times = self._times.get(mode)
        if times is None:  # the first run also paid for primitive creation: dropped
            self._times[mode] = collections.deque(maxlen=self._samples)
        else:
            times.append(seconds if mode == _DENSE else seconds / selected)


def _channel_index(groups: np.ndarray, size: int, device: torch.device) -> torch.Tensor:
    """Channel indices of channel groups (``size`` channels each), in the groups' order,
    on ``device`` (index_select / index_copy_ need the index beside the data)."""
    index = (groups[:, None] * size + np.arange(size)[None, :]).reshape(-1)
    return torch.from_numpy(index).to(device, non_blocking=True)


@dataclasses.dataclass(frozen=True)
class _Part:
    """Channel groups ``wanted`` of the fused map, found in ``tensor``, whose channels are
    those of the sorted groups ``held`` (a superset: a dense first conv holds them all).
    ``zero`` marks the all-zero history of frame -1."""

    tensor: torch.Tensor
    held: np.ndarray
    wanted: np.ndarray
    zero: bool = False

    def take(self, size: int) -> torch.Tensor:
        """The wanted groups' channels, in order."""
        if len(self.wanted) == len(self.held):
            return self.tensor
        positions = np.searchsorted(self.held, self.wanted)
        return self.tensor.index_select(1, _channel_index(positions, size, self.tensor.device))

    def groups(self, size: int) -> list[tuple[int, torch.Tensor]]:
        """(group id, view of its channels) for every wanted group: no copy."""
        positions = np.searchsorted(self.held, self.wanted)
        return [(j, self.tensor.narrow(1, i * size, size)) for j, i in zip(self.wanted, positions)]


class _GroupedConv:
    """A conv whose output (first conv) or input (second conv) channels are selected per
    group of ``size`` channels.

    A selection runs with its cached packed weight when it has one, and is packed (and
    cached) when it recurs within a few calls. Any other selection runs one of three
    ways, picked by ``dense_fallback``: one call per group (weights packed per group
    once; coarse granularity only), its gathered weight packed now, or the dense conv
    with the unused channels discarded. ``"timed"`` picks the fastest by online timings
    (`_ModeTimer`), ``"never"`` never runs dense (exactly Eq. 5's channels), ``"always"``
    runs every partial selection densely. Both ``*_for`` methods return the number of
    channels actually executed with the result.
    """

    def __init__(self, conv: _Conv, size: int, outputs: bool, tuning: _Tuning) -> None:
        self.conv, self.size, self.outputs, self.tuning = conv, size, outputs, tuning
        self.channels = conv.weight.shape[0] if outputs else conv.weight.shape[1]
        self.groups = self.channels // size
        self._cache = _SelectionCache(tuning.cache_size)
        self._per_group_allowed = (
            size >= tuning.min_group_channels and self.groups > 1 and tuning.max_group_calls > 1
        )
        self._group_convs: list[_Conv] | None = None
        self._group_shapes: set[tuple[int, ...]] = set()
        timed = tuning.dense_fallback == "timed" and conv.weight.device.type == "cpu"
        self._timer = _ModeTimer() if timed else None
        self.mode_counts: collections.Counter[str] = collections.Counter()

    def _per_group(self, x: torch.Tensor) -> list[_Conv]:
        """One conv per channel group, built on first use, all packed for inputs shaped
        like ``x`` at once (so later timed runs do not pay for packing new groups)."""
        if self._group_convs is None:
            select = self.conv.select_outputs if self.outputs else self.conv.select_inputs
            self._group_convs = [
                select(torch.arange(j * self.size, (j + 1) * self.size)) for j in range(self.groups)
            ]
        if self.conv.backend == "mkldnn" and tuple(x.shape) not in self._group_shapes:
            self._group_shapes.add(tuple(x.shape))
            for conv in self._group_convs:
                conv._weight_for(x)
        return self._group_convs

    def _full(self, order: np.ndarray) -> bool:
        return len(order) == self.groups and bool((order == np.arange(self.groups)).all())

    def _plan(self, order: np.ndarray) -> tuple[str, _Conv | None]:
        """How to run this selection: (mode, the conv for ``_PACKED``)."""
        if self._full(order):
            return _PACKED, self.conv
        fallback = self.tuning.dense_fallback
        if fallback == "always":
            return _DENSE, None
        key = order.tobytes()
        conv = self._cache.get(key)
        if conv is not None:
            return _PACKED, conv
        if not self._cache.recurs(key):
            per_group = self._per_group_allowed and len(order) <= self.tuning.max_group_calls
            if self._timer is not None:
                modes = (_PER_GROUP, _PACK_NOW, _DENSE) if per_group else (_PACK_NOW, _DENSE)
                mode = self._timer.choose(modes, len(order))
                if mode != _PACK_NOW:
                    return mode, None
            elif per_group:
                return _PER_GROUP, None
        index = _channel_index(order, self.size, self.conv.weight.device)
        conv = self.conv.select_outputs(index) if self.outputs else self.conv.select_inputs(index)
        return _PACK_NOW, self._cache.put(key, conv)

    def _timed(self, mode: str, selected: int, start: float) -> None:
        """Count a run, and time it if the timer chooses between such runs (a packed
        selection from the cache is never slower than packing it again)."""
        self.mode_counts[mode] += 1
        if self._timer is not None and mode != _PACKED:
            self._timer.record(mode, selected, time.perf_counter() - start)

    def outputs_for(
        self, x: torch.Tensor, order: np.ndarray, act: _Act
    ) -> tuple[torch.Tensor, np.ndarray, int]:
        """act(conv(x)) for (at least) the sorted output groups ``order``: the output,
        the groups it holds in order (all of them after a dense run), and the number of
        channels executed."""
        start = time.perf_counter()
        mode, conv = self._plan(order)
        if mode in (_PACKED, _PACK_NOW):
            y, held = conv(x, act), order
        elif mode == _PER_GROUP:
            convs = self._per_group(x)
            y, held = torch.cat([convs[j](x, act) for j in order], dim=1), order
        else:
            y, held = self.conv(x, act), np.arange(self.groups)
        self._timed(mode, len(order), start)
        return y, held, len(held) * self.size

    def _mask(self, groups: np.ndarray, like: torch.Tensor) -> torch.Tensor:
        """(1, C, 1, 1): 1 on the channels of ``groups``, 0 elsewhere."""
        mask = like.new_zeros(1, self.channels, 1, 1)
        mask[:, _channel_index(groups, self.size, mask.device)] = 1.0
        return mask

    def _dense_input(self, parts: list[_Part]) -> torch.Tensor:
        """The full fused map: full first-conv outputs masked, partial ones scattered."""
        full = None
        for part in parts:
            if part.zero:
                continue
            if len(part.held) == self.groups:
                masked = part.tensor * self._mask(part.wanted, part.tensor)
                full = masked if full is None else full.add_(masked)
                continue
            if full is None:
                shape = (1, self.channels, *part.tensor.shape[2:])
                full = part.tensor.new_zeros(shape).contiguous(memory_format=_CHANNELS_LAST)
            full.index_copy_(
                1, _channel_index(part.wanted, self.size, full.device), part.take(self.size)
            )
        if full is None:  # only the zero history
            shape = (1, self.channels, *parts[0].tensor.shape[2:])
            full = parts[0].tensor.new_zeros(shape).contiguous(memory_format=_CHANNELS_LAST)
        return full

    def inputs_for(
        self, parts: list[_Part], out_shape: tuple[int, ...], act: _Act, add: torch.Tensor | None
    ) -> tuple[torch.Tensor, int]:
        """act(conv(x~) + add), x~ being the fused map, zero outside the groups of
        ``parts``; also returns the number of input channels executed."""
        order = np.concatenate([p.wanted for p in parts]) if parts else np.empty(0, np.int64)
        if not len(order):
            y = self.conv.bias.view(1, -1, 1, 1).expand(out_shape)
            # clone, never contiguous(): on a 1x1 map that returns the bias itself, which
            # an in-place activation would then overwrite.
            y = y + add if add is not None else y.clone(memory_format=_CHANNELS_LAST)
            return act(y), 0
        start = time.perf_counter()
        mode, conv = self._plan(order)
        if mode == _DENSE:
            out, executed = self.conv(self._dense_input(parts), act, add), self.channels
        elif mode == _PER_GROUP:
            out, executed = self._per_group_inputs(parts, act, add), len(order) * self.size
        else:
            taken = [p.take(self.size) for p in parts]
            x = taken[0] if len(taken) == 1 else torch.cat(taken, dim=1)
            out, executed = conv(x, act, add), len(order) * self.size
        self._timed(mode, len(order), start)
        return out, executed

    def _per_group_inputs(
        self, parts: list[_Part], act: _Act, add: torch.Tensor | None
    ) -> torch.Tensor:
        """act(sum over groups of conv_j(x_j) + add), accumulated in place."""
        calls = [(j, x) for p in parts for j, x in p.groups(self.size)]
        convs = self._per_group(calls[0][1])
        calls = [(convs[j], x) for j, x in calls]
        group_conv, x = calls[0]
        if len(calls) == 1:
            return group_conv(x, act, add)
        out = group_conv(x, _IDENTITY, add)
        fuse_relu = act.attr == "relu"
        for index, (group_conv, x) in enumerate(calls[1:], start=2):
            group_conv.accumulate_(out, x, relu=fuse_relu and index == len(calls))
        return out if fuse_relu else act(out)


class _DepthwiseGroupedConv:
    """A depthwise second conv (inverted residuals) over the non-skipped channel groups;
    a skipped channel's output is the constant act(bias), as in the patched model."""

    def __init__(self, conv: _Conv, size: int, act: _Act, tuning: _Tuning) -> None:
        self.conv, self.size, self.act = conv, size, act
        self.groups = conv.out_channels // size
        self._cache = _SelectionCache(tuning.cache_size)
        self._constant = act(conv.bias.clone()).view(1, -1, 1, 1)
        self.mode_counts: collections.Counter[str] = collections.Counter()

    def inputs_for(
        self, parts: list[_Part], out_shape: tuple[int, ...]
    ) -> tuple[torch.Tensor, int]:
        """act(conv(x~)) for all channels (x~ as in `_GroupedConv.inputs_for`) and the
        number of channels executed."""
        order = np.concatenate([p.wanted for p in parts]) if parts else np.empty(0, np.int64)
        executed = len(order) * self.size
        taken = [p.take(self.size) for p in parts]
        if len(order) == self.groups and bool((order == np.arange(self.groups)).all()):
            self.mode_counts[_PACKED] += 1
            return self.conv(taken[0], self.act), executed
        out = self._constant.expand(out_shape).clone(memory_format=_CHANNELS_LAST)
        if len(order):
            key = order.tobytes()
            index = _channel_index(order, self.size, out.device)
            conv = self._cache.get(key)
            self.mode_counts[_PACK_NOW if conv is None else _PACKED] += 1
            if conv is None:
                conv = self._cache.put(key, self.conv.select_outputs(index))
            x = taken[0] if len(taken) == 1 else torch.cat(taken, dim=1)
            out.index_copy_(1, index, conv(x, self.act))
        return out, executed


class _FoldedPolicy:
    """A `PolicyNet` in eval mode with its BatchNorm1d folded into fc1: 4 ops per frame."""

    def __init__(self, net: PolicyNet) -> None:
        norm = net.norm
        scale = torch.rsqrt(norm.running_var + norm.eps) * norm.weight
        self.w1 = (net.fc1.weight * scale[:, None]).detach().contiguous()
        self.b1 = ((net.fc1.bias - norm.running_mean) * scale + norm.bias).detach()
        self.w2, self.b2 = net.fc2.weight.detach(), net.fc2.bias.detach()

    def __call__(self, pooled_prev: torch.Tensor, pooled: torch.Tensor) -> torch.Tensor:
        hidden = F.linear(torch.cat([pooled_prev, pooled], dim=1), self.w1, self.b1).relu_()
        return F.linear(hidden, self.w2, self.b2)


# --------------------------------------------------------------------------------------
# Block plans: how each supported block class maps onto first / second / tail
# --------------------------------------------------------------------------------------


@dataclasses.dataclass
class _Plan:
    """A residual block as: act1(first(x)) -> [AdaFuse] -> act2(second) -> mid ->
    third (+ third_act) -> post -> (+ shortcut) -> out_act."""

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


def _norm_act(norm: nn.Module) -> nn.Module | None:
    """The activation inside a timm BatchNormAct2d (None for a plain BatchNorm)."""
    return getattr(norm, "act", None)


def _present(*modules: nn.Module | None) -> tuple[nn.Module, ...]:
    return tuple(m for m in modules if m is not None and not isinstance(m, nn.Identity))


def _no_module(block: nn.Module, attr: str) -> None:
    module = getattr(block, attr, None)
    if module is not None and not isinstance(module, nn.Identity):
        raise AdaFuseStreamingError(
            f"{type(block).__name__}.{attr} ({type(module).__name__}) sits between the first "
            "and second conv; streaming supports only blocks where it is absent"
        )


def _plain_norms(block: nn.Module, *names: str) -> None:
    """ResNet plans fold these norms as plain BatchNorm: refuse norms with an activation."""
    for name in names:
        norm = getattr(block, name)
        if type(norm) is not nn.BatchNorm2d:
            raise AdaFuseStreamingError(
                f"{type(block).__name__}.{name} is a {type(norm).__name__}; streaming folds "
                "only plain BatchNorm2d in ResNet blocks"
            )


def _plan_timm_basic(block: nn.Module) -> _Plan:
    _no_module(block, "aa")
    _plain_norms(block, "bn1", "bn2")
    return _Plan(
        block.conv1, block.bn1, block.act1, block.conv2, block.bn2,
        post=_present(block.se), downsample=block.downsample, out_act=block.act2,
    )  # fmt: skip


def _plan_timm_bottleneck(block: nn.Module) -> _Plan:
    _plain_norms(block, "bn1", "bn2", "bn3")
    return _Plan(
        block.conv1, block.bn1, block.act1, block.conv2, block.bn2, block.act2,
        mid=_present(block.aa), third=block.conv3, third_norm=block.bn3,
        post=_present(block.se), downsample=block.downsample, out_act=block.act3,
    )  # fmt: skip


def _plan_torchvision_basic(block: nn.Module) -> _Plan:
    _plain_norms(block, "bn1", "bn2")
    return _Plan(
        block.conv1, block.bn1, block.relu, block.conv2, block.bn2,
        downsample=block.downsample, out_act=block.relu,
    )  # fmt: skip


def _plan_torchvision_bottleneck(block: nn.Module) -> _Plan:
    _plain_norms(block, "bn1", "bn2", "bn3")
    return _Plan(
        block.conv1, block.bn1, block.relu, block.conv2, block.bn2, block.relu,
        third=block.conv3, third_norm=block.bn3, downsample=block.downsample,
        out_act=block.relu,
    )  # fmt: skip


def _plan_timm_inverted_residual(block: nn.Module) -> _Plan:
    _no_module(block, "conv_s2d")
    return _Plan(
        block.conv_pw, block.bn1, _norm_act(block.bn1), block.conv_dw, block.bn2,
        _norm_act(block.bn2), mid=_present(block.aa, block.se), third=block.conv_pwl,
        third_norm=block.bn3, third_act=_norm_act(block.bn3), residual=block.has_skip,
    )  # fmt: skip


def _conv_module(
    block: nn.Module, name: str
) -> tuple[nn.Conv2d, nn.Module | None, nn.Module | None]:
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


def _plan_mmaction_basic(block: nn.Module) -> _Plan:
    first, second = _conv_module(block, "conv1"), _conv_module(block, "conv2")
    return _Plan(*first, *second, downsample=block.downsample, out_act=block.relu)


def _plan_mmaction_bottleneck(block: nn.Module) -> _Plan:
    first, second = _conv_module(block, "conv1"), _conv_module(block, "conv2")
    third, third_norm, third_act = _conv_module(block, "conv3")
    return _Plan(
        *first, *second, third=third, third_norm=third_norm, third_act=third_act,
        downsample=block.downsample, out_act=block.relu,
    )  # fmt: skip


_PLANS: dict[str, Callable[[nn.Module], _Plan]] = {
    "timm.models.resnet.BasicBlock": _plan_timm_basic,
    "timm.models.resnet.Bottleneck": _plan_timm_bottleneck,
    "torchvision.models.resnet.BasicBlock": _plan_torchvision_basic,
    "torchvision.models.resnet.Bottleneck": _plan_torchvision_bottleneck,
    "timm.models._efficientnet_blocks.InvertedResidual": _plan_timm_inverted_residual,
    "mmaction.models.backbones.resnet.BasicBlock": _plan_mmaction_basic,
    "mmaction.models.backbones.resnet.Bottleneck": _plan_mmaction_bottleneck,
}


def supported_streaming_blocks() -> list[str]:
    """Qualified names of the block classes `StreamingRunner` can execute sparsely."""
    return sorted(_PLANS)


def _plan_for(block: nn.Module) -> Callable[[nn.Module], _Plan] | None:
    for cls in type(block).__mro__:
        plan = _PLANS.get(qualified_name(cls))
        if plan is not None:
            return plan
    return None


def _is_conv_norm_module(module: nn.Module) -> bool:
    """An mmcv ``ConvModule`` that is exactly conv then norm."""
    return (
        tuple(getattr(module, "order", ())) == ("conv", "norm", "act")
        and getattr(module, "with_norm", False)
        and not getattr(module, "with_activation", True)
    )


def _shortcut(downsample: nn.Module | None, backend: str) -> Callable[[torch.Tensor], torch.Tensor]:
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
            return conv(x.contiguous(memory_format=_CHANNELS_LAST))

        return folded
    return downsample


# --------------------------------------------------------------------------------------
# The streaming block
# --------------------------------------------------------------------------------------


@dataclasses.dataclass(slots=True)
class _BlockState:
    """A block's memory of the previous frame, and what the current frame executed."""

    keep_mask: np.ndarray  # (groups,) kept at t-1 (for Eq. 5 counting)
    held_mask: np.ndarray  # (groups,) present in ``y`` (kept, or all after a dense conv)
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
        plan: _Plan,
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
        self.depthwise = second.groups > 1
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
        x = x.contiguous(memory_format=_CHANNELS_LAST)
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
                zeros = x.new_zeros(shape).contiguous(memory_format=_CHANNELS_LAST)
                parts.append(_Part(zeros, reuse, reuse, zero=True))
            else:
                in_cache = state.held_mask[reuse]
                cached, late = reuse[in_cache], reuse[~in_cache]
                if len(cached):
                    parts.append(_Part(state.y, state.held, cached))
                if len(late):
                    y_late, held_late, executed = self.first.outputs_for(
                        state.input, late, self.first_act
                    )
                    parts.append(_Part(y_late, held_late, late))
                    first_executed += executed
        out, second_executed = self._finish(x, parts)
        state.actions = actions
        state.channels = (first_executed, second_executed)
        # Eq. 5: reused groups not kept at t-1 count for the first conv, however computed.
        first_eq5 = len(keep)
        if state.started:
            first_eq5 += len(reuse) - int(state.keep_mask[reuse].sum())
        state.eq5_channels = (first_eq5 * self.size, (len(keep) + len(reuse)) * self.size)
        state.keep_mask, state.y, state.held = keep_mask, y, held
        state.held_mask = keep_mask if held is keep else np.ones(self.groups, bool)
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
        if self.third is None and fuse_add:
            return self.second.inputs_for(parts, out_shape, self.out_act, shortcut)
        if self.depthwise:
            z, executed = self.second.inputs_for(parts, out_shape)
        else:
            z, executed = self.second.inputs_for(parts, out_shape, self.second_act, None)
        if self.third is not None:
            for module in self.mid:
                z = module(z)
            z = z.contiguous(memory_format=_CHANNELS_LAST)
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
        return self.conv(x.contiguous(memory_format=_CHANNELS_LAST), self.act)


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


def _folded_conv_module(module: nn.Module, backend: str) -> _PackedConv2d | None:
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


# --------------------------------------------------------------------------------------
# The runner
# --------------------------------------------------------------------------------------


@dataclasses.dataclass
class StreamingStep:
    """What `StreamingRunner.step` returns for one frame.

    Attributes:
        index: frame index t (0 for the first frame after a reset).
        logits: (num_classes,) logits of this frame.
        prediction: (num_classes,) running clip prediction: mean of the logits of
            frames 0..t (the model's consensus).
        flops: multiply-adds executed for this step, policy included (groups reused at t
            and computed late from frame t-1 count here; see `ExecutedFlops`).
    """

    index: int
    logits: torch.Tensor
    prediction: torch.Tensor
    flops: float


@dataclasses.dataclass
class ExecutedFlops:
    """Multiply-adds since the last reset, in fvcore's convention.

    Attributes:
        frames: frames streamed.
        eq5: the paper's Eq. 5 count of the decisions taken; equals `audit_flops`'s
            ``FlopsReport.adaptive`` for the same frames.
        total: what the runner executed: ``eq5`` plus the channels a dense fallback
            computed and discarded (equal to ``eq5`` with ``dense_fallback="never"``).
        dense: the dense model's cost of the same frames.
        policy: the policy networks' share (included in ``eq5`` and ``total``).
        first_conv, second_conv: per block, executed first- / second-conv FLOPs.
    """

    frames: int = 0
    eq5: float = 0.0
    total: float = 0.0
    dense: float = 0.0
    policy: float = 0.0
    first_conv: dict[str, float] = dataclasses.field(default_factory=dict)
    second_conv: dict[str, float] = dataclasses.field(default_factory=dict)

    @property
    def saving(self) -> float:
        """Share of the dense FLOPs not executed."""
        return 1.0 - self.total / self.dense if self.dense else 0.0


@dataclasses.dataclass(frozen=True)
class _FlopsTable:
    """Per-frame FLOPs at one resolution, from `audit_flops` on the reference model."""

    dense: float
    policy: float
    fixed: float
    first: dict[str, float]
    second: dict[str, float]


class StreamingRunner:
    """Run a patched model causally, one frame at a time, executing only needed channels.

    ::

        runner = StreamingRunner(model)          # patched, trained, model.eval()
        for frame in frames:                     # (3, H, W) or (1, 3, H, W)
            out = runner.step(frame)             # out.logits, out.prediction, out.flops
        runner.executed_flops.eq5                # == audit_flops(...).adaptive
        runner.reset()                           # before the next video

    Args:
        model: a model patched by `patch_model` with a learned policy (``adafuse``,
            ``keep_skip``, ``keep_reuse``) or ``keep``, in eval mode. It is copied; the
            original is not modified.
        backend: ``"mkldnn"`` (folded weights prepacked for oneDNN, CPU float32),
            ``"eager"`` (folded weights, ``F.conv2d``; any device) or ``"auto"``
            (mkldnn when available for the model's device and dtype).
        record_decisions: keep every frame's decisions for `decisions` /
            `flops_report` (memory grows with the stream; meant for audits and tests).
        max_group_calls: largest number of channel groups a selection may be run with
            one call per group (weights packed per group) instead of packing its gathered
            weight; 0 or 1 disables per-group calls.
        min_group_channels: per-group calls only for granularity >= this.
        cache_size: packed selections kept per conv (LRU); a selection is packed when it
            recurs within a few calls (a stable policy).
        dense_fallback: how a selection that is not cached runs. ``"timed"`` (default,
            CPU): per conv, the fastest of one call per group, packing the gathered
            weight now, and the dense conv with the unused channels discarded, from
            timings taken while streaming (the first frames try each way), so a conv whose
            selections cannot pay for themselves runs densely; on other devices as
            ``"never"``. ``"never"``: exactly Eq. 5's channels (per group or packed).
            ``"always"``: every partial selection runs densely (a reference).
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        backend: str = "auto",
        record_decisions: bool = False,
        max_group_calls: int = 8,
        min_group_channels: int = 16,
        cache_size: int = 8,
        dense_fallback: str = "timed",
    ) -> None:
        if dense_fallback not in DENSE_FALLBACKS:
            raise AdaFuseStreamingError(
                f"dense_fallback must be one of {DENSE_FALLBACKS}, got {dense_fallback!r}"
            )
        gates = dict(iter_gates(model))
        if not gates:
            raise AdaFuseStreamingError(
                "StreamingRunner needs a model patched by patch_model; this one has no AdaFuse gate"
            )
        if any(module.training for module in model.modules()):
            raise AdaFuseStreamingError(
                "StreamingRunner runs inference only: call model.eval() first (training "
                "mode samples Gumbel noise and uses batch statistics)"
            )
        for name, gate in gates.items():
            if gate.config.policy not in STREAMING_POLICIES:
                raise AdaFuseStreamingError(
                    f"block {name!r} uses policy {gate.config.policy!r}; streaming supports "
                    f"{sorted(STREAMING_POLICIES)}"
                )
            if gate.config.policy_shift_div is not None:
                raise AdaFuseStreamingError(
                    f"block {name!r} pools a TSM-shifted input (policy_shift_div): the shift "
                    "reads the next frame, so it cannot run causally"
                )
            if gate.config.eval_decisions != "argmax":
                raise AdaFuseStreamingError(
                    f"block {name!r} samples its decisions (eval_decisions="
                    f"{gate.config.eval_decisions!r}); streaming decides by argmax: call "
                    "set_eval_decisions(model, 'argmax') first"
                )
        weight = next(model.parameters())
        self.device, self.dtype = weight.device, weight.dtype
        self.backend = self._backend(backend)
        self.record_decisions = record_decisions
        self._reference = copy.deepcopy(model)
        self._model = copy.deepcopy(model)
        tuning = _Tuning(max_group_calls, min_group_channels, cache_size, dense_fallback)
        self._blocks = self._convert(self._model, tuning)
        _pack_dense_parts(self._model, self.backend)
        self._flops_tables: dict[tuple[int, ...], _FlopsTable] = {}
        self.reset()

    # -- construction --------------------------------------------------------------
    def _backend(self, backend: str) -> str:
        if backend not in ("auto", "mkldnn", "eager"):
            raise AdaFuseStreamingError(
                f"backend must be 'auto', 'mkldnn' or 'eager', got {backend!r}"
            )
        usable = _mkldnn_available() and self.device.type == "cpu" and self.dtype == torch.float32
        if backend == "mkldnn" and not usable:
            raise AdaFuseStreamingError(
                "backend='mkldnn' needs a float32 model on the CPU and a torch build with "
                "oneDNN; use backend='eager'"
            )
        if backend == "auto":
            return "mkldnn" if usable else "eager"
        return backend

    def _convert(self, model: nn.Module, tuning: _Tuning) -> dict[str, _StreamingBlock]:
        """Replace every supported block of the copy by a `_StreamingBlock`.

        The copy is unpatched first (its gates' hooks would fire on reused modules); the
        gates are kept for their policy networks and configs.
        """
        gates = dict(iter_gates(model))
        unpatch_model(model)
        blocks: dict[str, _StreamingBlock] = {}
        for site in find_blocks(model):
            gate = gates.get(site.name)
            plan = _plan_for(site.block)
            if plan is None:
                if gate is not None:
                    raise AdaFuseStreamingError(
                        f"block {site.name!r} ({qualified_name(type(site.block))}) is patched "
                        "but has no streaming implementation; supported: "
                        f"{supported_streaming_blocks()}. Exclude it when patching "
                        "(AdaFuseConfig(exclude=...)) to run it densely."
                    )
                continue
            streaming = _StreamingBlock(site.name, plan(site.block), gate, self.backend, tuning)
            parent_name, _, child = site.name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, child, streaming)
            if gate is not None:
                blocks[site.name] = streaming
        return blocks

    # -- state ---------------------------------------------------------------------
    def reset(self) -> None:
        """Start a new video: forget every cached frame and zero the counters."""
        for module in self._model.modules():
            if isinstance(module, _StreamingBlock):
                module.reset()
        self.frames_seen = 0
        self._frame_shape: tuple[int, ...] | None = None
        self._logit_sum: torch.Tensor | None = None
        self._history: dict[str, list[np.ndarray]] = {name: [] for name in self._blocks}
        self.executed_flops = ExecutedFlops(
            first_conv=dict.fromkeys(self._blocks, 0.0),
            second_conv=dict.fromkeys(self._blocks, 0.0),
        )

    @property
    def block_names(self) -> list[str]:
        """Names of the AdaFuse blocks, in model order."""
        return list(self._blocks)

    # -- stepping ------------------------------------------------------------------
    def _frame(self, frame: torch.Tensor) -> torch.Tensor:
        if not isinstance(frame, torch.Tensor) or frame.dim() not in (3, 4):
            shape = tuple(frame.shape) if isinstance(frame, torch.Tensor) else type(frame)
            raise AdaFuseStreamingError(
                f"a frame must be a (C, H, W) or (1, C, H, W) tensor, got {shape}"
            )
        if frame.dim() == 4 and frame.shape[0] != 1:
            raise AdaFuseStreamingError(
                f"the runner takes one frame at a time (batch 1), got a batch of "
                f"{frame.shape[0]}; call step() per frame"
            )
        frame = frame.reshape(1, *frame.shape[-3:]).to(self.device, self.dtype)
        # channels_last from the stem on: oneDNN's native layout, and CPU pooling kernels
        # are vectorised over channels in it (max_pool2d on NCHW took ~25% of a step).
        frame = frame.contiguous(memory_format=_CHANNELS_LAST)
        size = tuple(frame.shape[1:])
        if self._frame_shape is not None and size != self._frame_shape:
            raise AdaFuseStreamingError(
                f"frame size changed from {self._frame_shape} to {size} mid-stream; "
                "call reset() before streaming a video of another size"
            )
        self._frame_shape = size
        return frame

    def _table(self, frame: torch.Tensor) -> _FlopsTable:
        """Per-frame FLOPs at this resolution (computed once per resolution)."""
        key = tuple(frame.shape)
        table = self._flops_tables.get(key)
        if table is None:
            report = audit_flops(self._reference, input_shape=tuple(frame.shape), progress=False)
            first = {b.name: b.first_conv for b in report.blocks}
            second = {b.name: b.second_conv for b in report.blocks}
            fixed = report.dense - sum(first.values()) - sum(second.values()) + report.policy
            table = _FlopsTable(report.dense, report.policy, fixed, first, second)
            self._flops_tables[key] = table
        return table

    @torch.inference_mode()
    def step(self, frame: torch.Tensor) -> StreamingStep:
        """Process the next frame of the current video."""
        frame = self._frame(frame)
        table = self._table(frame)
        logits = self._model(frame)
        if not isinstance(logits, torch.Tensor) or logits.dim() != 2 or logits.shape[0] != 1:
            raise AdaFuseStreamingError(
                "the model must return a (1, num_classes) logits tensor per frame, got "
                f"{type(logits).__name__}"
            )
        logits = logits[0]
        self._logit_sum = logits.clone() if self._logit_sum is None else self._logit_sum + logits
        flops = eq5 = table.fixed
        counters = self.executed_flops
        for name, block in self._blocks.items():
            first, second = block.state.channels
            first_flops = table.first[name] * first / block.channels
            second_flops = table.second[name] * second / block.channels
            counters.first_conv[name] += first_flops
            counters.second_conv[name] += second_flops
            flops += first_flops + second_flops
            first, second = block.state.eq5_channels
            eq5 += (table.first[name] * first + table.second[name] * second) / block.channels
            if self.record_decisions:
                self._history[name].append(block.state.actions.astype(np.int8))
        counters.frames += 1
        counters.total += flops
        counters.eq5 += eq5
        counters.dense += table.dense
        counters.policy += table.policy
        index = self.frames_seen
        self.frames_seen += 1
        return StreamingStep(index, logits, self._logit_sum / self.frames_seen, flops)

    def run(self, frames: Iterable[torch.Tensor]) -> torch.Tensor:
        """Stream frames (an iterable, or a (T, C, H, W) tensor) from the current state;
        returns their (T, num_classes) per-frame logits."""
        return torch.stack([self.step(frame).logits for frame in frames])

    # -- audits --------------------------------------------------------------------
    def execution_modes(self) -> dict[str, int]:
        """How many first / second conv runs (of partial or full selections) took each
        way since the runner was built: ``packed`` (a weight packed for the selection,
        cached or full), ``per-group``, ``pack-now``, ``dense``."""
        counts: collections.Counter[str] = collections.Counter()
        for block in self._blocks.values():
            for conv in (block.first, block.second):
                counts.update(conv.mode_counts)
        return dict(counts)

    def decisions(self) -> dict[str, torch.Tensor]:
        """{block: (1, T, c') long} decisions of the frames since reset, in the layout of
        `collect_decisions` (needs ``record_decisions=True``)."""
        if not self.record_decisions:
            raise AdaFuseStreamingError("create the runner with record_decisions=True")
        if not self.frames_seen:
            raise AdaFuseStreamingError("no frame streamed yet")
        return {
            name: torch.from_numpy(np.stack(rows))
            .long()
            .repeat_interleave(block.size, dim=-1)
            .unsqueeze(0)
            for (name, rows), block in zip(self._history.items(), self._blocks.values())
        }

    def flops_report(self) -> FlopsReport:
        """`audit_flops` of the frames streamed since reset, from the recorded decisions."""
        decisions = self.decisions()
        shape = (self.frames_seen, *self._frame_shape)
        return audit_flops(self._reference, input_shape=shape, decisions=decisions, progress=False)
