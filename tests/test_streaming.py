"""StreamingRunner: frame-by-frame output equals the patched model, work equals Eq. 5."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import adafuse_plugin as af
from adafuse_plugin.gate import KEEP, REUSE, SKIP
from adafuse_plugin.streaming import (
    AdaFuseStreamingError,
    StreamingRunner,
    supported_streaming_blocks,
)
from adafuse_plugin.streaming._selection import _ModeTimer

from .conftest import always_choose, force_decisions, randomize_norms

timm = pytest.importorskip("timm")
torchvision = pytest.importorskip("torchvision")

SIZE = 32  # small frames keep the file fast (layer4 maps are 1x1)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def randomize_policies(model: nn.Module, seed: int = 1) -> nn.Module:
    """Policy weights large enough that decisions are mixed and depend on the input."""
    generator = torch.Generator().manual_seed(seed)
    for _, gate in af.iter_gates(model):
        net = gate.policy_net
        with torch.no_grad():
            for parameter in net.parameters():
                parameter.copy_(torch.randn(parameter.shape, generator=generator))
            net.norm.running_var.uniform_(0.5, 1.5, generator=generator)
    return model


def build(name: str, frames: int, **config: object) -> nn.Module:
    """A patched model with random norms and (for learned policies) random policies."""
    torch.manual_seed(0)
    if name.startswith("tv_"):
        model = getattr(torchvision.models, name[3:])(num_classes=6)
    else:
        model = timm.create_model(name, num_classes=6)
    af.patch_model(randomize_norms(model), num_segments=frames, **config)
    if af.get_config(model).policy in ("adafuse", "keep_skip", "keep_reuse"):
        randomize_policies(model)
    return model.eval()


def reference(model: nn.Module, clip: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """Per-frame logits and decisions of the patched model run on the whole clip."""
    with torch.no_grad():
        logits = model(clip)
    return logits, af.collect_decisions(model)


def stream(runner: StreamingRunner, clip: torch.Tensor) -> list:
    return [runner.step(frame) for frame in clip]


def assert_matches(model: nn.Module, runner: StreamingRunner, clip: torch.Tensor) -> dict:
    """Runner == patched model per frame and running mean; decisions; Eq. 5 FLOPs."""
    logits, decisions = reference(model, clip)
    steps = stream(runner, clip)
    got = torch.stack([s.logits for s in steps])
    tolerance = 1e-4 * max(1.0, float(logits.abs().max()))
    torch.testing.assert_close(got, logits, atol=tolerance, rtol=1e-4)
    running = logits.cumsum(0) / torch.arange(1, len(clip) + 1).view(-1, 1)
    torch.testing.assert_close(
        torch.stack([s.prediction for s in steps]), running, atol=tolerance, rtol=1e-4
    )
    recorded = runner.decisions()
    assert recorded.keys() == decisions.keys()
    for name, d in decisions.items():
        assert torch.equal(recorded[name], d), name
    report = af.audit_flops(
        model, input_shape=tuple(clip.shape), decisions=decisions, progress=False
    )
    counters = runner.executed_flops
    assert counters.eq5 == pytest.approx(report.adaptive, rel=1e-9)
    assert counters.dense == pytest.approx(report.dense, rel=1e-9)
    assert sum(s.flops for s in steps) == pytest.approx(counters.total, rel=1e-9)
    return decisions


def mix(decisions: dict) -> torch.Tensor:
    """(keep, reuse, skip) counts over every block, frame and channel."""
    stacked = torch.cat([d.flatten() for d in decisions.values()])
    return torch.bincount(stacked, minlength=3)


@pytest.mark.parametrize(
    ("name", "config"),
    [
        ("resnet18", {}),
        pytest.param("resnet26", {"granularity": 16, "stages": (0, -1)}, marks=pytest.mark.slow),
        ("tv_resnet18", {"granularity": 4}),
        pytest.param(
            "tv_resnet50", {"policy": "keep_skip", "stages": (-1,)}, marks=pytest.mark.slow
        ),
        ("mobilenetv2_100", {"granularity": 8, "stages": (1, -2, -1)}),
        pytest.param(
            "efficientnet_b0", {"policy": "keep_reuse", "stages": (-3, -1)}, marks=pytest.mark.slow
        ),
    ],
)
def test_runner_matches_patched_model_per_frame(name, config):
    frames = 3
    model = build(name, frames, **config)
    clip = torch.randn(frames, 3, SIZE, SIZE)
    # No dense fallback: on these tiny maps it would replace the sparse paths under test.
    runner = StreamingRunner(model, record_decisions=True, dense_fallback="never")
    decisions = assert_matches(model, runner, clip)
    assert runner.executed_flops.total == pytest.approx(runner.executed_flops.eq5, rel=1e-9)
    counts = mix(decisions)
    policy = af.get_config(model).policy
    allowed = {
        "adafuse": (KEEP, REUSE, SKIP),
        "keep_skip": (KEEP, SKIP),
        "keep_reuse": (KEEP, REUSE),
    }[policy]
    assert all(counts[a] > 0 for a in allowed), counts  # mixed, so the test can fail


@pytest.mark.parametrize("frames", [1, 5])
def test_clip_lengths_and_prefixes(frames):
    """After t frames the runner gives the patched model's logits of frames 0..t-1 for a
    clip of any length (the model is causal: frame t never sees t+1)."""
    model = build("resnet18", frames, granularity=2)
    clip = torch.randn(frames, 3, SIZE, SIZE)
    assert_matches(model, StreamingRunner(model, record_decisions=True), clip)


@pytest.mark.parametrize(
    "tuning",
    [
        {"dense_fallback": "never"},  # exact Eq. 5 work: packed selections only
        {"dense_fallback": "always"},  # every partial selection dense
        {"dense_fallback": "never", "max_group_calls": 64, "min_group_channels": 1},
        {"dense_fallback": "never", "cache_size": 0},
        {"dense_fallback": "timed", "max_group_calls": 64, "min_group_channels": 1},
    ],
)
def test_execution_strategies_are_exact(tuning):
    """Every way of running a channel selection gives the same frames; without the dense
    fallback the runner executes exactly Eq. 5's FLOPs."""
    frames = 4
    model = build("resnet18", frames, granularity=8)
    clip = torch.randn(frames, 3, SIZE, SIZE)
    runner = StreamingRunner(model, record_decisions=True, **tuning)
    assert_matches(model, runner, clip)
    counters = runner.executed_flops
    if tuning["dense_fallback"] == "never":
        assert counters.total == pytest.approx(counters.eq5, rel=1e-9)
    elif tuning["dense_fallback"] == "always":
        assert counters.total > counters.eq5


@pytest.mark.parametrize(
    ("mode", "granularity", "size"),
    [
        ("gemm", 1, 96),  # layer1 24x24: one product per tap on shifted views
        ("gemm", 4, SIZE),  # small maps and the strided first convs: im2col
        ("direct", 1, 96),  # the compiled kernels (tests/test_streaming_direct.py)
        ("direct", 4, SIZE),
        ("pack-now", 1, SIZE),  # counts rounded up: extra outputs held, zero inputs
        ("pack-now", 4, SIZE),
    ],
)
def test_matrix_products_and_rounded_counts_are_exact(mode, granularity, size, monkeypatch):
    """Selections run by `_Conv.gemm`, by the compiled kernels (`_Conv.direct`), or packed
    with their channel count rounded up to the bucket (extra output channels then also
    serve the next frame's reuse), give the patched model's frames; only the rounding
    executes more than Eq. 5."""
    monkeypatch.setattr(_ModeTimer, "choose", always_choose(mode))
    frames = 4
    model = build("resnet18", frames, granularity=granularity)
    clip = torch.randn(frames, 3, size, size)
    runner = StreamingRunner(model, record_decisions=True, dense_fallback="timed")
    assert_matches(model, runner, clip)
    counters, modes = runner.executed_flops, runner.execution_modes()
    assert modes[mode] > 0, modes
    if mode in ("gemm", "direct"):
        assert counters.total == pytest.approx(counters.eq5, rel=1e-9)
    else:
        assert counters.total > counters.eq5


def test_static_policy_hits_the_cache():
    """Repeating one frame keeps decisions fixed: packed selections are reused."""
    frames = 5
    model = build("resnet18", frames, granularity=16)
    clip = torch.randn(1, 3, SIZE, SIZE).expand(frames, -1, -1, -1).contiguous()
    runner = StreamingRunner(model, record_decisions=True, dense_fallback="never")
    assert_matches(model, runner, clip)
    uncached = StreamingRunner(model, record_decisions=True, dense_fallback="never", cache_size=0)
    assert_matches(model, uncached, clip)
    hits, misses = runner.execution_modes(), uncached.execution_modes()
    assert hits.get("packed", 0) > misses.get("packed", 0)  # recurring selections were reused


def test_eager_backend_matches():
    model = build("resnet18", 3)
    clip = torch.randn(3, 3, SIZE, SIZE)
    assert_matches(model, StreamingRunner(model, backend="eager", record_decisions=True), clip)


def test_forced_all_skip_all_reuse_on_strided_blocks():
    """Whole blocks skipped or reused, including strided ones (empty second-conv input)."""
    frames = 3
    model = build("resnet18", frames, granularity=32)
    gates = dict(af.iter_gates(model))
    force_decisions(gates["layer2.0"], [SKIP] * gates["layer2.0"].groups)
    force_decisions(gates["layer3.0"], [REUSE] * gates["layer3.0"].groups)
    force_decisions(gates["layer4.0"], [KEEP, REUSE] * (gates["layer4.0"].groups // 2))
    clip = torch.randn(frames, 3, SIZE, SIZE)
    assert_matches(model, StreamingRunner(model, record_decisions=True), clip)


def test_keep_policy_executes_dense_flops():
    model = build("resnet18", 2, policy="keep")
    runner = StreamingRunner(model, record_decisions=True)
    assert_matches(model, runner, torch.randn(2, 3, SIZE, SIZE))
    assert runner.executed_flops.total == pytest.approx(runner.executed_flops.dense)


def test_reset_starts_a_new_video():
    model = build("resnet18", 3)
    clip = torch.randn(3, 3, SIZE, SIZE)
    runner = StreamingRunner(model)
    first = runner.run(clip)
    stream(runner, torch.randn(2, 3, SIZE, SIZE))
    runner.reset()
    assert runner.frames_seen == 0 and runner.executed_flops.total == 0
    torch.testing.assert_close(runner.run(clip), first)


def _conv_macs(runner: StreamingRunner, clip: torch.Tensor) -> float:
    """Multiply-adds of every convolution, matrix product and compiled subset conv the
    runner dispatches for a clip, less those of the policy networks (two linear layers per
    block and frame)."""
    runner.step(clip[0])  # the first frame of a size runs the fvcore audit: not counted
    runner.reset()
    with FlopCounterMode(display=False) as counter:
        runner.run(clip)
    counts = counter.get_flop_counts()["Global"]
    kinds = ("convolution", "mm", "adafuse_direct")  # the last: the compiled kernels
    macs = sum(n for op, n in counts.items() if any(kind in str(op) for kind in kinds)) / 2
    nets = [gate.policy_net for _, gate in af.iter_gates(runner._reference)]
    policy = sum(
        net.fc1.in_features * net.fc1.out_features + net.fc2.in_features * net.fc2.out_features
        for net in nets
        if net is not None
    )
    return macs - len(clip) * policy


@pytest.mark.parametrize("mode", [None, "gemm", "direct", "pack-now"])
def test_executed_work_cross_checked_by_flop_counter(mode, monkeypatch):
    """torch's dispatch-level FlopCounterMode sees what the eager backend really runs:
    the work saved against the dense runner equals the runner's own counters, whichever
    way the selections run (the timer's choice, or forced)."""
    if mode is not None:
        monkeypatch.setattr(_ModeTimer, "choose", always_choose(mode))
    frames = 3
    clip = torch.randn(frames, 3, SIZE, SIZE)
    dense = StreamingRunner(build("resnet18", frames, policy="keep"), backend="eager")
    sparse = StreamingRunner(
        build("resnet18", frames, granularity=16), backend="eager", dense_fallback="never"
    )
    saved = _conv_macs(dense, clip) - _conv_macs(sparse, clip)
    table = next(iter(sparse._flops_tables.values()))
    counters = sparse.executed_flops
    expected = sum(
        frames * (table.first[name] + table.second[name])
        - counters.first_conv[name]
        - counters.second_conv[name]
        for name in sparse.block_names
    )
    assert expected > 0
    assert saved == pytest.approx(expected, rel=1e-9)
    if mode is not None:
        assert sparse.execution_modes()[mode] > 0


def test_frame_shapes_and_errors():
    model = build("resnet18", 2)
    runner = StreamingRunner(model)
    assert runner.step(torch.randn(1, 3, SIZE, SIZE)).logits.shape == (6,)
    with pytest.raises(AdaFuseStreamingError, match="batch 1"):
        runner.step(torch.randn(2, 3, SIZE, SIZE))
    with pytest.raises(AdaFuseStreamingError, match="frame must be"):
        runner.step(torch.randn(3, SIZE))
    with pytest.raises(AdaFuseStreamingError, match="reset"):
        runner.step(torch.randn(3, SIZE + 8, SIZE))
    with pytest.raises(AdaFuseStreamingError, match="record_decisions"):
        runner.decisions()


def test_rejects_training_mode_unpatched_models_and_unsupported_policies():
    model = build("resnet18", 2)
    with pytest.raises(AdaFuseStreamingError, match="eval"):
        StreamingRunner(copy.deepcopy(model).train())
    with pytest.raises(AdaFuseStreamingError, match="patched"):
        StreamingRunner(timm.create_model("resnet18", num_classes=3).eval())
    with pytest.raises(AdaFuseStreamingError, match="policy 'random'"):
        StreamingRunner(build("resnet18", 2, policy="random"))
    with pytest.raises(AdaFuseStreamingError, match="backend"):
        StreamingRunner(model, backend="tpu")


def test_rejects_patched_blocks_without_streaming_support():
    model = build("mobilenetv2_100", 2)  # blocks.0.0 is a DepthwiseSeparableConv
    with pytest.raises(AdaFuseStreamingError, match="DepthwiseSeparableConv"):
        StreamingRunner(model)
    assert "timm.models._efficientnet_blocks.InvertedResidual" in supported_streaming_blocks()


def test_original_model_is_left_untouched():
    model = build("resnet18", 2)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    runner = StreamingRunner(model)
    runner.run(torch.randn(2, 3, SIZE, SIZE))
    assert af.is_patched(model)
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key
    assert np.isfinite(runner.executed_flops.saving)


class MMActionClassifier(nn.Module):
    """An mmaction2 ResNet (TSN-style, per frame) + average pooling + a linear classifier."""

    def __init__(self, backbone: nn.Module, channels: int) -> None:
        super().__init__()
        self.backbone, self.fc = backbone, nn.Linear(channels, 6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.backbone(x).mean((2, 3)))


@pytest.mark.slow
@pytest.mark.parametrize(("depth", "channels"), [(18, 512), (50, 2048)])
def test_mmaction2_resnet_blocks_stream_exactly(depth, channels):
    pytest.importorskip("mmaction")
    from adafuse_plugin.mmaction.compat import apply_compat_fixes

    apply_compat_fixes()
    from mmaction.models.backbones import ResNet

    frames = 3
    torch.manual_seed(0)
    backbone = ResNet(depth=depth, pretrained=None)
    backbone.init_weights()
    model = MMActionClassifier(randomize_norms(backbone), channels)
    af.patch_model(model, num_segments=frames, granularity=8)
    model = randomize_policies(model).eval()
    runner = StreamingRunner(model, record_decisions=True, dense_fallback="never")
    decisions = assert_matches(model, runner, torch.randn(frames, 3, SIZE, SIZE))
    assert all(count > 0 for count in mix(decisions)), mix(decisions)
    # every BatchNorm is folded, the stem ConvModule's included
    assert not [m for m in runner._model.modules() if isinstance(m, nn.BatchNorm2d)]


def test_mmaction2_temporal_shift_is_rejected():
    pytest.importorskip("mmaction")
    from adafuse_plugin.mmaction.compat import apply_compat_fixes

    apply_compat_fixes()
    from mmaction.models.backbones import ResNetTSM

    backbone = ResNetTSM(depth=18, num_segments=2, pretrained=None, pretrained2d=False)
    backbone.init_weights()
    model = MMActionClassifier(backbone, 512)
    af.patch_model(model, num_segments=2)
    with pytest.raises(AdaFuseStreamingError, match="TemporalShift.*cannot run causally"):
        StreamingRunner(model.eval())


def test_mode_timer_tries_each_mode_then_takes_the_fastest():
    timer = _ModeTimer(explore_every=4, trials=2, explore_within=10.0)
    modes = ("per-group", "pack-now", "dense")
    seconds = {"per-group": 3e-3, "pack-now": 12e-3, "dense": 2e-3}
    tried = []
    for _ in range(6):  # two runs each: the first (primitive creation) is dropped
        mode = timer.choose(modes, 6)
        slow = 50 if mode not in tried else 1
        tried.append(mode)
        timer.record(mode, 6, seconds[mode] * slow)
    assert sorted(tried) == sorted(modes * 2)
    # dense 2 ms < per-group 3 ms < pack-now 12 ms; every 4th choice runs another mode,
    # in turn
    picks = [timer.choose(modes, 6) for _ in range(8)]
    assert picks == ["dense"] * 3 + ["per-group"] + ["dense"] * 3 + ["pack-now"]
    # modes estimated beyond explore_within x the best are not re-timed
    timer._explore_within = 2.0
    assert set(timer.choose(modes, 6) for _ in range(16)) == {"dense", "per-group"}


def test_mode_timer_estimates_each_size_class_from_its_own_calls():
    """A sparse mode's cost is per call within a size class (channels rounded up to a
    power of two): one channel may cost the direct kernel as much as sixteen, so a
    per-channel rate measured on large selections must not price small ones."""
    timer = _ModeTimer(explore_every=10**6, trials=2)
    cost = {"direct": lambda k: 1e-3 * -(-k // 16), "gemm": lambda k: 0.2e-3 * k}
    modes = ("direct", "gemm", "dense")
    for selected in (1, 13, 17, 40):
        for _ in range(6):  # every mode twice per class, the first run dropped
            mode = timer.choose(modes, selected)
            timer.record(mode, selected, cost[mode](selected) if mode in cost else 2.5e-3)
    assert timer.choose(modes, 1) == "gemm"  # 0.2 ms against direct's 1 ms
    assert timer.choose(modes, 16) == "direct"  # the 13-channel calls: 1 ms, gemm 2.6 ms
    assert timer.choose(modes, 30) == "direct"  # class 17-32: 2 ms, gemm 3.4 ms, dense 2.5
    assert timer.choose(modes, 64) == "dense"  # class 33-64: direct 3 ms
    # a class never timed is tried first
    assert timer.choose(modes, 2) == "direct"
    grouped = _ModeTimer(group_channels=32)
    assert grouped._key("gemm", 3) == grouped._key("gemm", 4) != grouped._key("gemm", 5)
    assert grouped._key("dense", 1) == grouped._key("dense", 9)


def test_mode_timer_ignores_a_stall():
    timer = _ModeTimer(explore_every=10**6)
    for seconds in (1.0, 1e-3, 0.5, 0.4, 0.3):  # stalls among per-group runs of 2 groups
        timer.record("per-group", 2, seconds)
    for seconds in (1.0, 2e-3, 2e-3):
        timer.record("dense", 2, seconds)
    assert timer.choose(("per-group", "dense"), 2) == "per-group"


def test_dense_fallback_and_bucket_are_validated():
    model = build("resnet18", 2)
    with pytest.raises(AdaFuseStreamingError, match="dense_fallback must be one of"):
        StreamingRunner(model, dense_fallback="sometimes")
    with pytest.raises(AdaFuseStreamingError, match="bucket_channels must be >= 1"):
        StreamingRunner(model, bucket_channels=0)


class TwoConvBlock(nn.Module):
    """A residual block class of our own: conv-norm-act, conv-norm, identity add, act."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv_a = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.norm_a = nn.BatchNorm2d(channels)
        self.act_a = nn.ReLU()
        self.conv_b = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.norm_b = nn.BatchNorm2d(channels)
        self.act_out = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act_a(self.norm_a(self.conv_a(x)))
        return self.act_out(x + self.norm_b(self.conv_b(y)))


def test_a_users_block_streams_after_registering_its_plan():
    """register_block_adapter(..., streaming=...) makes a block class of the user's own
    streamable: per-frame logits, decisions and Eq. 5 FLOPs equal the patched model's."""
    from adafuse_plugin.adapters import _REGISTRY, qualified_name

    def plan(block: TwoConvBlock) -> af.StreamingPlan:
        return af.StreamingPlan(
            block.conv_a,
            block.norm_a,
            block.act_a,
            block.conv_b,
            block.norm_b,
            out_act=block.act_out,
        )

    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 16, 3, stride=2, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        TwoConvBlock(16),
        TwoConvBlock(16),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 5),
    )
    frames = 4
    key = qualified_name(TwoConvBlock)
    try:
        af.register_block_adapter(
            TwoConvBlock, first_stage="act_a", first_conv="conv_a", second_conv="conv_b"
        )
        af.patch_model(randomize_norms(model), num_segments=frames, granularity=4)
        randomize_policies(model).eval()
        with pytest.raises(AdaFuseStreamingError, match="no streaming plan"):
            StreamingRunner(model)
        af.register_block_adapter(
            TwoConvBlock,
            first_stage="act_a",
            first_conv="conv_a",
            second_conv="conv_b",
            streaming=plan,
            overwrite=True,
        )
        assert key in supported_streaming_blocks()
        runner = StreamingRunner(model, record_decisions=True, dense_fallback="never")
        decisions = assert_matches(model, runner, torch.randn(frames, 3, SIZE, SIZE))
        assert all(count > 0 for count in mix(decisions)), mix(decisions)
    finally:
        _REGISTRY.pop(key, None)
    assert key not in supported_streaming_blocks()
