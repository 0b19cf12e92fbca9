"""`AdaFuseMetric`: top-1/top-5 plus dense and adaptive GFLOPs and the policy mix of a split."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from mmaction.evaluation import AccMetric
from mmaction.registry import METRICS

from ..errors import AdaFuseConfigError
from ..flops import DecisionCounts
from .recognizer import COUNTS_FIELD, REPORT_FIELD, report_from_counts

#: Metric key prefix of one pair's within-pair accuracy (``within_pair/pair<k>``).
PAIR_KEY = "within_pair/pair"


def within_pair_accuracy(scores: Sequence[Sequence[float]], labels: Sequence[int]) -> float:
    """Share of clips whose class ``l`` scores above its time-reversed partner ``l ^ 1``."""
    if not labels:
        raise AdaFuseConfigError("within-pair accuracy of no clips")
    hits = [scores_[label] > scores_[label ^ 1] for scores_, label in zip(scores, labels)]
    return sum(hits) / len(hits)


def per_pair_accuracy(scores: Sequence[Sequence[float]], labels: Sequence[int]) -> dict[int, float]:
    """``within_pair_accuracy`` of the clips of each pair of classes (2k, 2k + 1), keyed by
    k: which temporal distinction a model gets and which it misses."""
    members: dict[int, list[int]] = {}
    for index, label in enumerate(labels):
        members.setdefault(label // 2, []).append(index)
    return {
        pair: within_pair_accuracy([scores[i] for i in clips], [labels[i] for i in clips])
        for pair, clips in sorted(members.items())
    }


@METRICS.register_module()
class AdaFuseMetric(AccMetric):
    """mmaction2's AccMetric plus AdaFuse FLOPs (paper Eq. 5) over the whole split.

    Decisions are accumulated as counts over every clip of the split (never as an
    average of batch averages), so the numbers equal one `audit_flops` over the split.
    Reported keys (prefix ``acc/`` by default): ``top1``, ``top5``, ``mean1``,
    ``gflops_dense``, ``gflops_real``, ``gflops_upb``, ``keep``, ``reuse``, ``skip`` and,
    with ``per_block=True``, ``<block>/keep|reuse|skip``. GFLOPs are per view (a clip of
    ``num_segments`` frames at the model's ``adafuse.input_size``); ``views`` is the number
    of test views per video and ``gflops_dense_video`` / ``gflops_real_video`` the FLOPs of
    all of a video's views.

    Args:
        per_block: also report each block's keep / reuse / skip shares.
        paired_classes: the classes come in time-reversed pairs (2k, 2k + 1), as in the
            generated datasets: also report ``within_pair``, the share of clips whose
            class scores above its partner (temporal modelling apart from recognising the
            object; 0.5 is chance), and ``within_pair/pair<k>`` for the clips of classes
            2k and 2k + 1.
        Others: as ``AccMetric``.
    """

    def __init__(self, per_block: bool = True, paired_classes: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.per_block = per_block
        self.paired_classes = paired_classes

    def process(self, data_batch: Any, data_samples: Sequence[dict]) -> None:
        """Store predictions and labels (AccMetric) plus each clip's decision counts."""
        first = len(self.results)
        super().process(data_batch, data_samples)
        for result, sample in zip(self.results[first:], data_samples):
            if COUNTS_FIELD not in sample:
                raise AdaFuseConfigError(
                    "AdaFuseMetric needs predictions of an AdaFuseRecognizer2D (no "
                    f"{COUNTS_FIELD!r} in the outputs); use AccMetric for other models"
                )
            result[COUNTS_FIELD] = sample[COUNTS_FIELD]
            result[REPORT_FIELD] = sample[REPORT_FIELD]

    def compute_metrics(self, results: list) -> dict:
        """Accuracy of AccMetric, then FLOPs and policy mix from the summed counts."""
        metrics = super().compute_metrics(results)
        if self.paired_classes:
            scores, labels = [r["pred"]["item"] for r in results], [r["label"] for r in results]
            metrics["within_pair"] = within_pair_accuracy(scores, labels)
            for pair, accuracy in per_pair_accuracy(scores, labels).items():
                metrics[f"{PAIR_KEY}{pair}"] = accuracy
        counts = DecisionCounts()
        for result in results:
            for name, tally in result[COUNTS_FIELD].blocks.items():
                total = counts.blocks.setdefault(name, dict.fromkeys(DecisionCounts.FIELDS, 0))
                for field, value in tally.items():
                    total[field] += value
            counts.clips += result[COUNTS_FIELD].clips
        report = report_from_counts(results[0][REPORT_FIELD], counts)
        adaptive, upb, mix = report.adaptive, report.adaptive_upb, report.mix
        assert adaptive is not None and upb is not None and mix is not None  # counts are in
        views = counts.clips / len(results)  # test views per video (clips of T frames)
        metrics.update(
            gflops_dense=report.dense / 1e9,
            gflops_real=adaptive / 1e9,
            gflops_upb=upb / 1e9,
            views=views,
            gflops_dense_video=views * report.dense / 1e9,
            gflops_real_video=views * adaptive / 1e9,
            **mix,
        )
        if self.per_block:
            for block in report.blocks:
                for action in ("keep", "reuse", "skip"):
                    metrics[f"{block.name}/{action}"] = getattr(block, action)
        return metrics
