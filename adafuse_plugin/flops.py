"""FLOPs audits: dense FLOPs from fvcore, adaptive FLOPs by the paper's Eq. 5.

All numbers are multiply-adds (fvcore's convention, BatchNorm included).

Eq. 5, per block with first-conv FLOPs m_x and second-conv FLOPs m_y per frame:

- channel i of the first conv must be computed at frame t iff it is kept at t or
  reused at t+1 (the last frame has no t+1);
- input channel i of the second conv is zero at frame t iff it is skipped.

"real" adaptive FLOPs subtract both savings; "upb" (the paper's upper bound)
subtracts only the second one. Both add the policy networks' own cost. Decisions
are accumulated as counts over all clips, never as averages of averages.
"""

from __future__ import annotations

import contextlib
import dataclasses
import warnings
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import torch
from torch import nn

from . import eq5
from .config import FlopsMode
from .errors import AdaFuseInputError, AdaFusePatchError
from .gate import ACTIONS, KEEP, REUSE, SKIP, AdaFuseGate
from .surgery import collect_decisions, find_blocks, find_unsupported_blocks, iter_gates


def _flop_count_analysis(model: nn.Module, inputs: tuple[torch.Tensor, ...]) -> Any:
    with warnings.catch_warnings():
        # fvcore.nn imports a torch.jit.script'ed loss that warns on current torch.
        warnings.simplefilter("ignore", FutureWarning)
        from fvcore.nn import FlopCountAnalysis
    analysis = FlopCountAnalysis(model, inputs)
    analysis.unsupported_ops_warnings(False)
    analysis.uncalled_modules_warnings(False)
    analysis.tracer_warnings("none")
    return analysis


@contextlib.contextmanager
def _reentrant_checkpoints_inlined() -> Iterator[None]:
    """Run reentrant activation checkpoints as plain calls (fvcore's jit trace cannot
    enter their autograd Function); under ``torch.no_grad`` the result is the same."""
    from torch.utils.checkpoint import CheckpointFunction

    CheckpointFunction.apply = staticmethod(lambda function, _preserve, *args: function(*args))
    try:
        yield
    finally:
        del CheckpointFunction.apply  # the inherited autograd.Function.apply again


@contextlib.contextmanager
def gates_disabled(model: nn.Module) -> Iterator[None]:
    """Run the model as if unpatched (gates pass features through, record nothing)."""
    gates = [gate for _, gate in iter_gates(model)]
    previous = [gate.enabled for gate in gates]
    for gate in gates:
        gate.enabled = False
    try:
        yield
    finally:
        for gate, state in zip(gates, previous):
            gate.enabled = state


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Switch to eval mode and back to the previous mode of every submodule."""
    modes = {module: module.training for module in model.modules()}
    model.eval()
    try:
        yield
    finally:
        for module, mode in modes.items():
            module.train(mode)


class DecisionCounts:
    """Keep / reuse / skip counts per block, accumulated over any number of batches."""

    FIELDS = ("elements", "keep", "reuse", "skip", "first_conv_needed")

    def __init__(self) -> None:
        self.blocks: dict[str, dict[str, int]] = {}
        self.clips = 0

    def update(self, decisions: Mapping[str, torch.Tensor]) -> None:
        """Add a batch of decisions: {block: (N, T, c') long}."""
        clips = None
        for name, d in decisions.items():
            if d.dim() != 3:
                raise AdaFuseInputError(
                    f"decisions of block {name!r} must be (N, T, C), got {tuple(d.shape)}"
                )
            keep, reuse = (d == KEEP).int(), (d == REUSE).int()
            tally = self.blocks.setdefault(name, dict.fromkeys(self.FIELDS, 0))
            tally["elements"] += d.numel()
            tally["keep"] += int(keep.sum())
            tally["reuse"] += int(reuse.sum())
            tally["skip"] += int((d == SKIP).sum())
            tally["first_conv_needed"] += int(eq5.first_conv_needed(keep, reuse).sum())
            clips = d.shape[0]
        self.clips += clips or 0

    def fraction(self, name: str, field: str) -> float:
        tally = self.blocks[name]
        return tally[field] / tally["elements"]

    def mix(self) -> dict[str, float]:
        """Overall keep / reuse / skip shares over every block, frame and channel."""
        total = sum(t["elements"] for t in self.blocks.values())
        if not total:
            raise AdaFuseInputError(
                "no decisions counted yet: call update() with collect_decisions(model) "
                "after a forward pass"
            )
        return {a: sum(t[a] for t in self.blocks.values()) / total for a in ACTIONS}


@dataclasses.dataclass
class BlockFlops:
    """FLOPs of one patched block, per frame; fractions are None without decisions."""

    name: str
    dense: float  # the whole block, dense
    first_conv: float
    second_conv: float
    policy_flops: float  # its policy network
    keep: float | None = None
    reuse: float | None = None
    skip: float | None = None
    first_conv_saved: float | None = None

    @property
    def first_conv_adaptive(self) -> float | None:
        """Executed first-conv FLOPs per frame under Eq. 5."""
        if self.first_conv_saved is None:
            return None
        return self.first_conv * (1.0 - self.first_conv_saved)

    @property
    def second_conv_adaptive(self) -> float | None:
        """Executed second-conv FLOPs per frame under Eq. 5."""
        if self.skip is None:
            return None
        return self.second_conv * (1.0 - self.skip)

    def _saved(self, mode: FlopsMode) -> float:
        if self.skip is None:
            return 0.0
        first_saved = self.first_conv_saved or 0.0  # only "real" counts it
        needed = (1.0 - first_saved, 1.0 - self.skip)
        adaptive = eq5.block_flops(*needed, self.first_conv, self.second_conv, mode)
        return self.first_conv + self.second_conv - adaptive

    @property
    def saved_real(self) -> float:
        """FLOPs per frame Eq. 5 saves in both convs."""
        return self._saved("real")

    @property
    def saved_upb(self) -> float:
        """FLOPs per frame saved in the second conv only (the paper's upper bound)."""
        return self._saved("upb")

    def with_decisions(self, counts: DecisionCounts) -> BlockFlops:
        """This block completed with the keep / reuse / skip shares and the first-conv
        saving of accumulated decision counts."""
        if self.name not in counts.blocks:
            raise AdaFuseInputError(f"the decisions have no entry for block {self.name!r}")
        share = {action: counts.fraction(self.name, action) for action in ACTIONS}
        return dataclasses.replace(
            self,
            keep=share["keep"],
            reuse=share["reuse"],
            skip=share["skip"],
            first_conv_saved=1.0 - counts.fraction(self.name, "first_conv_needed"),
        )


@dataclasses.dataclass
class FlopsReport:
    """Dense and adaptive FLOPs of ``frames`` frames (one clip for input_shape (T, 3, H, W))."""

    frames: int
    dense: float
    policy: float
    blocks: list[BlockFlops]
    clips_seen: int = 0
    mix: dict[str, float] | None = None
    unsupported_ops: dict[str, int] = dataclasses.field(default_factory=dict)
    #: Per-frame dense FLOPs of residual-like blocks left without a gate (no adapter).
    unpatched: dict[str, float] = dataclasses.field(default_factory=dict)

    @property
    def unpatched_share(self) -> float:
        """Share of dense FLOPs in residual-like blocks AdaFuse leaves alone."""
        return self.frames * sum(self.unpatched.values()) / self.dense if self.dense else 0.0

    @property
    def has_decisions(self) -> bool:
        return self.mix is not None

    @property
    def adaptive(self) -> float | None:
        """Eq. 5 "real": both the first- and second-conv savings, plus policy cost."""
        if not self.has_decisions:
            return None
        return self.dense - self.frames * sum(b.saved_real for b in self.blocks) + self.policy

    @property
    def adaptive_upb(self) -> float | None:
        """The paper's "upb": only the second-conv saving, plus policy cost."""
        if not self.has_decisions:
            return None
        return self.dense - self.frames * sum(b.saved_upb for b in self.blocks) + self.policy

    @property
    def saving(self) -> float | None:
        """Share of dense FLOPs saved by the "real" adaptive count."""
        return None if self.adaptive is None else 1.0 - self.adaptive / self.dense

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (JSON-serialisable), including the derived totals."""
        data = dataclasses.asdict(self)
        data.update(adaptive=self.adaptive, adaptive_upb=self.adaptive_upb, saving=self.saving)
        for block_dict, block in zip(data["blocks"], self.blocks):
            block_dict.update(
                first_conv_adaptive=block.first_conv_adaptive,
                second_conv_adaptive=block.second_conv_adaptive,
            )
        return data

    def table(self) -> str:
        """A per-block table (GFLOPs per ``frames`` frames) followed by the totals."""
        from tabulate import tabulate

        g = self.frames / 1e9
        headers = (
            "block",
            "dense",
            "conv1",
            "conv2",
            "policy",
            "keep",
            "reuse",
            "skip",
            "adaptive",
        )
        rows = []
        for b in self.blocks:
            mix = [f"{v:.0%}" if v is not None else "-" for v in (b.keep, b.reuse, b.skip)]
            executed = (
                "-" if b.skip is None else f"{(b.dense - b.saved_real + b.policy_flops) * g:.3f}"
            )
            rows.append(
                (
                    b.name,
                    f"{b.dense * g:.3f}",
                    f"{b.first_conv * g:.3f}",
                    f"{b.second_conv * g:.3f}",
                    f"{b.policy_flops * g:.4f}",
                    *mix,
                    executed,
                )
            )
        align = ("left",) + ("right",) * (len(headers) - 1)
        lines = [tabulate(rows, headers, disable_numparse=True, colalign=align), ""]
        lines.append(f"frames per count      {self.frames}")
        lines.append(f"dense GFLOPs          {self.dense / 1e9:.3f}")
        lines.append(f"policy GFLOPs         {self.policy / 1e9:.4f}")
        if self.unpatched:
            lines.append(
                f"blocks without a gate {len(self.unpatched)}, {self.unpatched_share:.1%} of "
                "dense FLOPs (no adapter for their class; see find_unsupported_blocks)"
            )
        adaptive, upb, saving, shares = self.adaptive, self.adaptive_upb, self.saving, self.mix
        if adaptive is not None and upb is not None and saving is not None and shares is not None:
            lines.append(f"adaptive GFLOPs real  {adaptive / 1e9:.3f}  (saving {saving:.1%})")
            lines.append(f"adaptive GFLOPs upb   {upb / 1e9:.3f}")
            lines.append(
                "policy mix            "
                + " / ".join(f"{a} {shares[a]:.1%}" for a in ACTIONS)
                + f"  over {self.clips_seen} clip(s)"
            )
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()


def _batch_inputs(batch: Any) -> torch.Tensor:
    """The frames tensor of a loader batch: a tensor, (inputs, ...) or {'inputs': ...}."""
    if isinstance(batch, torch.Tensor):
        return batch
    if isinstance(batch, Mapping) and "inputs" in batch:
        return batch["inputs"]
    if isinstance(batch, (tuple, list)) and batch and isinstance(batch[0], torch.Tensor):
        return batch[0]
    raise AdaFuseInputError(
        f"cannot find the frames in a loader batch of type {type(batch).__name__}; yield "
        "tensors, (frames, labels) tuples or dicts with an 'inputs' key"
    )


def count_decisions(
    model: nn.Module,
    loader: Iterable[Any],
    max_batches: int | None = None,
    progress: bool = True,
) -> DecisionCounts:
    """Run the model in eval mode over a loader and accumulate its decisions."""
    from tqdm.auto import tqdm

    counts = DecisionCounts()
    device = next(model.parameters()).device
    total = max_batches if max_batches is not None else _safe_len(loader)
    with eval_mode(model), torch.no_grad():
        for index, batch in enumerate(
            tqdm(loader, total=total, desc="audit", disable=not progress)
        ):
            if max_batches is not None and index >= max_batches:
                break
            frames = _batch_inputs(batch).to(device)
            model(frames.flatten(0, 1) if frames.dim() == 5 else frames)
            counts.update(collect_decisions(model))
    return counts


def _safe_len(loader: Iterable[Any]) -> int | None:
    try:
        return len(loader)  # type: ignore[arg-type]
    except TypeError:
        return None


def _policy_flops(gate: AdaFuseGate, frames: int) -> float:
    """fvcore count of one policy network over ``frames`` frames."""
    if gate.policy_net is None:
        return 0.0
    net = gate.policy_net
    weight = net.fc1.weight
    pooled = torch.zeros(frames, net.in_channels, device=weight.device, dtype=weight.dtype)
    with eval_mode(net), torch.no_grad():
        return float(_flop_count_analysis(net, (pooled, pooled)).total())


def audit_flops(
    model: nn.Module,
    input_shape: tuple[int, ...] = (8, 3, 224, 224),
    decisions: Mapping[str, torch.Tensor] | DecisionCounts | None = None,
    loader: Iterable[Any] | None = None,
    max_batches: int | None = None,
    progress: bool = True,
) -> FlopsReport:
    """Dense and adaptive FLOPs of a patched model, per block and in total.

    Args:
        model: a patched model.
        input_shape: (frames, 3, H, W) of the input that dense FLOPs are counted for;
            use (T, 3, H, W) for FLOPs per clip of T frames.
        decisions: decisions to count adaptive FLOPs from: a `collect_decisions` dict
            or accumulated `DecisionCounts`. Default: the model's last forward pass.
        loader: alternatively, run the model (eval mode) over this loader and count
            every clip's decisions.
        max_batches: stop the loader after this many batches.
        progress: show a progress bar over the loader.
    """
    gates = dict(iter_gates(model))
    if not gates:
        raise AdaFusePatchError("audit_flops needs a patched model; call patch_model first")
    if len(input_shape) != 4:
        raise AdaFuseInputError(f"input_shape must be (frames, 3, H, W), got {input_shape}")
    if loader is not None:
        decisions = count_decisions(model, loader, max_batches, progress)
    elif decisions is None and any(g.last_decisions is not None for g in gates.values()):
        decisions = collect_decisions(model)
    if decisions is not None and not isinstance(decisions, DecisionCounts):
        counts = DecisionCounts()
        counts.update(decisions)
        decisions = counts

    frames = input_shape[0]
    weight = next(model.parameters())
    inputs = torch.zeros(input_shape, device=weight.device, dtype=weight.dtype)
    with gates_disabled(model), eval_mode(model), torch.no_grad(), _reentrant_checkpoints_inlined():
        analysis = _flop_count_analysis(model, (inputs,))
        by_module = analysis.by_module()
        dense = float(analysis.total())
        unsupported = dict(analysis.unsupported_ops())
    sites = {site.name: site for site in find_blocks(model)}
    blocks = []
    for name, gate in gates.items():
        site = sites[name]
        names = {id(m): n for n, m in site.block.named_modules()}
        first = f"{name}.{names[id(site.adapter.first_conv_module(site.block))]}"
        second = f"{name}.{names[id(site.adapter.second_conv_module(site.block))]}"
        block = BlockFlops(
            name=name,
            dense=by_module[name] / frames,
            first_conv=by_module[first] / frames,
            second_conv=by_module[second] / frames,
            policy_flops=_policy_flops(gate, 1),
        )
        blocks.append(block if decisions is None else block.with_decisions(decisions))
    return FlopsReport(
        frames=frames,
        dense=dense,
        policy=frames * sum(b.policy_flops for b in blocks),
        blocks=blocks,
        clips_seen=decisions.clips if decisions is not None else 0,
        mix=decisions.mix() if decisions is not None else None,
        unsupported_ops=unsupported,
        unpatched={n: by_module[n] / frames for n, _ in find_unsupported_blocks(model)},
    )


def dense_share(model: nn.Module, names: Iterable[str], image_size: int = 224) -> float:
    """Share of one frame's dense FLOPs (fvcore, ``image_size`` square) in the named
    submodules, e.g. the blocks `patch_model` leaves alone."""
    stem = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    weight = stem.weight
    inputs = torch.zeros(
        1, stem.in_channels, image_size, image_size, device=weight.device, dtype=weight.dtype
    )
    with gates_disabled(model), eval_mode(model), torch.no_grad(), _reentrant_checkpoints_inlined():
        analysis = _flop_count_analysis(model, (inputs,))
        by_module = analysis.by_module()
        return sum(by_module[name] for name in names) / float(analysis.total())
