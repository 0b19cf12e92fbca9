"""The compiled direct conv over a channel subset (`streaming._direct`): every path equals
a float64 `F.conv2d` of the same channels, bad arguments get clear errors, FLOPs are
visible to torch's FlopCounterMode, and a machine without a compiler streams without it."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

import adafuse_plugin as af
from adafuse_plugin.streaming import StreamingRunner, _direct, kernel_status
from adafuse_plugin.streaming._conv import _Act, _Conv
from adafuse_plugin.streaming._selection import _ModeTimer

from .conftest import always_choose
from .test_streaming import SIZE, assert_matches, build

pytestmark = pytest.mark.usefixtures("one_torch_thread")

RELU = _Act("relu", (), torch.nn.ReLU())


@pytest.fixture(scope="module", autouse=True)
def kernel():
    # CI machines have a C++ compiler: a kernel that does not build is a failure there.
    assert _direct.available(), kernel_status()


def channels_last(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous(memory_format=torch.channels_last)


def assert_close(got: torch.Tensor, expected: torch.Tensor) -> None:
    """float32 kernel against a float64 reference: relative to the output's scale."""
    scale = float(expected.abs().max())
    torch.testing.assert_close(got.double(), expected, atol=1e-5 * scale, rtol=1e-5)


def subset(count: int, share: float, generator: torch.Generator) -> torch.Tensor:
    chosen = torch.randperm(count, generator=generator)[: max(1, round(count * share))]
    return chosen.sort().values


# (in, out, kernel, stride, padding, map size): ResNet-like layers, a strided first conv,
# a 1x1 conv, odd sizes, channel counts that are not multiples of 16 or 64.
SHAPES = [
    (64, 64, 3, 1, 1, 20),
    (64, 128, 3, 2, 1, 21),
    (96, 40, 1, 1, 0, 9),
    (200, 72, 3, 2, 1, 15),
    (160, 144, 3, 1, 1, 5),  # fewer pixels than selected outputs: the pixel-major kernel
]


@pytest.mark.parametrize(("c_in", "c_out", "k", "stride", "pad", "size"), SHAPES)
@pytest.mark.parametrize("share", [0.3, 0.7, 1.0])
def test_direct_conv_matches_conv2d(c_in, c_out, k, stride, pad, size, share):
    generator = torch.Generator().manual_seed(c_in + c_out + size)
    weight = torch.randn(c_out, c_in, k, k, generator=generator)
    bias = torch.randn(c_out, generator=generator)
    conv = _Conv(weight, bias, [stride] * 2, [pad] * 2, [1, 1], 1, "mkldnn")
    x = channels_last(torch.randn(2, c_in, size, size, generator=generator))

    def reference(inputs: torch.Tensor) -> torch.Tensor:
        return F.conv2d(
            x[:, inputs].double(), weight[:, inputs].double(), bias.double(), stride, pad
        )

    every = torch.arange(c_in)
    # Output-channel subsets (the first conv): the channel-major kernel on weight blocks
    # packed for the call, or the pixel-major one on small maps.
    outputs = subset(c_out, share, generator)
    got = conv.direct([(x, None)], RELU, outputs=outputs)
    assert_close(got, F.relu(reference(every)[:, outputs]))
    assert got.is_contiguous(memory_format=torch.channels_last)
    # Input-channel subsets (the second conv) from two sources, one gathered by position,
    # with the residual add and ReLU fused.
    inputs = subset(c_in, share, generator)
    head, tail = inputs[:3], inputs[3:]
    add = channels_last(torch.randn(reference(every).shape, generator=generator))
    sources = [(channels_last(x[:, head]), None), (x, tail)]
    got = conv.direct(sources, RELU, add.float(), inputs=inputs)
    assert_close(got, F.relu(reference(inputs) + add.double()))
    # No activation, no add: the identity.
    got = conv.direct([(x, inputs)], inputs=inputs)
    assert_close(got, reference(inputs))


@pytest.mark.parametrize(
    ("c_in", "kernel", "pad", "size", "count"),
    [(64, 3, 1, 20, 1), (64, 3, 1, 21, 5), (40, 3, 1, 56, 16), (24, 1, 0, 33, 7), (16, 5, 2, 9, 3)],
)
def test_few_outputs_run_planar_and_match_conv2d(monkeypatch, c_in, kernel, pad, size, count):
    """Up to 16 output channels of a stride-1 conv run on the planar kernel (pixel lanes
    along an output row), equal to conv2d: odd widths, 1x1 and 5x5 kernels."""
    generator = torch.Generator().manual_seed(c_in + size + count)
    weight = torch.randn(48, c_in, kernel, kernel, generator=generator)
    bias = torch.randn(48, generator=generator)
    conv = _Conv(weight, bias, [1, 1], [pad] * 2, [1, 1], 1, "mkldnn")
    x = channels_last(torch.randn(2, c_in, size, size, generator=generator))
    calls = []
    planar = _direct.subset_conv_planar
    monkeypatch.setattr(_direct, "subset_conv_planar", lambda *a: calls.append(1) or planar(*a))
    outputs = subset(48, count / 48, generator)
    got = conv.direct([(x, None)], RELU, outputs=outputs)
    expected = F.conv2d(x.double(), weight.double(), bias.double(), 1, pad)[:, outputs]
    assert_close(got, F.relu(expected))
    assert got.is_contiguous(memory_format=torch.channels_last)
    assert calls == [1]
    # 17 outputs, a stride of 2 or more than 64 columns: another kernel
    for conv_, x_, outputs_ in (
        (conv, x, subset(48, 17 / 48, generator)),
        (_Conv(weight, bias, [2, 2], [pad] * 2, [1, 1], 1, "mkldnn"), x, outputs),
        (conv, channels_last(torch.randn(1, c_in, 3, 70, generator=generator)), outputs),
    ):
        conv_.direct([(x_, None)], outputs=outputs_)
    assert calls == [1]


def test_direct_conv_rejects_bad_arguments():
    x = torch.zeros(1, 4, 4, 4)
    blocks = torch.zeros(1, 9, 8, 64)
    bias = torch.zeros(8)
    geometry = ((1, 1), (1, 1), (3, 3))
    rows = torch.tensor([0, 1, 2, 9])  # 9: past the weight's 8 input channels
    with pytest.raises(RuntimeError, match="rows out of the weight's input channels"):
        _direct.subset_conv(x, rows, blocks, bias, None, (4, 4), geometry, 8, False)
    with pytest.raises(RuntimeError, match="does not fit the padded input"):
        _direct.subset_conv(x, rows % 8, blocks, bias, None, (5, 5), geometry, 8, False)
    weight = torch.zeros(8, 9, 4)
    with pytest.raises(RuntimeError, match="outputs out of the weight's output channels"):
        _direct.pack_blocks(weight, torch.tensor([8]))
    with pytest.raises(RuntimeError, match="out of its source's channels"):
        _direct.gather_channels([(torch.zeros(1, 4, 3, 3), torch.tensor([4]))])
    rows_major = torch.zeros(8, 9 * 4)
    with pytest.raises(RuntimeError, match="at most 64 output columns"):
        _direct.subset_conv_planar(x, rows_major, rows % 8, bias, (4, 65), (1, 1), (3, 3), False)
    with pytest.raises(RuntimeError, match="outputs out of the weight's output channels"):
        _direct.subset_conv_planar(x, rows_major, rows, bias, (4, 4), (1, 1), (3, 3), False)


def test_flop_counter_sees_the_kernels():
    """The registered formulas count 2 x pixels x outputs x inputs x taps, as for conv2d."""
    generator = torch.Generator().manual_seed(0)
    weight, bias = torch.randn(48, 32, 3, 3, generator=generator), torch.zeros(48)
    conv = _Conv(weight, bias, [1, 1], [1, 1], [1, 1], 1, "mkldnn")
    x = channels_last(torch.randn(1, 32, 8, 8, generator=generator))
    inputs, outputs = torch.arange(0, 32, 2), torch.arange(0, 48, 3)
    for kwargs, expected in (
        ({"inputs": inputs}, 2 * 64 * 48 * 16 * 9),
        ({"outputs": outputs}, 2 * 64 * 16 * 32 * 9),  # planar: 16 outputs, stride 1
        ({"outputs": torch.arange(24)}, 2 * 64 * 24 * 32 * 9),  # channel-major: 24 <= 64
    ):
        with FlopCounterMode(display=False) as counter:
            source = (x, inputs) if "inputs" in kwargs else (x, None)
            conv.direct([source], **kwargs)
        assert counter.get_total_flops() == expected
    small = channels_last(torch.randn(1, 32, 3, 3, generator=generator))
    with FlopCounterMode(display=False) as counter:
        conv.direct([(small, None)], outputs=outputs)  # 16 outputs > 9 pixels: pixel-major
    assert counter.get_total_flops() == 2 * 9 * 16 * 32 * 9


@pytest.mark.parametrize("planar", [True, False])
def test_runner_with_and_without_the_planar_kernel(monkeypatch, planar):
    """Every selection forced through the compiled kernels: per-channel decisions give
    first convs of a few output channels, which run planar only when allowed, and the
    frames, decisions and Eq. 5 FLOPs equal the patched model's either way."""
    calls = []
    kernel = _direct.subset_conv_planar
    monkeypatch.setattr(_direct, "subset_conv_planar", lambda *a: calls.append(1) or kernel(*a))
    monkeypatch.setattr(_ModeTimer, "choose", always_choose("direct"))
    frames = 3
    model = build("resnet18", frames, granularity=1)
    runner = StreamingRunner(model, record_decisions=True, dense_fallback="never", planar=planar)
    assert_matches(model, runner, torch.randn(frames, 3, SIZE, SIZE))
    assert bool(calls) == planar


def test_runner_goes_on_without_a_compiler(monkeypatch):
    """A kernel that cannot be built is reported, and the runner streams exactly without it."""

    def no_compiler() -> None:
        raise RuntimeError("Error building extension: c++: command not found")

    offered: set[str] = set()

    def choose(self, modes, selected):
        offered.update(modes)
        return modes[0]

    monkeypatch.setattr(_direct, "_state", {})
    monkeypatch.setattr(_direct, "_load", no_compiler)
    monkeypatch.setattr(_ModeTimer, "choose", choose)
    assert not _direct.available()
    assert "command not found" in kernel_status()
    frames = 3
    model = build("resnet18", frames, granularity=1)
    runner = StreamingRunner(model, record_decisions=True)
    assert_matches(model, runner, torch.randn(frames, 3, SIZE, SIZE))
    assert offered and "direct" not in offered
    with pytest.raises(af.streaming.AdaFuseStreamingError, match="command not found"):
        _direct.pack_blocks(torch.zeros(4, 9, 4), torch.tensor([0]))


def test_ninja_from_pypi_when_path_has_none(monkeypatch):
    """The build finds the `ninja` package's binary when PATH has no ninja (a venv that is
    not activated)."""
    from pathlib import Path

    monkeypatch.setattr(_direct.shutil, "which", lambda name: None)
    folder = _direct._ninja_on_path()
    assert folder is not None and (Path(folder) / "ninja").is_file()
