"""FLOPs: dense counts against fvcore, Eq. 5 against a channel-sliced execution, the loss."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

import adafuse_plugin as af
from adafuse_plugin.flops import _flop_count_analysis
from adafuse_plugin.gate import KEEP, REUSE, SKIP

from .conftest import randomize_norms

timm = pytest.importorskip("timm")


def _conv_input_shapes(model):
    """{(block, 'first'|'second'): input shape} recorded by pre-hooks on the two convs."""
    shapes, handles = {}, []
    for name, _ in af.iter_gates(model):
        block = model.get_submodule(name)
        for which, conv in (("first", block.conv1), ("second", block.conv2)):
            handles.append(
                conv.register_forward_pre_hook(
                    lambda m, a, key=(name, which): shapes.__setitem__(key, a[0].shape)
                )
            )
    return shapes, handles


def _sliced_conv_flops(model, decisions, shapes):
    """Multiply-adds of executing only the channels Eq. 5 says are needed, frame by frame."""
    with FlopCounterMode(display=False) as counter:
        for name, d in decisions.items():
            block = model.get_submodule(name)
            conv1, conv2 = block.conv1, block.conv2
            clips, segments, _ = d.shape
            for n in range(clips):
                for t in range(segments):
                    needed = d[n, t] == KEEP
                    if t + 1 < segments:
                        needed |= d[n, t + 1] == REUSE
                    rows = needed.nonzero().flatten()
                    if len(rows):
                        x = torch.zeros(1, *shapes[name, "first"][1:])
                        F.conv2d(
                            x, conv1.weight[rows], None, conv1.stride, conv1.padding, conv1.dilation
                        )
                    cols = (d[n, t] != SKIP).nonzero().flatten()
                    if len(cols):
                        z = torch.zeros(1, len(cols), *shapes[name, "second"][2:])
                        F.conv2d(
                            z,
                            conv2.weight[:, cols],
                            None,
                            conv2.stride,
                            conv2.padding,
                            conv2.dilation,
                        )
    return counter.get_total_flops() / 2  # flop_counter counts 2 per multiply-add


@pytest.mark.parametrize("name", ["resnet18", "resnet26"])
def test_eq5_matches_a_channel_sliced_execution(name):
    torch.manual_seed(0)
    model = randomize_norms(timm.create_model(name, num_classes=4))
    af.patch_model(model, num_segments=4, policy="random", random_ratios=(0.4, 0.3, 0.3))
    shapes, handles = _conv_input_shapes(model)
    model.eval()
    model(torch.randn(8, 3, 64, 64))  # 2 clips x 4 frames
    for handle in handles:
        handle.remove()
    decisions = af.collect_decisions(model)
    report = af.audit_flops(model, input_shape=(8, 3, 64, 64))
    audited = report.frames * sum(
        b.first_conv_adaptive + b.second_conv_adaptive for b in report.blocks
    )
    assert audited == pytest.approx(_sliced_conv_flops(model, decisions, shapes), rel=1e-9)
    # the whole-model number is the dense count minus exactly those savings, plus policy
    dense_convs = report.frames * sum(b.first_conv + b.second_conv for b in report.blocks)
    assert report.adaptive == pytest.approx(report.dense - dense_convs + audited + report.policy)
    assert report.adaptive < report.adaptive_upb < report.dense + report.policy


def test_last_frame_first_conv_needs_only_keep():
    """The released code's off-by-one: the last frame must use its own keep mask."""
    counts = af.DecisionCounts()
    d = torch.tensor([[[SKIP, KEEP], [REUSE, SKIP], [KEEP, REUSE]]])  # (1, T=3, C=2)
    counts.update({"b": d})
    # needed at t: keep_t or reuse_{t+1}; t=0: [1, 1]; t=1: [0, 1]; t=2 (last): [1, 0]
    assert counts.blocks["b"]["first_conv_needed"] == 4
    assert counts.blocks["b"]["skip"] == 2


def test_dense_flops_equal_fvcore_on_the_unpatched_model():
    model = timm.create_model("resnet18", num_classes=4).eval()
    with torch.no_grad():
        expected = _flop_count_analysis(model, (torch.zeros(2, 3, 64, 64),)).total()
    af.patch_model(model, num_segments=2)
    report = af.audit_flops(model, input_shape=(2, 3, 64, 64))
    assert report.dense == expected
    assert report.adaptive is None  # no forward pass yet: no decisions
    first = model.layer1[0].conv1
    with FlopCounterMode(display=False) as counter:
        first(torch.zeros(1, 64, 16, 16))
    assert report.blocks[0].first_conv == counter.get_total_flops() / 2


@pytest.mark.slow
def test_reference_dense_flops_of_resnet50_at_224():
    model = af.patch_model(timm.create_model("resnet50", num_classes=1000), num_segments=8)
    report = af.audit_flops(model, input_shape=(8, 3, 224, 224))
    assert report.dense / 1e9 == pytest.approx(32.9, rel=0.005)  # the paper's 33.2 (1%)


def test_counts_accumulate_over_clips_not_averages_of_averages(resnet18):
    af.patch_model(resnet18, num_segments=2, policy="random")
    resnet18.eval()
    batches = [torch.randn(2 * n, 3, 32, 32) for n in (1, 3)]
    per_batch = []
    counts = af.DecisionCounts()
    for frames in batches:
        resnet18(frames)
        decisions = af.collect_decisions(resnet18)
        counts.update(decisions)
        per_batch.append(decisions)
    merged = {k: torch.cat([d[k] for d in per_batch]) for k in per_batch[0]}
    a = af.audit_flops(resnet18, (2, 3, 32, 32), decisions=counts)
    b = af.audit_flops(resnet18, (2, 3, 32, 32), decisions=merged)
    assert a.adaptive == pytest.approx(b.adaptive) and a.clips_seen == b.clips_seen == 4
    loader = [(f.view(-1, 2, 3, 32, 32), torch.zeros(1)) for f in batches]  # (N, T, C, H, W)
    torch.manual_seed(0)
    c = af.audit_flops(resnet18, (2, 3, 32, 32), loader=loader, progress=False)
    assert c.clips_seen == 4 and 0.0 < c.saving < 1.0


def test_flops_loss_matches_the_audit_for_the_same_decisions(resnet18):
    af.patch_model(resnet18, num_segments=4, policy="random")
    loss = af.AdaFuseFlopsLoss(resnet18, input_shape=(4, 3, 32, 32), weight=1.0, normalize=False)
    resnet18.eval()
    resnet18(torch.randn(8, 3, 32, 32))
    report = af.audit_flops(resnet18, input_shape=(4, 3, 32, 32))
    assert float(loss.expected_flops()) == pytest.approx(report.adaptive, rel=1e-6)
    assert float(loss()) == pytest.approx(report.adaptive / 1e9, rel=1e-6)
    upb = af.AdaFuseFlopsLoss(resnet18, (4, 3, 32, 32), weight=2.0, mode="upb")
    assert float(upb()) == pytest.approx(2.0 * report.adaptive_upb / report.dense, rel=1e-6)


def test_report_renders_and_serialises(resnet18):
    af.patch_model(resnet18, num_segments=2)
    resnet18.eval()
    resnet18(torch.randn(2, 3, 32, 32))
    report = af.audit_flops(resnet18, input_shape=(2, 3, 32, 32))
    text = report.table()
    assert "layer4.1" in text and "adaptive GFLOPs real" in text
    data = report.to_dict()
    assert data["adaptive"] == report.adaptive and len(data["blocks"]) == 8
    with pytest.raises(af.AdaFuseInputError, match="input_shape"):
        af.audit_flops(resnet18, input_shape=(3, 32, 32))
