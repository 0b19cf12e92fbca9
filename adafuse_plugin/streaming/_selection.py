"""How a channel selection runs: the cache of packed selections, the execution modes and
the online timer that picks among them."""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Sequence
from typing import Literal, get_args

from ._conv import _Conv


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
#: gathered weight packed now, matrix products (`_Conv.gemm`), the compiled kernel
#: (`_Conv.direct`), the dense conv.
_PACKED, _PER_GROUP, _PACK_NOW = "packed", "per-group", "pack-now"
_GEMM, _DIRECT, _DENSE = "gemm", "direct", "dense"
#: ``dense_fallback`` values: choose by online timings / exactly Eq. 5 / always dense.
DenseFallback = Literal["timed", "never", "always"]
DENSE_FALLBACKS: tuple[str, ...] = get_args(DenseFallback)


@dataclasses.dataclass(frozen=True)
class _Tuning:
    """How a channel selection is executed (see `StreamingRunner`'s arguments)."""

    max_group_calls: int
    min_group_channels: int
    cache_size: int
    dense_fallback: DenseFallback
    gemm: bool
    bucket_channels: int
    direct: bool
    planar: bool


class _ModeTimer:
    """Online cost model of one conv: which way of running a selection that is not cached
    is fastest on this machine, right now.

    A dense run costs the same whatever is selected. A sparse mode's cost is not
    proportional to its selection: the kernels fill 16-channel vectors and every call
    has fixed costs (one channel can cost as much as sixteen), so its cost is estimated
    per size class, the selected channels rounded up to a power of two, as the time of a
    call of that class. Keeps the last few measured seconds per mode and class;
    an estimate is their minimum (other processes only ever add time, so a stalled run
    must not bar a mode). Each mode runs ``trials`` times per class before estimates
    are compared, its first run dropped (a first call of a new shape also creates
    oneDNN primitives); then every ``explore_every`` choices another mode runs instead
    (in turn, among those estimated at most ``explore_within`` times the best:
    re-timing a hopeless mode costs more than it can tell), so the estimates follow
    the machine.
    """

    def __init__(
        self,
        group_channels: int = 1,
        explore_every: int = 64,
        samples: int = 5,
        trials: int = 3,
        explore_within: float = 2.0,
    ) -> None:
        self._group_channels = group_channels
        self._explore_every, self._samples, self._trials = explore_every, samples, trials
        self._explore_within = explore_within
        self._times: dict[tuple[str, int], collections.deque[float]] = {}
        self._choices = 0

    def _key(self, mode: str, selected: int) -> tuple[str, int]:
        """(mode, size class of ``selected`` groups); dense runs have one class."""
        if mode == _DENSE:
            return mode, 0
        return mode, (selected * self._group_channels - 1).bit_length()

    def choose(self, modes: Sequence[str], selected: int) -> str:
        """The mode to run ``selected`` groups with: one untried in this size class first,
        else the one with the lowest estimate (now and then another one close to it)."""
        estimates = []
        for mode in modes:
            times = self._times.get(self._key(mode, selected))
            if times is None or len(times) < self._trials - 1:
                return mode
            estimates.append((min(times), mode))
        estimates.sort()
        self._choices += 1
        explorations, rest = divmod(self._choices, self._explore_every)
        best = estimates[0][0]
        others = [mode for cost, mode in estimates[1:] if cost <= self._explore_within * best]
        if rest or not others:
            return estimates[0][1]
        return others[(explorations - 1) % len(others)]

    def record(self, mode: str, selected: int, seconds: float) -> None:
        key = self._key(mode, selected)
        times = self._times.get(key)
        if times is None:  # the first run also paid for primitive creation: dropped
            self._times[key] = collections.deque(maxlen=self._samples)
        else:
            times.append(seconds)
