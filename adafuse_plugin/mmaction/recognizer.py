"""`AdaFuseRecognizer2D`: mmaction2's Recognizer2D with AdaFuse blocks in its backbone.

Config use (after ``custom_imports=dict(imports=['adafuse_plugin.mmaction'])``)::

    model = dict(
        type='AdaFuseRecognizer2D',
        backbone=dict(type='ResNetTSM', depth=50, num_segments=8, ...),
        cls_head=dict(type='TSMHead', num_segments=8, ...),
        adafuse=dict(num_segments=8, hidden_quota=196608, share_policy=True,
                     flops_weight=0.125, flops_mode='upb', normalize=False,
                     tsm_wiring='authors'))

The ``adafuse`` dict holds `AdaFuseConfig` fields plus the FLOPs-loss and TSM-wiring
settings of :data:`SETTING_DEFAULTS`. Training adds ``loss_flops`` to the loss dict and logs
the keep / reuse / skip ratios and the adaptive GFLOPs of the batch; prediction attaches
each sample's decision counts for `AdaFuseMetric`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import warnings
from collections.abc import Iterator
from typing import Any

import torch
from mmaction.models.recognizers import Recognizer2D
from mmaction.registry import MODELS
from mmengine.logging import print_log
from torch import nn

from ..config import AdaFuseConfig
from ..errors import AdaFuseConfigError, AdaFuseInputError, AdaFuseUnpatchedWarning
from ..flops import DecisionCounts, FlopsReport, audit_flops
from ..gate import GATE_ATTR
from ..loss import AdaFuseFlopsLoss
from ..surgery import collect_decisions, iter_gates, patch_model
from .tsm import TSM_WIRINGS, check_authors_wiring, wire_downsample_to_shifted_input

#: Recognizer settings accepted in the ``adafuse`` dict next to `AdaFuseConfig` fields.
#: ``flops_weight`` is lambda; ``flops_mode`` 'real' or 'upb' (paper Eq. 5);
#: ``normalize`` divides by dense FLOPs (else GFLOPs per clip, like the released
#: scripts); ``flops_target`` is b of |F - b|; ``input_size`` the frame side that
#: FLOPs are counted at (224 in the paper).
#: ``tsm_wiring``: where a ResNetTSM backbone's shifted input goes (see
#: :mod:`adafuse_plugin.mmaction.tsm`): ``'mmaction2'`` (conv1 only) or ``'authors'``
#: (conv1, the policy's pooling and the downsample shortcut, as in the released models).
SETTING_DEFAULTS: dict[str, Any] = dict(
    flops_weight=0.1,
    flops_mode="real",
    normalize=True,
    flops_target=0.0,
    input_size=224,
    tsm_wiring="mmaction2",
)

#: Sample fields set by `AdaFuseRecognizer2D.predict` and read by `AdaFuseMetric`.
COUNTS_FIELD = "adafuse_counts"
REPORT_FIELD = "adafuse_flops"


def split_settings(settings: dict[str, Any] | None) -> tuple[AdaFuseConfig, dict[str, Any]]:
    """Split an ``adafuse=dict(...)`` section into an `AdaFuseConfig` and the recognizer's
    own settings (:data:`SETTING_DEFAULTS`)."""
    settings = dict(settings or {})
    loss = {key: settings.pop(key, default) for key, default in SETTING_DEFAULTS.items()}
    if loss["flops_mode"] not in ("real", "upb"):
        raise AdaFuseConfigError(
            f"adafuse.flops_mode must be 'real' or 'upb', got {loss['flops_mode']!r}"
        )
    if loss["tsm_wiring"] not in TSM_WIRINGS:
        raise AdaFuseConfigError(
            f"adafuse.tsm_wiring must be one of {list(TSM_WIRINGS)}, got {loss['tsm_wiring']!r}"
        )
    if not isinstance(loss["input_size"], int) or loss["input_size"] < 1:
        raise AdaFuseConfigError(
            f"adafuse.input_size must be a positive int, got {loss['input_size']!r}"
        )
    if "num_segments" not in settings:
        raise AdaFuseConfigError(
            "the adafuse section needs num_segments (frames per clip, e.g. 8); it must equal "
            "clip_len * num_clips of the SampleFrames step of every pipeline"
        )
    return AdaFuseConfig.from_dict(settings), loss


@contextlib.contextmanager
def gates_detached(model: nn.Module) -> Iterator[None]:
    """Temporarily remove every gate submodule (its hooks stay registered).

    Backbone ``init_weights`` (Kaiming on every conv/linear, BN constants, strict
    pretrained loaders such as MobileNetV2TSM's) then sees the original module tree
    and neither overwrites nor trips over the policy networks.
    """
    detached = []
    for block_name, _ in list(iter_gates(model)):
        block = model.get_submodule(block_name)
        detached.append((block, block._modules.pop(GATE_ATTR)))
    try:
        yield
    finally:
        for block, gate in detached:
            block._modules[GATE_ATTR] = gate


@MODELS.register_module()
class AdaFuseRecognizer2D(Recognizer2D):
    """Recognizer2D whose backbone is patched with AdaFuse (`patch_model`).

    Args:
        adafuse: `AdaFuseConfig` fields plus the keys of :data:`SETTING_DEFAULTS`.
        Others: as mmaction2's ``Recognizer2D`` (backbone from mmaction2, ``timm.*``
            or ``torchvision.*``).
    """

    def __init__(
        self,
        backbone: dict,
        cls_head: dict | None = None,
        neck: dict | None = None,
        train_cfg: dict | None = None,
        test_cfg: dict | None = None,
        data_preprocessor: dict | None = None,
        adafuse: dict | None = None,
    ) -> None:
        config, self.settings = split_settings(adafuse)
        super().__init__(
            backbone=backbone,
            cls_head=cls_head,
            neck=neck,
            train_cfg=train_cfg,
            test_cfg=test_cfg,
            data_preprocessor=data_preprocessor,
        )
        for owner in ("backbone", "cls_head"):
            segments = getattr(getattr(self, owner, None), "num_segments", None)
            if segments is not None and segments != config.num_segments:
                raise AdaFuseConfigError(
                    f"adafuse.num_segments={config.num_segments} but {owner}.num_segments="
                    f"{segments}; set both to the frames per clip"
                )
        if self.settings["tsm_wiring"] == "authors":
            shift_div = check_authors_wiring(self.backbone)
            if config.policy_shift_div not in (None, shift_div):
                raise AdaFuseConfigError(
                    f"adafuse.policy_shift_div={config.policy_shift_div} contradicts the "
                    f"backbone's shift_div={shift_div}; leave it unset with tsm_wiring='authors'"
                )
            config = dataclasses.replace(config, policy_shift_div=shift_div)
            wire_downsample_to_shifted_input(self.backbone)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", AdaFuseUnpatchedWarning)
            patch_model(self.backbone, config)
        for warning in caught:  # into mmengine's log (and the console), not only Python's
            print_log(str(warning.message), logger="current", level=logging.WARNING)
        self.adafuse_config = config
        self._flops_loss: AdaFuseFlopsLoss | None = None
        self._static_report: FlopsReport | None = None

    @property
    def clip_shape(self) -> tuple[int, int, int, int]:
        """(T, 3, S, S): the clip that FLOPs are counted for."""
        size = self.settings["input_size"]
        return (self.adafuse_config.num_segments, 3, size, size)

    @property
    def flops_loss(self) -> AdaFuseFlopsLoss:
        """The FLOPs loss, built on first use (its dense FLOPs count traces the backbone)."""
        loss = self._flops_loss
        if loss is None:
            s = self.settings
            loss = AdaFuseFlopsLoss(
                self.backbone,
                input_shape=self.clip_shape,
                weight=s["flops_weight"],
                mode=s["flops_mode"],
                normalize=s["normalize"],
                target=s["flops_target"],
            )
            # Kept out of the module tree: it has no parameters or state to save.
            self.__dict__["_flops_loss"] = loss
        return loss

    def flops_report(self) -> FlopsReport:
        """Dense per-block FLOPs of one clip (no decisions), computed once."""
        if self._static_report is None:
            self._static_report = audit_flops(self.backbone, self.clip_shape, progress=False)
        return self._static_report

    def init_weights(self) -> None:
        """mmaction2's initialisation of everything except the policy networks."""
        with gates_detached(self.backbone):
            super().init_weights()

    def train(self, mode: bool = True) -> AdaFuseRecognizer2D:
        """Keep policy networks trainable under ``norm_eval``, ``partial_bn`` and
        ``frozen_stages``: they are new modules with nothing pretrained to protect."""
        super().train(mode)
        for _, gate in iter_gates(self.backbone):
            if gate.policy_net is not None:
                gate.policy_net.train(mode)
                gate.policy_net.requires_grad_(True)
        return self

    def _check_frames(self, inputs: torch.Tensor, views_allowed: bool) -> None:
        """Clips must hold num_segments frames (or, at test time, whole views of them):
        otherwise AdaFuse's clips would straddle two videos or split one."""
        segments = self.adafuse_config.num_segments
        frames = inputs.shape[1] if inputs.dim() == 5 else None
        if frames == segments or (views_allowed and frames and frames % segments == 0):
            return
        shape = tuple(inputs.shape)
        raise AdaFuseInputError(
            f"AdaFuseRecognizer2D got inputs of shape {shape}: {frames} frames per sample, "
            f"but adafuse.num_segments={segments}"
            + (" (or a multiple, one per test view)" if views_allowed else "")
            + "; make clip_len * num_clips of the pipeline's SampleFrames equal num_segments"
        )

    def loss(self, inputs: torch.Tensor, data_samples: list, **kwargs: Any) -> dict:
        """Recognizer2D losses plus ``loss_flops`` and the batch's policy statistics."""
        self._check_frames(inputs, views_allowed=False)
        losses = super().loss(inputs, data_samples, **kwargs)
        flops_loss = self.flops_loss
        losses["loss_flops"] = flops_loss()
        counts = DecisionCounts()
        counts.update(collect_decisions(self.backbone))
        device = losses["loss_flops"].device
        for action, share in counts.mix().items():
            losses[f"{action}_ratio"] = torch.tensor(share, device=device)
        losses["gflops_adaptive"] = torch.tensor(flops_loss.last_gflops, device=device)
        return losses

    def predict(self, inputs: torch.Tensor, data_samples: list, **kwargs: Any) -> list:
        """Recognizer2D predictions, each with its decision counts and the FLOPs table."""
        self._check_frames(inputs, views_allowed=True)
        samples = super().predict(inputs, data_samples, **kwargs)
        report = self.flops_report()
        decisions = collect_decisions(self.backbone)
        views = next(iter(decisions.values())).shape[0] // len(samples)
        for index, sample in enumerate(samples):
            counts = DecisionCounts()
            counts.update({k: d[index * views : (index + 1) * views] for k, d in decisions.items()})
            sample.set_field(counts, COUNTS_FIELD, field_type="metainfo")
            sample.set_field(report, REPORT_FIELD, field_type="metainfo")
        return samples


def report_from_counts(static: FlopsReport, counts: DecisionCounts) -> FlopsReport:
    """A dense `FlopsReport` completed with accumulated decision counts (Eq. 5)."""
    blocks = [block.with_decisions(counts) for block in static.blocks]
    return dataclasses.replace(static, blocks=blocks, clips_seen=counts.clips, mix=counts.mix())
