"""Export a patched model for deployment: `torch.export` and ONNX, with a dynamic number of
clips and, optionally, every block's decisions as extra outputs.

The gates keep no per-call state on modules, so the decisions of a traced call are plain
graph values: `WithDecisions` returns them next to the model's output.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import AdaFuseInputError, AdaFusePatchError
from .surgery import get_config, iter_gates


class WithDecisions(nn.Module):
    """``model(x) -> (output, decisions...)``: one (N, T, c') int64 tensor per patched
    block (0 keep, 1 reuse, 2 skip), in `iter_gates` order (`block_names`)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.train(model.training)
        self.block_names = [name for name, _ in iter_gates(model)]
        if not self.block_names:
            raise AdaFusePatchError("WithDecisions needs a patched model; call patch_model first")

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        output = self.model(x)
        gates = dict(iter_gates(self.model))
        return (output, *(gates[name].last_decisions for name in self.block_names))


def _one_clip_stays_dynamic() -> contextlib.AbstractContextManager[Any]:
    """Trace sizes "size-obliviously": the (N, T, c') decisions view would otherwise guard
    N != 1 (a contiguity check), and the program would refuse single clips."""
    from torch.fx.experimental import _config

    return _config.patch(backed_size_oblivious=True)  # type: ignore[attr-defined]


def _prepare(model: nn.Module, example: torch.Tensor, decisions: bool) -> tuple[nn.Module, Any]:
    """Check the model and example; the module to trace and the frame count's dynamic dim
    (num_segments x clips)."""
    config = get_config(model)
    if model.training:
        raise AdaFuseInputError(
            "export the model in eval mode (model.eval()): in training the policies draw "
            "Gumbel noise and BatchNorm updates its statistics"
        )
    if config.eval_decisions != "argmax" or config.policy == "random":
        raise AdaFuseInputError(
            "exported models decide deterministically: use eval_decisions='argmax' "
            f"(set_eval_decisions(model, 'argmax')) and a non-random policy, got "
            f"eval_decisions={config.eval_decisions!r}, policy={config.policy!r}"
        )
    segments = config.num_segments
    if example.dim() != 4 or example.shape[0] == 0 or example.shape[0] % segments:
        raise AdaFuseInputError(
            f"the example input must be (N*T, C, H, W) frames with T=num_segments={segments}, "
            f"got {tuple(example.shape)}"
        )
    clips = torch.export.Dim("clips", min=1, max=2**16)
    return (WithDecisions(model) if decisions else model), segments * clips


def export_program(
    model: nn.Module,
    example: torch.Tensor,
    *,
    dynamic_clips: bool = True,
    decisions: bool = False,
) -> torch.export.ExportedProgram:
    """`torch.export` a patched eval model.

    Args:
        model: a patched model in eval mode.
        example: (N*T, C, H, W) frames of N clips.
        dynamic_clips: let the program accept any number of clips (the frame count stays
            a multiple of num_segments, checked by the program).
        decisions: also return each block's decisions (see `WithDecisions`).
    """
    module, frames = _prepare(model, example, decisions)
    shapes = ({0: frames},) if dynamic_clips else None
    with _one_clip_stays_dynamic():
        return torch.export.export(module, (example,), dynamic_shapes=shapes)


def export_onnx(
    model: nn.Module,
    example: torch.Tensor,
    path: str | Path,
    *,
    dynamic_clips: bool = True,
    decisions: bool = False,
) -> Path:
    """Write a patched eval model to an ONNX file (torch's dynamo exporter).

    The graph's input is ``frames``; its outputs ``output`` and, with ``decisions=True``,
    ``decisions/<block name>``. Needs ``pip install adafuse_plugin[export]``.
    """
    try:
        import onnxscript  # noqa: F401 - the exporter's dependency, checked for a clear error
    except ImportError as error:
        raise ImportError(
            "ONNX export needs the onnx and onnxscript packages: "
            "pip install 'adafuse_plugin[export]'"
        ) from error
    module, frames = _prepare(model, example, decisions)
    names = ["output"]
    if decisions:
        names += [f"decisions/{name}" for name, _ in iter_gates(model)]
    with _one_clip_stays_dynamic():
        program = torch.onnx.export(
            module,
            (example,),
            input_names=["frames"],
            output_names=names,
            dynamic_shapes=({0: frames},) if dynamic_clips else None,
            dynamo=True,
            verbose=False,
        )
    if program is None:  # only the legacy (TorchScript) exporter returns nothing
        raise AdaFuseInputError("torch.onnx.export(dynamo=True) returned no program")
    path = Path(path)
    program.save(str(path))
    return path
