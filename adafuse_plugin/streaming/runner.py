"""`StreamingRunner`: a patched model run one frame at a time, executing only the channels
AdaFuse needs, with its executed FLOPs counted (Eq. 5)."""

from __future__ import annotations

import collections
import copy
import dataclasses
from collections.abc import Iterable
from typing import Literal

import numpy as np
import torch
from torch import nn

from ..adapters import qualified_name, streaming_block_classes
from ..config import LEARNED_POLICIES
from ..errors import AdaFuseStreamingError
from ..flops import FlopsReport, audit_flops
from ..surgery import find_blocks, iter_gates, unpatch_model
from . import _onednn
from ._block import _pack_dense_parts, _StreamingBlock
from ._conv import CHANNELS_LAST
from ._selection import DENSE_FALLBACKS, DenseFallback, _Tuning

#: Policies the runner executes; ``random`` is not reproducible frame by frame and
#: ``threshold`` needs every first-conv channel to decide, so neither can save first-conv work.
STREAMING_POLICIES = frozenset(LEARNED_POLICIES | {"keep"})


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
        total: what the runner executed: ``eq5`` plus the channels a dense fallback or a
            rounded-up channel count computed and discarded (equal to ``eq5`` with
            ``dense_fallback="never"``).
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
            weight now (its channel count rounded up, see ``bucket_channels``), matrix
            products on weights laid out once (``gemm``) and the dense conv with the
            unused channels discarded, from timings taken while streaming (the first
            frames try each way), so a conv whose selections cannot pay for themselves
            runs densely; on other devices as ``"never"``. ``"never"``: exactly Eq. 5's
            channels (per group, packed, or matrix products; on CPU the fastest by the
            same timings). ``"always"``: every partial selection runs densely (a
            reference).
        gemm: allow the matrix-product path (CPU): a channel subset is a gather of
            contiguous weight rows and one MKL product per kernel tap, so no oneDNN
            primitive is created and no weight reordered per selection.
        bucket_channels: with ``"timed"``, a selection packed for one call executes its
            channel count rounded up to a multiple of this (extra output channels are
            computed and discarded, extra inputs are zeros), so the few counts that occur
            reuse oneDNN's cached primitives; 1 turns it off.
        direct: allow the compiled direct conv (CPU, float32): weights laid out once in
            blocks of 64 output channels, an input-channel subset read in place, an
            output-channel subset packed per call. Built for this machine on first use
            (``adafuse_plugin.streaming.kernel_status()``); without a C++ compiler the
            runner goes on without it.
        planar: with ``direct``, run up to 16 output channels of a stride-1 conv on the
            compiled planar kernel (an output row's pixels as vector lanes), which costs
            the selected channels only where the direct kernel fills 16-channel vectors.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        backend: Literal["auto", "mkldnn", "eager"] = "auto",
        record_decisions: bool = False,
        max_group_calls: int = 8,
        min_group_channels: int = 16,
        cache_size: int = 8,
        dense_fallback: DenseFallback = "timed",
        gemm: bool = True,
        bucket_channels: int = 16,
        direct: bool = True,
        planar: bool = True,
    ) -> None:
        if dense_fallback not in DENSE_FALLBACKS:
            raise AdaFuseStreamingError(
                f"dense_fallback must be one of {DENSE_FALLBACKS}, got {dense_fallback!r}"
            )
        if bucket_channels < 1:
            raise AdaFuseStreamingError(
                f"bucket_channels must be >= 1 (1: no rounding), got {bucket_channels}"
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
        tuning = _Tuning(
            max_group_calls,
            min_group_channels,
            cache_size,
            dense_fallback,
            gemm,
            bucket_channels,
            direct,
            planar,
        )
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
        usable = _onednn.available() and self.device.type == "cpu" and self.dtype == torch.float32
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
            plan = site.adapter.streaming
            if plan is None:
                if gate is not None:
                    raise AdaFuseStreamingError(
                        f"block {site.name!r} ({qualified_name(type(site.block))}) is patched "
                        "but has no streaming plan; supported: "
                        f"{streaming_block_classes()}. Exclude it when patching "
                        "(AdaFuseConfig(exclude=...)) to run it densely, or register its "
                        "plan: register_block_adapter(..., streaming=...)."
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
        frame = frame.contiguous(memory_format=CHANNELS_LAST)
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
            actions = block.state.actions
            if self.record_decisions and actions is not None:
                self._history[name].append(actions.astype(np.int8))
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
        cached or full), ``per-group``, ``pack-now``, ``gemm``, ``direct``, ``dense``."""
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
        if self._frame_shape is None:
            raise AdaFuseStreamingError("no frame was streamed since the last reset")
        shape = (self.frames_seen, *self._frame_shape)
        return audit_flops(self._reference, input_shape=shape, decisions=decisions, progress=False)
