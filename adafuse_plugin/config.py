"""`AdaFuseConfig`: every choice `patch_model` makes, in one serialisable dataclass."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any, Literal, get_args

from .errors import AdaFuseConfigError

#: A policy `patch_model` can insert (the keys of `POLICIES`).
PolicyName = Literal["adafuse", "keep", "keep_skip", "keep_reuse", "random", "threshold"]
#: How Eq. 5 counts: ``real`` (first- and second-conv savings) or ``upb`` (second conv only).
FlopsMode = Literal["real", "upb"]

#: Policies `patch_model` can insert. ``adafuse`` is the paper's learned policy; the
#: others are the ablations of the paper's Table 4 (Sec. 4.4).
POLICIES: dict[PolicyName, str] = {
    "adafuse": "learned keep / reuse / skip (the paper's AdaFuse)",
    "keep": "keep every channel (TSN; output identical to the unpatched model)",
    "keep_skip": "learned keep / skip only ('Ada. Skip')",
    "keep_reuse": "learned keep / reuse only ('Ada. Reuse')",
    "random": "keep / reuse / skip sampled at fixed ratios ('Random')",
    "threshold": "keep the channels with the largest activation L1 norm, skip the rest",
}

#: Policies whose decisions come from a trained policy network.
LEARNED_POLICIES = frozenset({"adafuse", "keep_skip", "keep_reuse"})

#: How a learned policy decides in eval mode: ``argmax`` (deterministic, our default) or
#: ``gumbel`` (a hard Gumbel sample, as the authors' evaluation script does).
EvalDecisions = Literal["argmax", "gumbel"]
EVAL_DECISIONS: tuple[str, ...] = get_args(EvalDecisions)

#: Default hidden width of a policy network when neither ``hidden_size`` nor
#: ``hidden_quota`` is given.
DEFAULT_HIDDEN_SIZE = 256


def _is_count(value: object) -> bool:
    """A positive int that is not a bool (``True`` is an int in Python)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


@dataclasses.dataclass
class AdaFuseConfig:
    """How to patch a 2D backbone with AdaFuse blocks.

    Args:
        num_segments: frames per clip (T); the batch is laid out as N*T frames, frame
            index fastest inside a clip.
        policy: one of :data:`POLICIES`.
        stages: indices of the stages to patch (a stage = the blocks sharing a parent
            module, e.g. ``layer4``), Python-style, so ``(-1,)`` is the last stage
            (the paper's "TSM+Last"). ``None`` patches every stage.
        include: glob patterns on block names; if given, only matching blocks are patched.
        exclude: glob patterns on block names that are never patched.
        hidden_size: hidden width of every policy network.
        hidden_quota: the paper's "hidden quota": hidden width = quota // c' (the first
            conv's output channels). Exclusive with ``hidden_size``.
        share_policy: share the two Linear layers of the policy network between blocks
            of equal shapes (the paper's released ResNet-50 TSN/TSM models do this); each
            block keeps its own BatchNorm1d, as in the authors' networks.
        granularity: channels per decision (1 = one decision per channel).
        tau: Gumbel-softmax temperature used in training; settable at run time.
        random_ratios: keep / reuse / skip probabilities of the ``random`` policy.
        threshold_keep_ratio: share of channels kept by the ``threshold`` policy.
        policy_shift_div: the block's first conv sees a TSM-shifted input (fold
            1/policy_shift_div) and the policy pools that shifted input, as in the
            authors' AdaFuse-TSM networks. ``None``: the policy pools the block input.
            Set by ``AdaFuseRecognizer2D(adafuse=dict(tsm_wiring='authors'))``.
        eval_decisions: ``argmax`` (default) or ``gumbel``: how a learned policy
            decides in eval mode; ``gumbel`` samples like the authors' test script.
    """

    num_segments: int = 8
    policy: PolicyName = "adafuse"
    stages: Sequence[int] | None = None
    include: Sequence[str] = ()
    exclude: Sequence[str] = ()
    hidden_size: int | None = None
    hidden_quota: int | None = None
    share_policy: bool = False
    granularity: int = 1
    tau: float = 0.67
    random_ratios: Sequence[float] = (1 / 3, 1 / 3, 1 / 3)
    threshold_keep_ratio: float = 0.5
    policy_shift_div: int | None = None
    eval_decisions: EvalDecisions = "argmax"

    def __post_init__(self) -> None:
        for name in ("stages", "include", "exclude", "random_ratios"):
            value = getattr(self, name)
            if isinstance(value, str):
                value = (value,)
            if value is not None:
                setattr(self, name, tuple(value))
        self._validate()

    def _validate(self) -> None:
        if not _is_count(self.num_segments):
            raise AdaFuseConfigError(
                f"num_segments must be a positive int, got {self.num_segments!r}"
            )
        if self.policy not in POLICIES:
            raise AdaFuseConfigError(
                f"unknown policy {self.policy!r}; choose one of {sorted(POLICIES)}"
            )
        if self.hidden_size is not None and self.hidden_quota is not None:
            raise AdaFuseConfigError("give hidden_size or hidden_quota, not both")
        for name in ("hidden_size", "hidden_quota"):
            value = getattr(self, name)
            if value is not None and not _is_count(value):
                raise AdaFuseConfigError(f"{name} must be a positive int, got {value!r}")
        if not _is_count(self.granularity):
            raise AdaFuseConfigError(
                f"granularity must be a positive int, got {self.granularity!r}"
            )
        if isinstance(self.tau, bool) or not (
            isinstance(self.tau, (int, float)) and math.isfinite(self.tau) and self.tau > 0
        ):
            raise AdaFuseConfigError(f"tau must be a finite number > 0, got {self.tau!r}")
        ratios = self.random_ratios
        if len(ratios) != 3 or any(r < 0 for r in ratios) or not math.isclose(sum(ratios), 1.0):
            raise AdaFuseConfigError(
                "random_ratios must be three non-negative numbers (keep, reuse, skip) "
                f"summing to 1, got {ratios!r}"
            )
        if not 0.0 <= self.threshold_keep_ratio <= 1.0:
            raise AdaFuseConfigError(
                f"threshold_keep_ratio must be in [0, 1], got {self.threshold_keep_ratio!r}"
            )
        if self.policy_shift_div is not None and (
            not isinstance(self.policy_shift_div, int) or self.policy_shift_div < 2
        ):
            raise AdaFuseConfigError(
                f"policy_shift_div must be an int >= 2 (TSM uses 8), got {self.policy_shift_div!r}"
            )
        if self.eval_decisions not in EVAL_DECISIONS:
            raise AdaFuseConfigError(
                f"eval_decisions must be one of {list(EVAL_DECISIONS)}, got {self.eval_decisions!r}"
            )
        if self.stages is not None and not all(isinstance(s, int) for s in self.stages):
            raise AdaFuseConfigError(f"stages must be ints, got {self.stages!r}")

    def hidden_for(self, out_channels: int) -> int:
        """Hidden width of the policy network of a block whose first conv has
        ``out_channels`` output channels."""
        if self.hidden_size is not None:
            return self.hidden_size
        if self.hidden_quota is not None:
            return max(1, self.hidden_quota // out_channels)
        return DEFAULT_HIDDEN_SIZE

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict (lists instead of tuples)."""
        return {
            key: list(value) if isinstance(value, tuple) else value
            for key, value in dataclasses.asdict(self).items()
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AdaFuseConfig:
        """Inverse of :meth:`to_dict`; unknown keys are an error, not silently dropped."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise AdaFuseConfigError(
                f"unknown AdaFuseConfig field(s) {unknown}; known fields: {sorted(known)}"
            )
        return cls(**data)
