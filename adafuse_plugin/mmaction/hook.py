"""`AdaFuseHook`: Gumbel temperature schedule and per-block policy statistics in training."""

from __future__ import annotations

import math
import random
from typing import Any

import numpy as np
import torch
from mmaction.registry import HOOKS
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper

from ..errors import AdaFuseConfigError
from ..flops import DecisionCounts
from ..gate import ACTIONS
from ..surgery import collect_decisions, is_patched, set_temperature

SCHEDULES = ("constant", "linear", "exp")


@HOOKS.register_module()
class AdaFuseHook(Hook):
    """Set the Gumbel temperature each iteration and log per-block keep / reuse / skip.

    The paper keeps tau = 0.67 constant (the default). ``schedule='linear'`` or
    ``'exp'`` anneals from ``tau`` to ``tau_end`` over the whole run (by iteration).
    ``flops_warmup`` ramps the FLOPs-loss weight linearly from 0 to the model's
    ``flops_weight`` over that fraction of the run: from scratch (no pretrained
    backbone), an early FLOPs penalty makes the policy skip before it has learnt what
    to fuse.
    ``reseed_epochs`` reseeds Python, numpy and torch at the start of every epoch from
    the run's seed plus the epoch (as the authors' training script does): a run resumed
    from an epoch checkpoint then draws the same Gumbel noise and data order as an
    uninterrupted one, so resuming is exact (mmengine restores the run's seed on resume).
    Logged scalars: ``train/tau`` and ``train/<block>/keep|reuse|skip`` (every
    ``interval`` iterations); the overall ratios and adaptive GFLOPs of a batch are
    in the loss dict of `AdaFuseRecognizer2D` (``keep_ratio``, ``gflops_adaptive``...).

    Args:
        tau: temperature (start temperature of a schedule).
        tau_end: final temperature of a schedule.
        schedule: one of ``constant``, ``linear``, ``exp``.
        interval: log per-block statistics every this many iterations.
        flops_warmup: fraction of the run over which the FLOPs-loss weight ramps up
            (0 = full weight from the first iteration, the paper's setting).
        reseed_epochs: reseed every random generator at each epoch start (exact resume).
    """

    priority = "NORMAL"

    def __init__(
        self,
        tau: float = 0.67,
        tau_end: float | None = None,
        schedule: str = "constant",
        interval: int = 1,
        flops_warmup: float = 0.0,
        reseed_epochs: bool = True,
    ) -> None:
        if schedule not in SCHEDULES:
            raise AdaFuseConfigError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
        if schedule != "constant" and tau_end is None:
            raise AdaFuseConfigError(f"schedule={schedule!r} needs tau_end")
        for name, value in (("tau", tau), ("tau_end", tau_end)):
            if value is not None and not value > 0:
                raise AdaFuseConfigError(f"{name} must be > 0, got {value!r}")
        if not isinstance(interval, int) or interval < 1:
            raise AdaFuseConfigError(f"interval must be a positive int, got {interval!r}")
        if not 0.0 <= flops_warmup <= 1.0:
            raise AdaFuseConfigError(f"flops_warmup must be in [0, 1], got {flops_warmup!r}")
        self.tau, self.tau_end, self.schedule, self.interval = tau, tau_end, schedule, interval
        self.flops_warmup = flops_warmup
        self.reseed_epochs = reseed_epochs

    def before_train_epoch(self, runner: Any) -> None:
        if self.reseed_epochs:
            seed = runner.seed + runner.epoch  # runner.seed already differs per rank if asked
            random.seed(seed)
            np.random.seed(seed % 2**32)
            torch.manual_seed(seed)  # CUDA generators too

    def temperature(self, iteration: int, max_iters: int) -> float:
        """The temperature at ``iteration`` of ``max_iters``."""
        if self.schedule == "constant" or self.tau_end is None:  # __init__ requires tau_end
            return self.tau
        progress = min(1.0, iteration / max(1, max_iters - 1))
        if self.schedule == "linear":
            return self.tau + (self.tau_end - self.tau) * progress
        return self.tau * math.exp(progress * math.log(self.tau_end / self.tau))

    def flops_weight_factor(self, iteration: int, max_iters: int) -> float:
        """Share of the configured FLOPs-loss weight in force at ``iteration``."""
        if self.flops_warmup == 0.0:
            return 1.0
        return min(1.0, iteration / (self.flops_warmup * max_iters))

    @staticmethod
    def _model(runner: Any) -> Any:
        return runner.model.module if is_model_wrapper(runner.model) else runner.model

    @classmethod
    def _backbone(cls, runner: Any) -> Any:
        model = cls._model(runner)
        backbone = getattr(model, "backbone", model)
        if not is_patched(backbone):
            raise AdaFuseConfigError(
                f"AdaFuseHook needs a model patched with AdaFuse; {type(model).__name__} has "
                "no AdaFuse blocks (use type='AdaFuseRecognizer2D')"
            )
        return backbone

    def before_train_iter(self, runner: Any, batch_idx: int, data_batch: Any = None) -> None:
        tau = self.temperature(runner.iter, runner.max_iters)
        set_temperature(self._backbone(runner), tau)
        runner.message_hub.update_scalar("train/tau", tau)
        model = self._model(runner)
        if self.flops_warmup and hasattr(model, "settings"):
            factor = self.flops_weight_factor(runner.iter, runner.max_iters)
            model.flops_loss.weight = model.settings["flops_weight"] * factor
            runner.message_hub.update_scalar("train/flops_weight", model.flops_loss.weight)

    def after_train_iter(
        self, runner: Any, batch_idx: int, data_batch: Any = None, outputs: Any = None
    ) -> None:
        if not self.every_n_train_iters(runner, self.interval):
            return
        counts = DecisionCounts()
        counts.update(collect_decisions(self._backbone(runner)))
        for name in counts.blocks:
            for action in ACTIONS:
                runner.message_hub.update_scalar(
                    f"train/{name}/{action}", counts.fraction(name, action)
                )
