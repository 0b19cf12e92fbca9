"""Early exit: budgets met on the calibration split, monotone in the budget, consistent
online and offline."""

from __future__ import annotations

import pytest
import torch

from adafuse_plugin.early_exit import (
    ExitPolicy,
    calibrate_exits,
    evaluate_exits,
    exit_curve,
    running_confidence,
)
from adafuse_plugin.errors import AdaFuseError

FRAMES, CLASSES = 8, 5


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def synthetic(clips: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-frame logits whose evidence for the label grows with the frame index, at a
    per-clip difficulty: more frames -> more accurate, easy clips confident early."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, CLASSES, (clips,), generator=generator)
    logits = torch.randn(clips, FRAMES, CLASSES, generator=generator) * 1.5
    evidence = torch.linspace(0.3, 1.5, FRAMES) * 3 * torch.rand(clips, 1, generator=generator)
    logits[torch.arange(clips), :, labels] += evidence
    return logits, labels


@pytest.fixture(scope="module")
def splits():
    return synthetic(300, seed=0), synthetic(300, seed=1)


def test_running_confidence_is_the_consensus_softmax():
    logits, _ = synthetic(4, seed=2)
    confidence, predicted = running_confidence(logits)
    mean = logits[:, :3].mean(dim=1)
    torch.testing.assert_close(confidence[:, 2], mean.softmax(-1).max(-1).values)
    assert torch.equal(predicted[:, 2], mean.argmax(-1))


@pytest.mark.parametrize("budget", [1.0, 1.7, 2.5, 4.0, 6.3, 8.0])
def test_frame_budget_is_met_on_the_calibration_split(splits, budget):
    (logits, labels), _ = splits
    policy = calibrate_exits(logits, budget_frames=budget)
    result = evaluate_exits(policy, logits, labels)
    assert result.avg_frames <= budget + 1e-6
    assert result.avg_frames >= budget - 0.05  # uses the budget, not just stays under it
    assert policy.thresholds[-1] == float("-inf")
    assert result.exit_fractions.sum() == pytest.approx(1.0)


def test_flops_budget_with_uneven_frame_costs(splits):
    (logits, labels), _ = splits
    costs = torch.linspace(3e9, 1e9, FRAMES)  # e.g. streaming steps getting cheaper
    budget = float(costs[:3].sum())
    policy = calibrate_exits(logits, budget_flops=budget, flops_per_frame=costs)
    result = evaluate_exits(policy, logits, labels, flops_per_frame=costs)
    assert result.avg_flops <= budget * (1 + 1e-9)
    assert result.avg_flops >= 0.97 * budget
    exit_at = policy.exit_frames(logits)
    assert result.avg_flops == pytest.approx(float(costs.cumsum(0)[exit_at].mean()))
    per_clip = costs.expand(len(logits), -1)
    same = evaluate_exits(policy, logits, labels, flops_per_frame=per_clip)
    assert same.avg_flops == pytest.approx(result.avg_flops)


def test_more_budget_reads_more_frames_and_is_more_accurate(splits):
    (calibration, _), (test, test_labels) = splits
    curve = exit_curve(calibration, test, test_labels, [1, 2, 3, 4, 6, 8], 1.8e9)
    frames = [point.avg_frames for point in curve]
    assert frames == sorted(frames)
    assert curve[-1].avg_frames == FRAMES and curve[0].avg_frames < 1.2
    assert curve[-1].avg_gflops == pytest.approx(8 * 1.8)
    accuracy = [point.accuracy for point in curve]
    assert accuracy[-1] > accuracy[0] + 0.2
    assert all(b >= a - 0.03 for a, b in zip(accuracy, accuracy[1:]))  # noise allowed
    _, final = running_confidence(test)
    assert accuracy[-1] == pytest.approx(float((final[:, -1] == test_labels).float().mean()))


def test_online_decisions_match_offline_exits(splits):
    (logits, _), _ = splits
    policy = calibrate_exits(logits, budget_frames=3.0)
    expected = policy.exit_frames(logits)
    for clip, exit_at in zip(logits[:50], expected[:50]):
        running = torch.zeros(CLASSES)
        for k in range(FRAMES):
            running = running + (clip[k] - running) / (k + 1)  # mean of frames 0..k
            if policy.should_exit(k, running):
                break
        assert k == int(exit_at)


def test_invalid_inputs():
    logits, labels = synthetic(10, seed=3)
    with pytest.raises(AdaFuseError, match="exactly one"):
        calibrate_exits(logits)
    with pytest.raises(AdaFuseError, match="below the cost of one frame"):
        calibrate_exits(logits, budget_frames=0.5)
    with pytest.raises(AdaFuseError, match="flops_per_frame"):
        calibrate_exits(logits, budget_flops=1e9)
    with pytest.raises(AdaFuseError, match="clips, frames, classes"):
        calibrate_exits(logits[0], budget_frames=2)
    policy = calibrate_exits(logits, budget_frames=2)
    assert isinstance(policy, ExitPolicy)
    with pytest.raises(AdaFuseError, match="calibrated for 8 frames"):
        policy.exit_frames(logits[:, :4])
    with pytest.raises(AdaFuseError, match="one entry per clip"):
        evaluate_exits(policy, logits, labels[:3])
