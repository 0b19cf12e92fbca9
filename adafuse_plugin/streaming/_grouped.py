"""Convs whose output (first conv) or input (second conv) channels run per channel group."""

from __future__ import annotations

import collections
import dataclasses
import time

import numpy as np
import torch

from . import _direct
from ._conv import _IDENTITY, CHANNELS_LAST, _Act, _Conv
from ._selection import (
    _DENSE,
    _DIRECT,
    _GEMM,
    _PACK_NOW,
    _PACKED,
    _PER_GROUP,
    _ModeTimer,
    _SelectionCache,
    _Tuning,
)


def _channel_index(groups: np.ndarray, size: int, device: torch.device) -> torch.Tensor:
    """Channel indices of channel groups (``size`` channels each), in the groups' order,
    on ``device`` (index_select / index_copy_ need the index beside the data)."""
    index = groups if size == 1 else (groups[:, None] * size + np.arange(size)).reshape(-1)
    tensor = torch.from_numpy(np.ascontiguousarray(index, dtype=np.int64))
    return tensor if device.type == "cpu" else tensor.to(device, non_blocking=True)


@dataclasses.dataclass(frozen=True)
class _Part:
    """Channel groups ``wanted`` of the fused map, found in ``tensor``, whose channels are
    those of the sorted groups ``held`` (a superset: a dense first conv holds them all).
    ``zero`` marks the all-zero history of frame -1."""

    tensor: torch.Tensor
    held: np.ndarray
    wanted: np.ndarray
    zero: bool = False

    def positions(self, size: int) -> torch.Tensor | None:
        """Where the wanted groups' channels lie in ``tensor`` (None: all of it, in order)."""
        if len(self.wanted) == len(self.held):
            return None
        positions = np.searchsorted(self.held, self.wanted)
        return _channel_index(positions, size, self.tensor.device)

    def take(self, size: int) -> torch.Tensor:
        """The wanted groups' channels, in order."""
        index = self.positions(size)
        if index is None:
            return self.tensor
        # On the NHWC view: twice as fast as index_select(1) on channels-last data.
        return self.tensor.permute(0, 2, 3, 1).index_select(3, index).permute(0, 3, 1, 2)

    def groups(self, size: int) -> list[tuple[int, torch.Tensor]]:
        """(group id, view of its channels) for every wanted group: no copy."""
        positions = np.searchsorted(self.held, self.wanted)
        return [(j, self.tensor.narrow(1, i * size, size)) for j, i in zip(self.wanted, positions)]


@dataclasses.dataclass(frozen=True)
class _Run:
    """How one selection runs: the mode, the conv of the packed modes, the groups that
    conv computes (outputs; a superset when its count was rounded up) and the zero input
    channels appended to it (inputs, for the same reason)."""

    mode: str
    conv: _Conv | None = None
    groups: np.ndarray | None = None
    zero_channels: int = 0


class _GroupedConv:
    """A conv whose output (first conv) or input (second conv) channels are selected per
    group of ``size`` channels.

    A selection runs with its cached packed weight when it has one, and is packed (and
    cached) when it recurs within a few calls. Any other selection runs one of five
    ways: one call per group (weights packed per group once; coarse granularity only),
    its gathered weight packed now (with ``dense_fallback="timed"``, its channel count
    rounded up to a multiple of ``bucket_channels`` so that oneDNN's primitive cache
    hits), matrix products (`_Conv.gemm`: no primitive, no reorder), the compiled kernel
    (`_Conv.direct`: weight rows read in place), or the dense conv
    with the unused channels discarded (``"timed"`` only). On CPU the fastest allowed
    way is picked per conv from online timings (`_ModeTimer`); ``"never"`` executes
    exactly Eq. 5's channels, ``"always"`` runs every partial selection densely. Both
    ``*_for`` methods return the number of channels actually executed with the result.
    """

    def __init__(self, conv: _Conv, size: int, outputs: bool, tuning: _Tuning) -> None:
        self.conv, self.size, self.outputs, self.tuning = conv, size, outputs, tuning
        self.channels = conv.weight.shape[0] if outputs else conv.weight.shape[1]
        self.groups = self.channels // size
        self._cache = _SelectionCache(tuning.cache_size)
        self._per_group_allowed = (
            size >= tuning.min_group_channels and self.groups > 1 and tuning.max_group_calls > 1
        )
        on_cpu = conv.weight.device.type == "cpu"
        self._gemm_allowed = tuning.gemm and on_cpu and conv.gemm_supported
        self._direct_allowed = tuning.direct and conv.direct_supported and _direct.available()
        bucket = tuning.bucket_channels
        self._bucket_groups = (
            bucket // size
            if tuning.dense_fallback == "timed" and bucket > size and bucket % size == 0
            else 1
        )
        self._group_convs: list[_Conv] | None = None
        self._group_shapes: set[tuple[int, ...]] = set()
        timed = tuning.dense_fallback != "always" and on_cpu
        self._timer = _ModeTimer(size) if timed else None
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

    def _modes(self, selected: int) -> tuple[str, ...]:
        """The ways a selection of ``selected`` groups that is not cached may run."""
        modes = [_PACK_NOW]
        if self._per_group_allowed and selected <= self.tuning.max_group_calls:
            modes.append(_PER_GROUP)
        if self._gemm_allowed:
            modes.append(_GEMM)
        if self._direct_allowed:
            modes.append(_DIRECT)
        if self.tuning.dense_fallback == "timed":
            modes.append(_DENSE)
        return tuple(modes)

    def _bucketed(self, order: np.ndarray) -> tuple[np.ndarray, int]:
        """``order`` with its group count rounded up to a multiple of the bucket: the
        groups to compute (outputs: other groups added) and the zero input channels to
        append (inputs: other channels are zero in the fused map, so zeros stand in)."""
        target = min(-(-len(order) // self._bucket_groups) * self._bucket_groups, self.groups)
        extra = target - len(order)
        if not extra:
            return order, 0
        if not self.outputs:
            return order, extra * self.size
        unused = np.setdiff1d(np.arange(self.groups), order, assume_unique=True)
        return np.union1d(order, unused[:extra]), 0

    def _plan(self, order: np.ndarray) -> _Run:
        """How to run this selection."""
        if self._full(order):
            return _Run(_PACKED, self.conv, order)
        if self.tuning.dense_fallback == "always":
            return _Run(_DENSE)
        key = order.tobytes()
        conv = self._cache.get(key)
        if conv is not None:
            return _Run(_PACKED, conv, order)
        if not self._cache.recurs(key):
            modes = self._modes(len(order))
            if self._timer is not None:
                mode = self._timer.choose(modes, len(order))
            else:
                mode = _PER_GROUP if _PER_GROUP in modes else _PACK_NOW
            if mode != _PACK_NOW:
                return _Run(mode)
            if self._bucket_groups > 1:  # packed for this call only: not cached
                groups, zeros = self._bucketed(order)
                return _Run(_PACK_NOW, self._select(groups, zeros), groups, zeros)
        return _Run(_PACK_NOW, self._cache.put(key, self._select(order)), order)

    def _select(self, order: np.ndarray, zero_channels: int = 0) -> _Conv:
        index = _channel_index(order, self.size, self.conv.weight.device)
        if self.outputs:
            return self.conv.select_outputs(index)
        return self.conv.select_inputs(index, zero_channels)

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
        run = self._plan(order)
        if run.conv is not None:
            assert run.groups is not None  # set with the conv
            y, held = run.conv(x, act), run.groups
        elif run.mode == _PER_GROUP:
            convs = self._per_group(x)
            y, held = torch.cat([convs[j](x, act) for j in order], dim=1), order
        elif run.mode == _GEMM:
            index = _channel_index(order, self.size, x.device)
            y, held = self.conv.gemm(x, act, outputs=index), order
        elif run.mode == _DIRECT:
            index = _channel_index(order, self.size, x.device)
            y = self.conv.direct([(x, None)], act, outputs=index, planar=self.tuning.planar)
            held = order
        else:
            y, held = self.conv(x, act), np.arange(self.groups)
        self._timed(run.mode, len(order), start)
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
                full = part.tensor.new_zeros(shape).contiguous(memory_format=CHANNELS_LAST)
            full.index_copy_(
                1, _channel_index(part.wanted, self.size, full.device), part.take(self.size)
            )
        if full is None:  # only the zero history
            shape = (1, self.channels, *parts[0].tensor.shape[2:])
            full = parts[0].tensor.new_zeros(shape).contiguous(memory_format=CHANNELS_LAST)
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
            y = y + add if add is not None else y.clone(memory_format=CHANNELS_LAST)
            return act(y), 0
        start = time.perf_counter()
        run = self._plan(order)
        executed = len(order) * self.size
        if run.mode == _DENSE:
            out, executed = self.conv(self._dense_input(parts), act, add), self.channels
        elif run.mode == _PER_GROUP:
            out = self._per_group_inputs(parts, act, add)
        elif run.mode == _DIRECT:  # the parts' channels gathered straight into the grid
            index = _channel_index(order, self.size, parts[0].tensor.device)
            sources = [(p.tensor, p.positions(self.size)) for p in parts]
            out = self.conv.direct(sources, act, add, inputs=index)
        else:
            taken = [p.take(self.size) for p in parts]
            if run.conv is None:  # _GEMM: the parts are copied side by side once, padded
                index = _channel_index(order, self.size, taken[0].device)
                out = self.conv.gemm(taken, act, add, inputs=index)
            else:
                if run.zero_channels:
                    shape = (1, run.zero_channels, *taken[0].shape[2:])
                    taken.append(taken[0].new_zeros(shape))
                x = taken[0] if len(taken) == 1 else torch.cat(taken, dim=1)
                out, executed = run.conv(x, act, add), executed + run.zero_channels
        self._timed(run.mode, len(order), start)
        return out, executed

    def _per_group_inputs(
        self, parts: list[_Part], act: _Act, add: torch.Tensor | None
    ) -> torch.Tensor:
        """act(sum over groups of conv_j(x_j) + add), accumulated in place."""
        groups = [(j, x) for p in parts for j, x in p.groups(self.size)]
        convs = self._per_group(groups[0][1])
        calls = [(convs[j], x) for j, x in groups]
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
        out = self._constant.expand(out_shape).clone(memory_format=CHANNELS_LAST)
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
