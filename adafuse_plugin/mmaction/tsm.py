"""Where the temporal shift acts in an AdaFuse-TSM block: mmaction2's wiring or the authors'.

Both shift the input of the first conv (fold 1/``shift_div``). They differ in what else
sees the shifted input:

- ``"mmaction2"`` (mmaction2's ``ResNetTSM``, ``shift_place='blockres'``): only conv1;
  the policy pools and the downsample shortcut read the unshifted block input.
- ``"authors"`` (the released AdaFuse-TSM networks): the shifted input also feeds the
  policy's pooling and the downsample shortcut; an identity shortcut stays unshifted.

Released AdaFuse-TSM weights give the paper's accuracy only with the authors' wiring.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import nn

from ..errors import AdaFuseConfigError
from ..gate import temporal_shift

TsmWiring = Literal["mmaction2", "authors"]
TSM_WIRINGS: tuple[str, ...] = ("mmaction2", "authors")


def check_authors_wiring(backbone: Any) -> int:
    """The backbone's ``shift_div`` if it can take the authors' wiring, else an error."""
    blocks = [m for m in backbone.modules() if hasattr(m, "conv1") and hasattr(m, "conv2")]
    shifted = [type(getattr(b.conv1, "conv", None)).__name__ == "TemporalShift" for b in blocks]
    if not (blocks and all(shifted) and not getattr(backbone, "temporal_pool", False)):
        raise AdaFuseConfigError(
            "adafuse.tsm_wiring='authors' needs a ResNetTSM backbone that shifts the input "
            "of every block's conv1 (shift_place='blockres', depth < 101, "
            f"temporal_pool=False); got {type(backbone).__name__} with "
            f"{sum(shifted)} of {len(blocks)} blocks shifted. Use tsm_wiring='mmaction2' "
            "(the default) for other backbones."
        )
    return int(backbone.shift_div)


class _ShiftInput:
    """Forward pre-hook: TSM-shift the (N*T, C, H, W) input of a downsample shortcut."""

    def __init__(self, num_segments: int, shift_div: int) -> None:
        self.num_segments = num_segments
        self.shift_div = shift_div

    def __call__(self, module: Any, args: tuple[Any, ...]) -> tuple[Any, ...]:
        x: torch.Tensor = args[0]
        return (temporal_shift(x, self.num_segments, self.shift_div), *args[1:])


def wire_downsample_to_shifted_input(backbone: Any) -> int:
    """Make every residual block's downsample shortcut read the shifted block input.

    Returns the number of shortcuts wired. Hooks keep every parameter name.
    """
    hook = _ShiftInput(backbone.num_segments, backbone.shift_div)
    wired = 0
    for module in backbone.modules():
        downsample = getattr(module, "downsample", None)
        if isinstance(downsample, nn.Module) and hasattr(module, "conv2"):
            downsample.register_forward_pre_hook(hook)
            wired += 1
    return wired
