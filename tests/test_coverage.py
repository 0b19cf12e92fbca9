"""Coverage: patching works on many real backbones without touching their weights."""

from __future__ import annotations

import pytest
import torch

import adafuse_plugin as af
from adafuse_plugin.gate import GATE_ATTR

from .conftest import randomize_norms

timm = pytest.importorskip("timm")

#: (model name, block class names expected to be patched), grouped by family.
TIMM_MODELS = {
    # ResNet family: plain, -D, -T, ResNeXt, SE, ECA, anti-aliased
    "resnet18": {"BasicBlock"},
    "resnet34": {"BasicBlock"},
    "resnet18d": {"BasicBlock"},
    "seresnet18": {"BasicBlock"},
    "resnet50": {"Bottleneck"},
    "resnet26d": {"Bottleneck"},
    "ecaresnet26t": {"Bottleneck"},
    "seresnext26d_32x4d": {"Bottleneck"},
    "resnetaa50": {"Bottleneck"},
    # RegNet, ByobNet, CSPNet, SKNet, DLA, Res2Net
    "regnetx_002": {"Bottleneck"},
    "regnety_002": {"Bottleneck"},
    "regnetz_b16": {"BottleneckBlock"},
    "gernet_s": {"BasicBlock", "BottleneckBlock"},
    "resnext26ts": {"BottleneckBlock"},
    "gcresnet33ts": {"BottleneckBlock"},
    "cspresnet50": {"BottleneckBlock"},
    "cs3darknet_s": {"DarkBlock"},
    "skresnet18": {"SelectiveKernelBasic"},
    "skresnext50_32x4d": {"SelectiveKernelBottleneck"},
    "dla34": {"DlaBasic"},
    "res2net50_14w_8s": {"Bottle2neck"},
    # EfficientNet family: inverted residuals, depthwise-separable, edge residuals
    "efficientnet_b0": {"InvertedResidual", "DepthwiseSeparableConv"},
    "tf_efficientnet_lite0": {"InvertedResidual", "DepthwiseSeparableConv"},
    "efficientnet_es": {"InvertedResidual", "EdgeResidual"},
    "mobilenetv2_050": {"InvertedResidual", "DepthwiseSeparableConv"},
    "mobilenetv3_small_050": {"InvertedResidual", "DepthwiseSeparableConv"},
    "mobilenetv3_large_100": {"InvertedResidual", "DepthwiseSeparableConv"},
    "mixnet_s": {"InvertedResidual", "DepthwiseSeparableConv"},
    "mnasnet_small": {"InvertedResidual", "DepthwiseSeparableConv"},
    "semnasnet_050": {"InvertedResidual", "DepthwiseSeparableConv"},
    "fbnetc_100": {"InvertedResidual"},
    "spnasnet_100": {"InvertedResidual", "DepthwiseSeparableConv"},
    "tinynet_e": {"InvertedResidual", "DepthwiseSeparableConv"},
    "hardcorenas_a": {"InvertedResidual", "DepthwiseSeparableConv"},
    "lcnet_050": {"DepthwiseSeparableConv"},
}


def check_patching(
    model: torch.nn.Module, expected_classes: set[str], size: int = 64, segments: int = 2
) -> None:
    """Keep-only equals unpatched; AdaFuse runs in train and eval; keys are preserved."""
    randomize_norms(model).eval()
    x = torch.randn(2 * segments, 3, size, size)  # 2 clips
    with torch.no_grad():
        reference = model(x)
    keys = set(model.state_dict())

    af.patch_model(model, num_segments=segments, policy="keep")
    with torch.no_grad():
        assert torch.equal(model(x), reference), "keep-only must reproduce the model exactly"
    af.unpatch_model(model)

    af.patch_model(model, num_segments=segments, policy="random")
    with torch.no_grad():
        assert not torch.allclose(model(x), reference), "fusion must change the output"
    af.unpatch_model(model)

    af.patch_model(model, num_segments=segments)
    patched = {type(model.get_submodule(n)).__name__ for n, _ in af.iter_gates(model)}
    assert patched == expected_classes
    new_keys = set(model.state_dict()) - keys
    assert keys <= set(model.state_dict())
    assert new_keys and all(f".{GATE_ATTR}." in k for k in new_keys)
    model.train()
    out = model(x)
    out.float().sum().backward()
    model.eval()
    with torch.no_grad():
        assert model(x).shape == reference.shape
    for name, d in af.collect_decisions(model).items():
        gate = model.get_submodule(name).adafuse
        assert d.shape == (2, segments, gate.out_channels), name


def test_at_least_25_timm_models_are_covered():
    assert len(TIMM_MODELS) >= 25


#: One model per family in the fast loop; the others run with the full suite.
FAST_TIMM_MODELS = {"resnet18", "efficientnet_b0", "regnetx_002"}


@pytest.mark.parametrize(
    "name",
    [
        pytest.param(name, marks=() if name in FAST_TIMM_MODELS else pytest.mark.slow)
        for name in sorted(TIMM_MODELS)
    ],
)
def test_timm_model(name):
    torch.manual_seed(0)
    check_patching(timm.create_model(name, num_classes=3), TIMM_MODELS[name])


@pytest.mark.parametrize(
    ("name", "block"),
    [
        ("resnet18", "BasicBlock"),
        pytest.param("resnet50", "Bottleneck", marks=pytest.mark.slow),
        pytest.param("densenet121", "_DenseLayer", marks=pytest.mark.slow),
    ],
)
def test_torchvision_model(name, block):
    models = pytest.importorskip("torchvision.models")
    torch.manual_seed(0)
    check_patching(getattr(models, name)(weights=None, num_classes=3), {block})
