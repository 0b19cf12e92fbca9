"""The compiled direct convolution over a channel subset (`_direct.cpp`), built on first use.

oneDNN cannot run a per-frame input-channel subset of a prepacked weight: every new
selection costs a weight reorder (and a primitive JIT for a new channel count), more than
the convolution itself. This small kernel reads a subset's weight rows in place from a
layout made once. It is compiled for the machine it runs on (`-march=native`) the first
time a runner needs it (about 15 s, cached by torch under ``TORCH_EXTENSIONS_DIR``); where
no C++ compiler is found the runner goes on without this mode, and `status` says why.
"""

from __future__ import annotations

import hashlib
import logging
import os
import platform
import shutil
import threading
from collections.abc import Sequence
from pathlib import Path

import torch
from torch.utils import flop_counter

from ..errors import AdaFuseStreamingError

_SOURCE = Path(__file__).with_name("_direct.cpp")
# -fopenmp: at::parallel_for is OpenMP in torch's builds; the process already holds torch's
# libgomp, so the kernel's threads are torch's (torch.set_num_threads applies).
_FLAGS = ["-O3", "-march=native", "-ffp-contract=fast", "-fopenmp"]
_LOCK = threading.Lock()
_state: dict[str, str | None] = {}  # "error" once a build was tried
_LOG = logging.getLogger(__name__)
_EMPTY = torch.empty(0, dtype=torch.long)


def _machine_tag() -> str:
    """A short tag of this CPU's features: a build for one machine (-march=native) must not
    be picked up by another one that shares the cache folder."""
    flags = platform.machine()
    try:
        with open("/proc/cpuinfo") as info:
            flags += next((line for line in info if line.startswith(("flags", "Features"))), "")
    except OSError:
        pass
    return hashlib.sha1(flags.encode()).hexdigest()[:8]


def _ninja_on_path() -> str | None:
    """A folder holding `ninja` to put on PATH for the build, if PATH has none (the `ninja`
    package from PyPI ships one)."""
    if shutil.which("ninja"):
        return None
    try:
        import ninja
    except ImportError:
        return None
    return str(ninja.BIN_DIR)


def _build() -> None:
    from torch.utils.cpp_extension import load

    extra = _ninja_on_path()
    path = os.environ.get("PATH", "")
    if extra:
        os.environ["PATH"] = extra + os.pathsep + path
    try:
        _LOG.info("building the streaming runner's direct conv kernel (once per machine)")
        load(
            name=f"adafuse_direct_{_machine_tag()}",
            sources=[str(_SOURCE)],
            extra_cflags=_FLAGS,
            extra_ldflags=["-fopenmp"],
            is_python_module=False,
        )
    finally:
        os.environ["PATH"] = path


def _load() -> None:
    """Build (or find in torch's cache) and load the kernels, and register their FLOPs."""
    if not hasattr(torch.ops.adafuse_direct, "subset_conv"):
        _build()
    _register_flops()


def _summary(error: Exception) -> str:
    """The first line of a build error and its first compiler error (a failed build's
    message holds the whole compiler log)."""
    lines = str(error).splitlines() or [""]
    first_error = next((line.strip() for line in lines if "error:" in line), "")
    summary = f"{type(error).__name__}: {lines[0][:200]}"
    return f"{summary} ... {first_error[:300]}" if first_error else summary


def available() -> bool:
    """Whether the kernel is built and loaded (builds it on the first call)."""
    if "error" not in _state:
        with _LOCK:
            if "error" not in _state:
                try:
                    _load()
                    _state["error"] = None
                except Exception as error:  # no compiler, no ninja, a failed build
                    _state["error"] = _summary(error)
                    _LOG.warning("direct conv kernel unavailable: %s", _state["error"])
    return _state["error"] is None


def status() -> str:
    """'available', or why the kernel could not be built."""
    return "available" if available() else f"unavailable ({_state['error']})"


def _require() -> None:
    if not available():
        raise AdaFuseStreamingError(f"the direct conv kernel is {status()}")


def _register_flops() -> None:
    """Teach torch's FlopCounterMode the kernels' work, read from their arguments alone:
    2 x output pixels x output channels x input channels x taps."""

    def inputs_flops(grid_shape, rows_shape, weight_shape, *args, out_shape=None, **kwargs):
        n, out_h, out_w, out_channels = out_shape
        return 2 * n * out_h * out_w * out_channels * grid_shape[3] * weight_shape[1]

    def outputs_flops(grid_shape, weight_shape, *args, out_shape=None, **kwargs):
        n, out_h, out_w, out_channels = out_shape
        return 2 * n * out_h * out_w * out_channels * weight_shape[1]

    ops = torch.ops.adafuse_direct
    formulas = (
        (ops.subset_conv, inputs_flops),
        (ops.subset_conv_outputs, outputs_flops),
        (ops.subset_conv_planar, outputs_flops),
    )
    for op, formula in formulas:
        if op not in flop_counter.flop_registry:
            flop_counter.register_flop_formula(op)(formula)


def subset_conv(
    x: torch.Tensor,
    rows: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    add: torch.Tensor | None,
    out_size: tuple[int, int],
    geometry: tuple[tuple[int, int], tuple[int, int], tuple[int, int]],
    out_channels: int,
    relu: bool,
) -> torch.Tensor:
    """conv + bias (+ add) (then ReLU) over the channels of ``x``, NHWC in and out.

    ``x``: (N, H, W, S), the S input channels taking part; ``rows``: the weight input
    channel of each; ``weight``: (blocks, kh * kw, C_in, 64) from `pack_blocks`; ``add``:
    (N, out_h, out_w, out_channels) or None; ``geometry``: (stride, padding, kernel).
    """
    _require()
    (stride, padding, kernel) = geometry
    return torch.ops.adafuse_direct.subset_conv(
        x, rows, weight, bias, add, *out_size, *stride, *padding, *kernel, out_channels, relu
    )


def subset_conv_outputs(
    x: torch.Tensor,
    output_major: torch.Tensor,
    outputs: torch.Tensor,
    bias: torch.Tensor,
    out_size: tuple[int, int],
    geometry: tuple[tuple[int, int], tuple[int, int], tuple[int, int]],
    relu: bool,
) -> torch.Tensor:
    """conv + bias (then ReLU) for the output channels ``outputs`` only, NHWC in and out,
    with output pixels as vector lanes: ``output_major`` (C_out, kh * kw * C_in) is read in
    place (for small maps, where packing the selected weight would cost more)."""
    _require()
    (stride, padding, kernel) = geometry
    return torch.ops.adafuse_direct.subset_conv_outputs(
        x, output_major, outputs, bias, *out_size, *stride, *padding, *kernel, relu
    )


def subset_conv_planar(
    x: torch.Tensor,
    output_major: torch.Tensor,
    outputs: torch.Tensor,
    bias: torch.Tensor,
    out_size: tuple[int, int],
    padding: tuple[int, int],
    kernel: tuple[int, int],
    relu: bool,
) -> torch.Tensor:
    """conv + bias (then ReLU) for a few output channels ``outputs`` of a stride-1 conv,
    NHWC in and out, with an output row's pixels as vector lanes (at most 64 columns):
    costs the selected channels only, where the channel-major kernel fills whole
    16-channel vectors."""
    _require()
    return torch.ops.adafuse_direct.subset_conv_planar(
        x, output_major, outputs, bias, *out_size, *padding, *kernel, relu
    )


def gather_channels(sources: Sequence[tuple[torch.Tensor, torch.Tensor | None]]) -> torch.Tensor:
    """(N, H, W, S) NHWC: the channels of channels-last ``sources`` side by side, each
    (tensor, channel positions or None for all), in one pass; a single whole source is
    returned as its NHWC view, not copied."""
    tensors = [tensor.permute(0, 2, 3, 1).contiguous() for tensor, _ in sources]
    if len(sources) == 1 and sources[0][1] is None:
        return tensors[0]
    _require()
    indices = [_EMPTY if index is None else index for _, index in sources]
    return torch.ops.adafuse_direct.gather_channels(tensors, indices)


def pack_blocks(output_major: torch.Tensor, outputs: torch.Tensor) -> torch.Tensor:
    """The output channels ``outputs`` of a (C_out, kh * kw, C_in) weight as `subset_conv`'s
    blocks of 64 output channels (zero-filled beyond the last)."""
    _require()
    return torch.ops.adafuse_direct.pack_blocks(output_major, outputs)
