"""Coverage of mmaction2 backbones (ResNet, ResNetTSM, TANet, MobileNetV2TSM)."""

from __future__ import annotations

import pytest
import torch

from .test_coverage import check_patching

pytest.importorskip("mmaction")


def _backbones():
    from adafuse_plugin.mmaction.compat import apply_compat_fixes

    apply_compat_fixes()
    from mmaction.models.backbones import MobileNetV2TSM, ResNet, ResNetTSM, TANet

    return {
        "resnet18": (lambda: ResNet(depth=18, pretrained=None), {"BasicBlock"}, 2),
        "resnet50_tsm": (
            lambda: ResNetTSM(depth=50, num_segments=2, pretrained=None, pretrained2d=False),
            {"Bottleneck"},
            2,
        ),
        "tanet50": (  # TAM needs at least 3 frames
            lambda: TANet(depth=50, num_segments=3, pretrained=None, tam_cfg=dict()),
            {"TABlock"},
            3,
        ),
        "mobilenetv2_tsm": (
            lambda: MobileNetV2TSM(num_segments=2, pretrained=None, pretrained2d=False),
            {"InvertedResidual"},
            2,
        ),
    }


@pytest.mark.slow
@pytest.mark.parametrize("name", ["resnet18", "resnet50_tsm", "tanet50", "mobilenetv2_tsm"])
def test_mmaction_backbone(name):
    build, classes, segments = _backbones()[name]
    torch.manual_seed(0)
    backbone = build()
    backbone.init_weights()
    check_patching(backbone, classes, segments=segments)
