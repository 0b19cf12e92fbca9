"""Conditional early exit for streaming inference: stop reading frames once the running
prediction is confident enough.

The recipe follows AdaFocusV2's budgeted exit, with no retraining. After frame k (0-based) the
running prediction is the mean of the per-frame logits of frames 0..k, and its
confidence is the max of its softmax. A clip exits at the first frame k whose confidence
is at least ``thresholds[k]``; the last threshold is -inf, so every clip exits by then.

Calibration on a held-out split, for an average budget (frames or FLOPs):

1. exit fractions q_k proportional to p^k over frame index k (p < 1 favours early
   exits, p > 1 late ones), with p found by bisection so that the calibration clips'
   average cost is the largest one within the budget;
2. thresholds set frame by frame: of the clips still running at frame k, the
   round(q_k * N) most confident exit, and ``thresholds[k]`` is the lowest confidence
   among them.

Inputs are per-frame logits of shape (N, T, num_classes), e.g. `StreamingRunner` logits
stacked over clips, or a patched model's ``(N*T, K)`` output reshaped to (N, T, K).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import torch

from .errors import AdaFuseEarlyExitError

__all__ = [
    "ExitEvaluation",
    "ExitPolicy",
    "calibrate_exits",
    "evaluate_exits",
    "exit_curve",
    "running_confidence",
]


def _check_logits(per_frame_logits: torch.Tensor) -> torch.Tensor:
    if not isinstance(per_frame_logits, torch.Tensor) or per_frame_logits.dim() != 3:
        shape = getattr(per_frame_logits, "shape", type(per_frame_logits).__name__)
        raise AdaFuseEarlyExitError(
            f"per-frame logits must be a (clips, frames, classes) tensor, got {shape}; "
            "reshape a patched model's (N*T, K) output with .view(N, T, K)"
        )
    if per_frame_logits.shape[0] == 0:
        raise AdaFuseEarlyExitError("per-frame logits hold no clip")
    return per_frame_logits.detach().float().cpu()


def running_confidence(per_frame_logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(confidence, predicted class), both (N, T): max softmax and argmax of the running
    mean of the logits over frames 0..k."""
    logits = _check_logits(per_frame_logits)
    frames = torch.arange(1, logits.shape[1] + 1, dtype=logits.dtype).view(1, -1, 1)
    probabilities = (logits.cumsum(dim=1) / frames).softmax(dim=-1)
    confidence, predicted = probabilities.max(dim=-1)
    return confidence, predicted


def _cumulative_cost(
    flops_per_frame: float | Sequence[float] | torch.Tensor | None, frames: int
) -> torch.Tensor:
    """(T,) cost of stopping after frame k: frames (k+1) or cumulative FLOPs."""
    if flops_per_frame is None:
        return torch.arange(1, frames + 1, dtype=torch.float64)
    cost = torch.as_tensor(flops_per_frame, dtype=torch.float64)
    if cost.dim() == 0:
        cost = cost.expand(frames)
    if cost.dim() == 2:  # (N, T) per-clip costs: plan with the mean over clips
        cost = cost.mean(dim=0)
    if cost.shape != (frames,) or bool((cost < 0).any()):
        raise AdaFuseEarlyExitError(
            f"flops_per_frame must be a non-negative scalar, (T,) or (N, T) with T={frames}, "
            f"got shape {tuple(cost.shape)}"
        )
    return cost.cumsum(dim=0)


@dataclasses.dataclass
class ExitPolicy:
    """Per-frame confidence thresholds for early exit.

    Attributes:
        thresholds: (T,) threshold on the running prediction's max softmax after frame k;
            the last is -inf.
        p: the exit-fraction base (fractions proportional to p^k).
        fractions: (T,) planned share of clips exiting at each frame.
    """

    thresholds: torch.Tensor
    p: float
    fractions: torch.Tensor

    @property
    def frames(self) -> int:
        return len(self.thresholds)

    def should_exit(self, frame_index: int, running_logits: torch.Tensor) -> bool:
        """Online test after frame ``frame_index``: stop reading frames now?

        ``running_logits`` is the running prediction (mean of the logits so far), e.g.
        ``StreamingRunner.step(frame).prediction``.
        """
        if frame_index >= self.frames - 1:
            return True
        confidence = running_logits.detach().float().softmax(dim=-1).max()
        return bool(confidence >= self.thresholds[frame_index])

    def exit_frames(self, per_frame_logits: torch.Tensor) -> torch.Tensor:
        """(N,) frame index at which each clip exits."""
        confidence, _ = running_confidence(per_frame_logits)
        if confidence.shape[1] != self.frames:
            raise AdaFuseEarlyExitError(
                f"the policy was calibrated for {self.frames} frames, the logits have "
                f"{confidence.shape[1]}"
            )
        exits = confidence >= self.thresholds.view(1, -1)
        exits[:, -1] = True
        return exits.float().argmax(dim=1)


def _counts(fractions: torch.Tensor, clips: int) -> list[int]:
    """Integer exit counts summing to ``clips`` (largest remainders)."""
    raw = fractions * clips
    counts = raw.floor().long()
    remainder = clips - int(counts.sum())
    if remainder:
        counts[torch.argsort(raw - counts, descending=True)[:remainder]] += 1
    return counts.tolist()


def _fractions(p: float, frames: int) -> torch.Tensor:
    """Normalised p^k, k = 0..frames-1, computed in log space to avoid overflow."""
    weights = torch.arange(frames, dtype=torch.float64) * math.log(p)
    return (weights - weights.max()).exp() / (weights - weights.max()).exp().sum()


def _thresholds(confidence: torch.Tensor, counts: list[int]) -> torch.Tensor:
    """Frame by frame, let the ``counts[k]`` most confident remaining clips exit."""
    clips, frames = confidence.shape
    remaining = torch.ones(clips, dtype=torch.bool)
    thresholds = torch.full((frames,), float("inf"))
    for k, count in enumerate(counts[:-1]):
        if count > 0:
            scores = torch.where(remaining, confidence[:, k], torch.tensor(float("-inf")))
            top = scores.topk(count)
            thresholds[k] = top.values[-1]
            remaining &= scores < thresholds[k]
    thresholds[-1] = float("-inf")
    return thresholds


def _realised_cost(
    confidence: torch.Tensor, thresholds: torch.Tensor, cumulative: torch.Tensor
) -> float:
    """Average cost of these thresholds on the clips behind ``confidence``."""
    exits = confidence >= thresholds.view(1, -1)
    exits[:, -1] = True
    return float(cumulative[exits.float().argmax(dim=1)].mean())


def calibrate_exits(
    per_frame_logits: torch.Tensor,
    *,
    budget_frames: float | None = None,
    budget_flops: float | None = None,
    flops_per_frame: float | Sequence[float] | torch.Tensor | None = None,
) -> ExitPolicy:
    """Thresholds that meet an average budget on this (held-out) split.

    Args:
        per_frame_logits: (N, T, K) logits of the calibration clips.
        budget_frames: average number of frames read per clip (1..T).
        budget_flops: alternatively, average FLOPs per clip; needs ``flops_per_frame``.
        flops_per_frame: cost of each frame: a scalar, (T,) (e.g. the average step FLOPs
            of `StreamingRunner` at each frame index) or (N, T) per clip.

    Returns:
        An `ExitPolicy` whose average cost on these clips is within the budget (the
        largest such cost the p^k family reaches).
    """
    if (budget_frames is None) == (budget_flops is None):
        raise AdaFuseEarlyExitError("give exactly one of budget_frames and budget_flops")
    confidence, _ = running_confidence(per_frame_logits)
    clips, frames = confidence.shape
    if budget_flops is not None:
        if flops_per_frame is None:
            raise AdaFuseEarlyExitError("budget_flops needs flops_per_frame")
        cumulative, budget = _cumulative_cost(flops_per_frame, frames), float(budget_flops)
    elif budget_frames is not None:
        cumulative, budget = _cumulative_cost(None, frames), float(budget_frames)
    else:
        raise AdaFuseEarlyExitError("give exactly one of budget_frames and budget_flops")
    if not cumulative[0] <= budget + 1e-9 * abs(budget):
        raise AdaFuseEarlyExitError(
            f"a budget of {budget:g} is below the cost of one frame ({float(cumulative[0]):g})"
        )

    def policy_for(log_p: float) -> ExitPolicy:
        fractions = _fractions(math.exp(log_p), frames)
        thresholds = _thresholds(confidence, _counts(fractions, clips))
        return ExitPolicy(thresholds, math.exp(log_p), fractions.float())

    low, high = -30.0, 30.0
    best = policy_for(low)
    if _realised_cost(confidence, policy_for(high).thresholds, cumulative) <= budget:
        return policy_for(high)
    for _ in range(60):
        middle = 0.5 * (low + high)
        candidate = policy_for(middle)
        if _realised_cost(confidence, candidate.thresholds, cumulative) <= budget:
            low, best = middle, candidate
        else:
            high = middle
    return best


@dataclasses.dataclass
class ExitEvaluation:
    """Accuracy and cost of an `ExitPolicy` on a split."""

    accuracy: float
    avg_frames: float
    avg_flops: float | None
    exit_fractions: torch.Tensor

    @property
    def avg_gflops(self) -> float | None:
        return None if self.avg_flops is None else self.avg_flops / 1e9


def evaluate_exits(
    policy: ExitPolicy,
    per_frame_logits: torch.Tensor,
    labels: torch.Tensor,
    flops_per_frame: float | Sequence[float] | torch.Tensor | None = None,
) -> ExitEvaluation:
    """Top-1 accuracy of the running prediction at each clip's exit, average frames read
    and (given ``flops_per_frame``: scalar, (T,) or (N, T)) average FLOPs per clip."""
    exit_at = policy.exit_frames(per_frame_logits)
    _, predicted = running_confidence(per_frame_logits)
    clips, frames = predicted.shape
    labels = torch.as_tensor(labels).view(-1).cpu()
    if labels.shape != (clips,):
        raise AdaFuseEarlyExitError(
            f"labels must have one entry per clip ({clips}), got {labels.shape}"
        )
    final = predicted.gather(1, exit_at.view(-1, 1)).view(-1)
    avg_flops = None
    if flops_per_frame is not None:
        cost = torch.as_tensor(flops_per_frame, dtype=torch.float64)
        if cost.dim() == 2:  # per-clip costs
            if cost.shape != (clips, frames):
                raise AdaFuseEarlyExitError(f"(N, T) flops_per_frame must be {(clips, frames)}")
            avg_flops = float(cost.cumsum(dim=1).gather(1, exit_at.view(-1, 1)).mean())
        else:
            avg_flops = float(_cumulative_cost(cost, frames)[exit_at].mean())
    return ExitEvaluation(
        accuracy=float((final == labels).float().mean()),
        avg_frames=float((exit_at + 1).float().mean()),
        avg_flops=avg_flops,
        exit_fractions=torch.bincount(exit_at, minlength=frames).float() / clips,
    )


def exit_curve(
    calibration_logits: torch.Tensor,
    test_logits: torch.Tensor,
    test_labels: torch.Tensor,
    budgets_frames: Sequence[float],
    flops_per_frame: float | Sequence[float] | torch.Tensor | None = None,
) -> list[ExitEvaluation]:
    """Accuracy vs cost: calibrate on one split at each frame budget, evaluate on another.

    With ``flops_per_frame`` each point also carries its average (G)FLOPs, giving the
    accuracy-vs-GFLOPs curve.
    """
    return [
        evaluate_exits(
            calibrate_exits(calibration_logits, budget_frames=budget),
            test_logits,
            test_labels,
            flops_per_frame,
        )
        for budget in budgets_frames
    ]
