"""Surgery: state_dict compatibility, copy/pickle/trace, unpatch, errors, policy sharing."""

from __future__ import annotations

import copy
import io
import pickle
import re

import pytest
import torch
from torch import nn

import adafuse_plugin as af


def _adafuse_keys(keys):
    return {k for k in keys if ".adafuse." in k}


def test_surgery_keeps_every_original_key(resnet18):
    original = resnet18.state_dict()
    af.patch_model(resnet18, num_segments=2)
    patched = resnet18.state_dict()
    assert set(original) <= set(patched)
    assert set(patched) - set(original) == _adafuse_keys(patched)
    assert _adafuse_keys(patched)


def test_unpatched_checkpoint_loads_with_only_adafuse_keys_missing(resnet18):
    checkpoint = copy.deepcopy(resnet18.state_dict())  # e.g. ImageNet weights
    af.patch_model(resnet18, num_segments=2)
    result = resnet18.load_state_dict(checkpoint, strict=False)
    assert result.unexpected_keys == []
    # BatchNorm never reports num_batches_tracked as missing (backward compatibility).
    expected = {
        k for k in _adafuse_keys(resnet18.state_dict()) if not k.endswith("num_batches_tracked")
    }
    assert set(result.missing_keys) == expected


def test_patched_model_saves_and_loads_strictly(resnet18):
    timm = pytest.importorskip("timm")
    af.patch_model(resnet18, num_segments=2)
    buffer = io.BytesIO()
    torch.save(resnet18.state_dict(), buffer)
    buffer.seek(0)
    other = af.patch_model(timm.create_model("resnet18", num_classes=5), num_segments=2)
    other.load_state_dict(torch.load(buffer, weights_only=True), strict=True)
    x = torch.randn(4, 3, 64, 64)
    resnet18.eval(), other.eval()
    assert torch.equal(resnet18(x), other(x))


@pytest.mark.slow
def test_deepcopy_pickle_and_trace_after_a_training_step(resnet18):
    af.patch_model(resnet18, num_segments=2)
    x = torch.randn(4, 3, 64, 64)
    resnet18.train()
    resnet18(x).sum()  # leaves graph-attached masks on the gates
    copied = copy.deepcopy(resnet18)
    unpickled = pickle.loads(pickle.dumps(resnet18))
    for model in (resnet18, copied, unpickled):
        model.eval()
    expected = resnet18(x)
    assert torch.equal(copied(x), expected)
    assert torch.equal(unpickled(x), expected)
    assert af.collect_decisions(copied)  # the copy's hooks drive the copy's gates
    with pytest.warns(torch.jit.TracerWarning):
        traced = torch.jit.trace(resnet18, x)
    assert torch.allclose(traced(x), expected)


def test_unpatch_restores_the_original_module_tree(resnet18):
    resnet18.eval()
    x = torch.randn(4, 3, 64, 64)
    before = [(n, type(m)) for n, m in resnet18.named_modules()]
    keys = list(resnet18.state_dict())
    reference = resnet18(x)
    af.patch_model(resnet18, num_segments=2, policy="random")
    assert not torch.equal(resnet18(x), reference)
    af.unpatch_model(resnet18)
    assert [(n, type(m)) for n, m in resnet18.named_modules()] == before
    assert list(resnet18.state_dict()) == keys
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in resnet18.modules())
    assert torch.equal(resnet18(x), reference)
    af.patch_model(resnet18, num_segments=2)  # can be patched again


def test_stage_and_name_selection(resnet18):
    af.patch_model(resnet18, num_segments=2, stages=(-1,))
    assert [n for n, _ in af.iter_gates(resnet18)] == ["layer4.0", "layer4.1"]
    af.unpatch_model(resnet18)
    af.patch_model(resnet18, num_segments=2, include=("layer2.*", "layer3.*"), exclude=("*.1",))
    assert [n for n, _ in af.iter_gates(resnet18)] == ["layer2.0", "layer3.0"]


def test_shared_policies_and_hidden_quota():
    """Blocks of equal shape share the two Linear layers; each keeps its own BatchNorm1d
    (the authors' networks), so parameters = 8 shared Linear pairs + 16 norms."""
    timm = pytest.importorskip("timm")
    model = timm.create_model("resnet50", num_classes=174)
    base = sum(p.numel() for p in model.parameters())
    af.patch_model(model, num_segments=8, share_policy=True, hidden_quota=196608)
    gates = [g for _, g in af.iter_gates(model)]
    assert len({id(g.policy_net.fc1) for g in gates}) == 8  # one per (c, c') in ResNet-50
    assert len({id(g.policy_net.norm) for g in gates}) == 16  # one per block
    first, last = model.layer3[1].adafuse.policy_net, model.layer3[5].adafuse.policy_net
    assert first.fc1 is last.fc1 and first.fc2 is last.fc2 and first.norm is not last.norm
    assert model.layer4[0].adafuse.policy_net.fc1.out_features == 196608 // 512

    def linears(c, c_out):
        hidden = 196608 // c_out
        return 2 * c * hidden + hidden + hidden * 3 * c_out + 3 * c_out

    shapes = {
        (64, 64),
        (256, 64),
        (256, 128),
        (512, 128),
        (512, 256),
        (1024, 256),
        (1024, 512),
        (2048, 512),
    }
    norms = sum(2 * 196608 // g.out_channels for g in gates)
    added = sum(p.numel() for p in model.parameters()) - base
    assert added == sum(linears(*s) for s in shapes) + norms
    assert f"{added:,}" in str(af.summary(model))
    assert sum(row[4] for row in af.summary(model).rows) == added


def test_shared_policy_linears_get_summed_gradients_and_separate_norms(resnet18):
    """Training a shared policy: a shared Linear's gradient is the sum of the gradients
    each block would give its own copy; the BatchNorm1d statistics stay per block."""
    import copy

    torch.manual_seed(0)
    shared = af.patch_model(copy.deepcopy(resnet18), num_segments=2, share_policy=True)
    separate = af.patch_model(copy.deepcopy(resnet18), num_segments=2, share_policy=False)
    separate.load_state_dict(shared.state_dict())
    x = torch.randn(4, 3, 32, 32)
    for model in (shared, separate):
        torch.manual_seed(1)  # same Gumbel noise in both
        model.train()
        model(x).square().mean().backward()
    # layer2.1, layer3.1, layer4.1 share with nobody; layer1.0 and layer1.1 share.
    a, b = shared.layer1[0].adafuse.policy_net, shared.layer1[1].adafuse.policy_net
    assert a.fc1 is b.fc1 and a.norm is not b.norm
    sa, sb = separate.layer1[0].adafuse.policy_net, separate.layer1[1].adafuse.policy_net
    for name in ("fc1", "fc2"):
        summed = getattr(sa, name).weight.grad + getattr(sb, name).weight.grad
        torch.testing.assert_close(getattr(a, name).weight.grad, summed)
    assert not torch.equal(a.norm.running_mean, b.norm.running_mean)
    torch.testing.assert_close(a.norm.running_mean, sa.norm.running_mean)
    torch.testing.assert_close(b.norm.running_mean, sb.norm.running_mean)


def test_old_shared_norm_checkpoints_load_into_per_block_norms(resnet18):
    """Migration: a state dict saved when shared policies also shared their BatchNorm1d
    lists that norm under every block; loaded now, each block gets a copy, and eval
    outputs equal the old model's."""
    import copy

    old = af.patch_model(copy.deepcopy(resnet18), num_segments=2, share_policy=True)
    first = old.layer1[0].adafuse.policy_net
    old.layer1[1].adafuse.policy_net.norm = first.norm  # the old layout: one shared norm
    with torch.no_grad():
        first.norm.running_mean.normal_()
        first.norm.weight.uniform_(0.5, 2.0)
        for _, gate in af.iter_gates(old):
            gate.policy_net.fc2.weight.normal_()
    new = af.patch_model(copy.deepcopy(resnet18), num_segments=2, share_policy=True)
    new.load_state_dict(old.state_dict())
    old.eval(), new.eval()
    x = torch.randn(4, 3, 32, 32)
    torch.testing.assert_close(new(x), old(x))
    assert new.layer1[1].adafuse.policy_net.norm is not new.layer1[0].adafuse.policy_net.norm


def test_save_and_load_only_the_adafuse_weights(resnet18, tmp_path):
    timm = pytest.importorskip("timm")
    af.patch_model(resnet18, num_segments=2, share_policy=True, granularity=4)
    af.save_adafuse(resnet18, tmp_path / "adapter")
    fresh = timm.create_model("resnet18", num_classes=5)
    fresh.load_state_dict(resnet18.state_dict(), strict=False)
    af.load_adafuse(fresh, tmp_path / "adapter")
    assert af.get_config(fresh) == af.get_config(resnet18)
    for key, value in af.adafuse_state_dict(resnet18).items():
        assert torch.equal(fresh.state_dict()[key], value)


def test_mismatched_adafuse_checkpoint_is_refused(resnet18, tmp_path):
    timm = pytest.importorskip("timm")
    af.patch_model(resnet18, num_segments=2)
    af.save_adafuse(resnet18, tmp_path / "r18")
    resnet34 = timm.create_model("resnet34", num_classes=5)
    with pytest.raises(af.AdaFuseCheckpointError, match="does not match the model"):
        af.load_adafuse(resnet34, tmp_path / "r18")
    other = af.patch_model(timm.create_model("resnet18"), num_segments=4)
    with pytest.raises(af.AdaFuseCheckpointError, match="patched with"):
        af.load_adafuse(other, tmp_path / "r18")
    with pytest.raises(af.AdaFuseCheckpointError, match="has no adafuse_config.json"):
        af.load_adafuse(other, tmp_path)


# -- bad input -------------------------------------------------------------------------


def test_batch_not_divisible_by_num_segments(resnet18):
    af.patch_model(resnet18, num_segments=8)
    with pytest.raises(af.AdaFuseInputError, match=r"model got 12 frames.*num_segments=8"):
        resnet18(torch.randn(12, 3, 32, 32))
    with pytest.raises(af.AdaFuseInputError, match=r"'layer1.0'.*12 frames.*num_segments=8"):
        resnet18.layer1[0](torch.randn(12, 64, 8, 8))  # a block called on its own


def test_wrong_input_rank(resnet18):
    af.patch_model(resnet18, num_segments=2)
    block = resnet18.layer1[0]
    with pytest.raises(af.AdaFuseInputError, match=r"'layer1.0' expects a 4-D.*flatten"):
        block(torch.randn(2, 2, 64, 8, 8))


def test_no_supported_block():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3))
    with pytest.raises(af.AdaFusePatchError, match="no supported residual block.*register_block"):
        af.patch_model(model)


def test_double_patching(resnet18):
    af.patch_model(resnet18, num_segments=2)
    with pytest.raises(af.AdaFusePatchError, match="already patched.*unpatch_model"):
        af.patch_model(resnet18, num_segments=2)


def test_unpatch_or_decisions_of_an_unpatched_model(resnet18):
    with pytest.raises(af.AdaFusePatchError, match="not patched"):
        af.unpatch_model(resnet18)
    with pytest.raises(af.AdaFusePatchError, match="not patched"):
        af.collect_decisions(resnet18)
    af.patch_model(resnet18, num_segments=2)
    with pytest.raises(af.AdaFusePatchError, match="run a forward pass"):
        af.collect_decisions(resnet18)


def test_adapter_that_does_not_fit_its_class_names_the_path(monkeypatch):
    from adafuse_plugin import adapters

    # Registered for this test only: the registry is restored afterwards.
    monkeypatch.setattr(adapters, "_REGISTRY", dict(adapters._REGISTRY))

    class OddBlock(nn.Module):
        def __init__(self):
            super().__init__()
            self.first = nn.Conv2d(4, 4, 1)
            self.second = nn.Conv2d(4, 4, 1)

        def forward(self, x):
            return self.second(self.first(x))

    af.register_block_adapter(
        OddBlock, first_stage="act1", first_conv="conv1", second_conv="conv2", overwrite=True
    )
    with pytest.raises(af.AdaFusePatchError, match=r"OddBlock has no submodule 'conv1'"):
        af.patch_model(nn.Sequential(OddBlock()), num_segments=1)
    with pytest.raises(af.AdaFusePatchError, match="already registered"):
        af.register_block_adapter(
            OddBlock, first_stage="first", first_conv="first", second_conv="second"
        )


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"stages": (7,)}, "out of range: the model has 4 stages"),
        ({"include": ("nothing*",)}, "matches none of the 8 supported blocks"),
        ({"granularity": 3}, "granularity=3 does not divide its 64"),
        ({"policy": "magic"}, "unknown policy 'magic'"),
        ({"num_segments": 0}, "num_segments must be a positive int"),
        ({"hidden_size": 8, "hidden_quota": 8}, "not both"),
        ({"random_ratios": (0.5, 0.5, 0.5)}, "summing to 1"),
    ],
)
def test_bad_config_values(resnet18, overrides, message):
    with pytest.raises(af.AdaFuseConfigError, match=message):
        af.patch_model(resnet18, **overrides)


def test_config_round_trip_and_unknown_fields():
    config = af.AdaFuseConfig(num_segments=4, stages=[-1], policy="keep_reuse")
    assert af.AdaFuseConfig.from_dict(config.to_dict()) == config
    with pytest.raises(af.AdaFuseConfigError, match="unknown AdaFuseConfig field"):
        af.AdaFuseConfig.from_dict({"segments": 8})


@pytest.mark.parametrize(
    "field, value",
    [
        ("num_segments", True),
        ("hidden_size", True),
        ("granularity", False),
        ("tau", float("inf")),
        ("tau", True),
        ("tau", float("nan")),
    ],
)
def test_bools_and_non_finite_numbers_are_rejected(field, value):
    with pytest.raises(af.AdaFuseConfigError, match=field):
        af.AdaFuseConfig(**{field: value})


def test_empty_decision_counts_explain_themselves():
    with pytest.raises(af.AdaFuseInputError, match="no decisions counted yet"):
        af.DecisionCounts().mix()


def test_corrupt_adapter_files_are_named_and_leave_the_model_unpatched(resnet18, tmp_path):
    timm = pytest.importorskip("timm")
    af.patch_model(resnet18, num_segments=2)
    saved = af.save_adafuse(resnet18, tmp_path / "adapter")
    fresh = timm.create_model("resnet18", num_classes=5)
    weights = saved / "adafuse_weights.safetensors"
    intact = weights.read_bytes()
    weights.write_bytes(intact[: len(intact) // 2])
    with pytest.raises(af.AdaFuseCheckpointError, match="adafuse_weights.safetensors cannot"):
        af.load_adafuse(fresh, saved)
    weights.write_bytes(intact)
    config = saved / "adafuse_config.json"
    config.write_text("{not json")
    with pytest.raises(af.AdaFuseCheckpointError, match="adafuse_config.json is not a valid"):
        af.load_adafuse(fresh, saved)
    config.write_text('{"num_segments": 2, "include": ["layer1.*"]}')  # fewer blocks
    with pytest.raises(af.AdaFuseCheckpointError, match="does not match the model"):
        af.load_adafuse(fresh, saved)
    assert not af.is_patched(fresh)  # no half-loaded random policy left behind


@pytest.mark.slow
def test_blocks_left_alone_are_reported_and_strict_refuses_them():
    """mobilenetv4: 1 of 22 blocks has an adapter; the 21 others are named, not hidden."""
    import warnings

    timm = pytest.importorskip("timm")
    model = timm.create_model("mobilenetv4_conv_medium", num_classes=5)
    left = af.find_unsupported_blocks(model)
    assert len(left) == 21 and {type(m).__name__ for _, m in left} == {"UniversalInvertedResidual"}
    with pytest.raises(af.AdaFusePatchError, match=r"UniversalInvertedResidual x 21.*strict"):
        af.patch_model(model, num_segments=2, strict=True)
    assert not af.is_patched(model)
    with pytest.warns(af.AdaFuseUnpatchedWarning, match="21 residual-like block") as caught:
        af.patch_model(model, num_segments=2)
    assert "left alone: 21 residual-like blocks" in str(af.summary(model))
    # Their share of dense FLOPs, in the warning and the audit, against torch's own
    # counter (2 FLOPs per multiply-add, convs and matmuls only: a close, independent count).
    from torch.utils.flop_counter import FlopCounterMode

    names = {name for name, _ in left}
    with torch.no_grad(), af.flops.gates_disabled(model), FlopCounterMode(display=False) as counter:
        model.eval()(torch.zeros(2, 3, 96, 96))
    counts = counter.get_flop_counts()
    total = sum(counts["Global"].values())
    inside = sum(sum(counts[f"MobileNetV3.{n}"].values()) for n in names)
    report = af.audit_flops(model, input_shape=(2, 3, 96, 96), progress=False)
    assert report.unpatched.keys() == names
    assert report.unpatched_share == pytest.approx(inside / total, abs=0.02)
    assert f"blocks without a gate 21, {report.unpatched_share:.1%}" in report.table()
    warned = float(re.search(r"\((\d+)% of dense FLOPs", str(caught[0].message)).group(1))
    assert warned == pytest.approx(100 * inside / total, abs=3)
    resnet = timm.create_model("resnet18", num_classes=5)
    with warnings.catch_warnings():
        warnings.simplefilter("error", af.AdaFuseUnpatchedWarning)
        af.patch_model(resnet, num_segments=2, strict=True)  # every block supported
