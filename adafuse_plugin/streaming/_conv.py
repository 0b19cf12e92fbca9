"""Convolutions with their BatchNorm folded in, prepacked for oneDNN, the elementwise
activations that fuse into them, and the same convolutions as matrix products over a
channel subset (`_Conv.gemm`)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..adapters import qualified_name
from ..errors import AdaFuseStreamingError
from . import _direct, _onednn

CHANNELS_LAST = torch.channels_last

#: Output maps with more pixels than this run a stride-1 `_Conv.gemm` as one product per
#: kernel tap on shifted views of the padded input (no copy); smaller ones copy the taps
#: side by side (im2col) for one product with a longer inner dimension, faster there.
_SHIFTED_MIN_PIXELS = 256
#: The planar kernel (`_direct.subset_conv_planar`) for a few output channels: it costs the
#: selected channels only, the channel-major kernel a whole 16-channel vector; measured
#: break-even 20-32 channels on ResNet-18's stride-1 convs, so up to one vector. Its
#: pixel lanes are one output row: at most 64 columns.
_PLANAR_MAX_OUTPUTS, _PLANAR_MAX_WIDTH = 16, 64


@dataclasses.dataclass(frozen=True)
class _Act:
    """An elementwise activation: a oneDNN post-op name when fusable, and the module."""

    attr: str = "none"
    scalars: tuple[float, ...] = ()
    module: nn.Module | None = None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.module is None else self.module(x)


_IDENTITY = _Act()


def _activation(module: Any) -> _Act:
    """The `_Act` of an activation module; parametrised ones (PReLU) cannot be sliced."""
    if module is None or isinstance(module, nn.Identity):
        return _IDENTITY
    if any(True for _ in module.parameters()):
        raise AdaFuseStreamingError(
            f"activation {type(module).__name__} has parameters; only parameter-free "
            "elementwise activations can run on a subset of channels"
        )
    if type(module) is nn.ReLU:
        return _Act("relu", (), module)
    if type(module) in (nn.ReLU6, nn.Hardtanh):
        return _Act("hardtanh", (float(module.min_val), float(module.max_val)), module)
    for cls, attr in ((nn.SiLU, "swish"), (nn.Hardswish, "hardswish"), (nn.Sigmoid, "sigmoid")):
        if type(module) is cls:
            return _Act(attr, (), module)
    return _Act("", (), module)  # not fusable: applied after the conv


# Conv2d subclasses whose forward equals nn.Conv2d's on non-empty inputs.
_PLAIN_CONV_SUBCLASSES = frozenset({"mmcv.cnn.bricks.wrappers.Conv2d"})


def _plain_conv(conv: Any) -> bool:
    """An nn.Conv2d (or a subclass known to compute the same) with static zero padding."""
    return (
        (type(conv) is nn.Conv2d or qualified_name(type(conv)) in _PLAIN_CONV_SUBCLASSES)
        and conv.padding_mode == "zeros"
        and not isinstance(conv.padding, str)
    )


def _fold(conv: Any, norm: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Weight and bias of conv followed by an eval-mode BatchNorm, as one conv."""
    if not _plain_conv(conv):
        raise AdaFuseStreamingError(
            f"only plain nn.Conv2d with static zero padding can be folded, got "
            f"{type(conv).__name__}(padding={conv.padding!r})"
        )
    weight = conv.weight.detach()
    bias = conv.bias.detach() if conv.bias is not None else weight.new_zeros(weight.shape[0])
    if norm is None:
        return weight.contiguous(), bias.contiguous()
    if (
        not isinstance(norm, nn.BatchNorm2d)
        or norm.running_var is None
        or norm.running_mean is None
    ):
        raise AdaFuseStreamingError(
            f"only BatchNorm2d with running statistics can be folded, got {type(norm).__name__}"
        )
    scale = torch.rsqrt(norm.running_var.detach() + norm.eps)
    if norm.weight is not None:
        scale = scale * norm.weight.detach()
    shift = -norm.running_mean.detach() * scale
    if norm.bias is not None:
        shift = shift + norm.bias.detach()
    folded_weight = weight * scale.view(-1, 1, 1, 1)
    return folded_weight.contiguous(), (bias * scale + shift).contiguous()


class _Conv:
    """A convolution with BatchNorm folded in.

    On the ``mkldnn`` backend the weight is packed into oneDNN's layout once per input
    shape and bias, activation and a residual add run as fused post-ops.
    """

    def __init__(
        self,
        weight: torch.Tensor,
        bias: torch.Tensor,
        stride: Sequence[int],
        padding: Sequence[int],
        dilation: Sequence[int],
        groups: int,
        backend: str,
    ) -> None:
        self.weight, self.bias = weight, bias
        self.stride, self.padding, self.dilation = list(stride), list(padding), list(dilation)
        self.groups = groups
        self.backend = backend
        self._packed: dict[tuple[int, ...], torch.Tensor] = {}
        self._input_major: torch.Tensor | None = None
        self._output_major: torch.Tensor | None = None
        self._direct_blocks: torch.Tensor | None = None
        self._every_input = torch.arange(weight.shape[1], device=weight.device)

    @classmethod
    def fold(cls, conv: Any, norm: Any, backend: str) -> _Conv:
        weight, bias = _fold(conv, norm)
        return cls(weight, bias, conv.stride, conv.padding, conv.dilation, conv.groups, backend)

    @property
    def out_channels(self) -> int:
        return self.weight.shape[0]

    def _like(self, weight: torch.Tensor, bias: torch.Tensor, groups: int) -> _Conv:
        return _Conv(
            weight.contiguous(),
            bias.contiguous(),
            self.stride,
            self.padding,
            self.dilation,
            groups,
            self.backend,
        )

    def select_outputs(self, channels: torch.Tensor) -> _Conv:
        """This conv restricted to some output channels (a depthwise conv: to some channels)."""
        groups = len(channels) if self.groups > 1 else 1
        return self._like(self.weight[channels], self.bias[channels], groups)

    def select_inputs(self, channels: torch.Tensor, zero_channels: int = 0) -> _Conv:
        """This conv restricted to some input channels (bias kept whole), followed by
        ``zero_channels`` inputs with zero weights (a count rounded up to a size whose
        oneDNN primitive exists already)."""
        weight = self.weight[:, channels]
        if zero_channels:
            zeros = weight.new_zeros(weight.shape[0], zero_channels, *weight.shape[2:])
            weight = torch.cat([weight, zeros], dim=1)
        return self._like(weight, self.bias, 1)

    def output_shape(self, shape: Sequence[int]) -> tuple[int, int, int, int]:
        size = [
            (n + 2 * p - d * (k - 1) - 1) // s + 1
            for n, p, d, k, s in zip(
                shape[2:], self.padding, self.dilation, self.weight.shape[2:], self.stride
            )
        ]
        return shape[0], self.out_channels, size[0], size[1]

    def _weight_for(self, x: torch.Tensor) -> torch.Tensor:
        key = tuple(x.shape)
        packed = self._packed.get(key)
        if packed is None:
            packed = _onednn.reorder_weight(
                self.weight, self.padding, self.stride, self.dilation, self.groups, key
            )
            self._packed[key] = packed
        return packed

    def __call__(
        self, x: torch.Tensor, act: _Act = _IDENTITY, add: torch.Tensor | None = None
    ) -> torch.Tensor:
        """act(conv(x) + bias + add); ``add`` is left untouched."""
        b = self.bias
        if self.backend != "mkldnn":
            y = F.conv2d(x, self.weight, b, self.stride, self.padding, self.dilation, self.groups)
            return act(y + add if add is not None else y)
        weight = self._weight_for(x)
        args = (self.padding, self.stride, self.dilation, self.groups)
        if add is None:
            if act.attr:
                return _onednn.conv(x, weight, b, args, act.attr, act.scalars)
            return act(_onednn.conv(x, weight, b, args))
        relu = act.attr == "relu"
        y = _onednn.conv_add(x, add, weight, b, args, relu)
        return y if relu or act.attr == "none" else act(y)

    def accumulate_(self, out: torch.Tensor, x: torch.Tensor, relu: bool = False) -> None:
        """out += conv(x) without bias, in place, then ReLU if asked."""
        if self.backend != "mkldnn":
            out += F.conv2d(x, self.weight, None, self.stride, self.padding, self.dilation)
            if relu:
                out.relu_()
            return
        args = (self.padding, self.stride, self.dilation, self.groups)
        _onednn.conv_accumulate_(out, x, self._weight_for(x), args, relu)

    # -- matrix products: a channel subset needs no oneDNN primitive or weight reorder --
    @property
    def gemm_supported(self) -> bool:
        """Whether `gemm` can run this conv (dense, not dilated)."""
        return self.groups == 1 and self.dilation == [1, 1]

    def _taps_input_major(self) -> torch.Tensor:
        """The weight as (kh * kw, C_in, C_out), laid out once: an input-channel subset
        is a gather of contiguous rows."""
        if self._input_major is None:
            out_channels, in_channels, kh, kw = self.weight.shape
            weight = self.weight.permute(2, 3, 1, 0).reshape(kh * kw, in_channels, out_channels)
            self._input_major = weight.contiguous()
        return self._input_major

    def _rows_output_major(self) -> torch.Tensor:
        """The weight as (C_out, kh * kw * C_in), laid out once: an output-channel subset
        is a gather of contiguous rows."""
        if self._output_major is None:
            weight = self.weight.permute(0, 2, 3, 1).reshape(self.out_channels, -1)
            self._output_major = weight.contiguous()
        return self._output_major

    def _padded_grid(self, pieces: Sequence[torch.Tensor]) -> torch.Tensor:
        """The pieces side by side along channels, NHWC, zero-padded by the conv's padding,
        plus one spare zero row (the shifted views of `gemm`'s last taps run past the
        last row): each piece copied once, never concatenated first."""
        n, _, height, width = pieces[0].shape
        channels = sum(piece.shape[1] for piece in pieces)
        pad_h, pad_w = self.padding
        grid = pieces[0].new_zeros(n, height + 2 * pad_h + 1, width + 2 * pad_w, channels)
        inner = grid[:, pad_h : pad_h + height, pad_w : pad_w + width]
        offset = 0
        for piece in pieces:
            inner[..., offset : offset + piece.shape[1]] = piece.permute(0, 2, 3, 1)
            offset += piece.shape[1]
        return grid

    def gemm(
        self,
        x: torch.Tensor | Sequence[torch.Tensor],
        act: _Act = _IDENTITY,
        add: torch.Tensor | None = None,
        *,
        outputs: torch.Tensor | None = None,
        inputs: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """act(conv(x) + bias + add) as matrix products on channels-last data, for the
        output channels ``outputs`` only, or with ``x`` holding only the input channels
        ``inputs`` (``x`` may come in pieces along channels: they are copied side by side
        into the padded input, never concatenated first); the weights of the subset are
        gathered from a layout made once."""
        pieces = [x] if isinstance(x, torch.Tensor) else list(x)
        n, _, height, width = pieces[0].shape
        channels = sum(piece.shape[1] for piece in pieces)
        kh, kw = self.weight.shape[2:]
        taps = kh * kw
        if outputs is not None:
            weight = self._rows_output_major().index_select(0, outputs).t()
            bias = self.bias.index_select(0, outputs)
        else:
            layout = self._taps_input_major()
            layout = layout if inputs is None else layout.index_select(1, inputs)
            weight, bias = layout.view(taps * channels, -1), self.bias
        out_h, out_w = self.output_shape(pieces[0].shape)[2:]
        (pad_h, pad_w), (stride_h, stride_w) = self.padding, self.stride
        if taps == 1 and pad_h == pad_w == 0 and stride_h == stride_w == 1:
            whole = pieces[0] if len(pieces) == 1 else torch.cat(pieces, dim=1)
            rows = whole.permute(0, 2, 3, 1).reshape(-1, channels)  # NHWC: a view
            y = torch.addmm(bias, rows, weight).view(n, out_h, out_w, -1)
        else:
            padded_w = width + 2 * pad_w
            grid = self._padded_grid(pieces)
            if n == 1 and stride_h == stride_w == 1 and out_h * out_w > _SHIFTED_MIN_PIXELS:
                # Output pixel (i, j) of tap (dy, dx) reads flat row (i + dy) * padded_w +
                # j + dx: a contiguous run per tap; the columns j >= out_w are discarded.
                flat, count = grid.view(-1, channels), out_h * padded_w
                y = torch.addmm(bias, flat[:count], weight[:channels])
                for tap in range(1, taps):
                    start = (tap // kw) * padded_w + tap % kw
                    tap_weight = weight[tap * channels : (tap + 1) * channels]
                    # out=y, not addmm_: torch's FlopCounterMode counts only the former.
                    torch.addmm(y, flat[start : start + count], tap_weight, out=y)
                y = y.view(1, out_h, padded_w, -1)[:, :, :out_w]
            else:
                cols = grid.new_empty(n, out_h, out_w, kh, kw, channels)
                for dy in range(kh):
                    for dx in range(kw):
                        cols[:, :, :, dy, dx] = grid[
                            :,
                            dy : dy + stride_h * (out_h - 1) + 1 : stride_h,
                            dx : dx + stride_w * (out_w - 1) + 1 : stride_w,
                        ]
                y = torch.addmm(bias, cols.view(n * out_h * out_w, -1), weight)
                y = y.view(n, out_h, out_w, -1)
        y = y + add.permute(0, 2, 3, 1) if add is not None else y.contiguous()
        if act.attr == "relu":
            y.relu_()
        else:
            y = act(y)
        return y.permute(0, 3, 1, 2)

    # -- the compiled direct conv: reads a subset's weight rows in place --------------
    @property
    def direct_supported(self) -> bool:
        """Whether `direct` can run this conv (dense, not dilated, float32 on the CPU)."""
        weight = self.weight
        return self.gemm_supported and weight.device.type == "cpu" and weight.dtype == torch.float32

    def _blocks(self) -> torch.Tensor:
        """Every output channel as `_direct.subset_conv`'s weight blocks, laid out once."""
        if self._direct_blocks is None:
            every = torch.arange(self.out_channels)
            self._direct_blocks = _direct.pack_blocks(self._taps_output_major(), every)
        return self._direct_blocks

    def _taps_output_major(self) -> torch.Tensor:
        """The output-major layout viewed as (C_out, kh * kw, C_in)."""
        in_channels = self.weight.shape[1]
        return self._rows_output_major().view(self.out_channels, -1, in_channels)

    def direct(
        self,
        sources: Sequence[tuple[torch.Tensor, torch.Tensor | None]],
        act: _Act = _IDENTITY,
        add: torch.Tensor | None = None,
        *,
        outputs: torch.Tensor | None = None,
        inputs: torch.Tensor | None = None,
        planar: bool = True,
    ) -> torch.Tensor:
        """`gemm`'s contract, run by the compiled kernels on ``sources`` (channels-last
        tensors, each with the positions of its channels taking part, or None for all,
        gathered side by side in one pass): act(conv(x) + bias + add) for the output
        channels ``outputs`` only, or with x holding only the input channels ``inputs``
        (their weight rows read in place from the blocks laid out once); ``planar``:
        few output channels of a stride-1 conv may run on the planar kernel. Zero
        padding is read by the kernels, never copied."""
        x = _direct.gather_channels(sources)
        out_size = self.output_shape(sources[0][0].shape)[2:]
        geometry = (
            (self.stride[0], self.stride[1]),
            (self.padding[0], self.padding[1]),
            (self.weight.shape[2], self.weight.shape[3]),
        )
        relu = act.attr == "relu"
        if outputs is not None and add is None and len(outputs) > out_size[0] * out_size[1]:
            # Fewer pixels than selected channels: read the weight rows in place.
            y = _direct.subset_conv_outputs(
                x, self._rows_output_major(), outputs, self.bias, out_size, geometry, relu
            )
            return (y if relu else act(y)).permute(0, 3, 1, 2)
        if (
            planar
            and outputs is not None
            and add is None
            and len(outputs) <= _PLANAR_MAX_OUTPUTS
            and self.stride == [1, 1]
            and out_size[1] <= _PLANAR_MAX_WIDTH
        ):
            y = _direct.subset_conv_planar(
                x, self._rows_output_major(), outputs, self.bias, out_size, *geometry[1:], relu
            )
            return (y if relu else act(y)).permute(0, 3, 1, 2)
        if outputs is not None:
            weight = _direct.pack_blocks(self._taps_output_major(), outputs)
            bias, out_channels = self.bias.index_select(0, outputs), len(outputs)
        else:
            weight, bias, out_channels = self._blocks(), self.bias, self.out_channels
        if inputs is None:
            inputs = self._every_input
        add_nhwc = add.permute(0, 2, 3, 1).contiguous() if add is not None else None
        y = _direct.subset_conv(
            x, inputs, weight, bias, add_nhwc, out_size, geometry, out_channels, relu
        )
        return (y if relu else act(y)).permute(0, 3, 1, 2)
