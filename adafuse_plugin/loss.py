"""`AdaFuseFlopsLoss`: lambda x expected adaptive FLOPs, differentiable through the policy."""

from __future__ import annotations

import weakref
from typing import get_args

import torch
from torch import nn

from . import eq5
from .config import FlopsMode
from .errors import AdaFuseConfigError, AdaFuseInputError
from .flops import audit_flops
from .gate import KEEP, REUSE, SKIP
from .surgery import iter_gates


def expected_block_flops(
    masks: torch.Tensor, first_conv: float, second_conv: float, mode: FlopsMode = "real"
) -> torch.Tensor:
    """Differentiable Eq. 5 FLOPs per frame of one block's two convs.

    Args:
        masks: (N, T, groups, 3) one-hot (straight-through) keep / reuse / skip masks.
        first_conv, second_conv: dense FLOPs per frame of the two convs.
        mode: "real" (both savings) or "upb" (second-conv saving only).
    """
    if masks.dtype != torch.float64:  # FLOP counts overflow float16 and lose bfloat16
        masks = masks.float()
    keep, reuse, skip = masks[..., KEEP], masks[..., REUSE], masks[..., SKIP]
    first = eq5.first_conv_needed(keep, reuse).mean()
    return eq5.block_flops(
        first, eq5.second_conv_needed(skip).mean(), first_conv, second_conv, mode
    )


class AdaFuseFlopsLoss(nn.Module):
    """lambda * |F / F_dense - target| (or |GFLOPs - target| with ``normalize=False``).

    F is the expected adaptive FLOPs per clip of the model's last forward pass,
    computed from the straight-through Gumbel masks so gradients reach every policy
    network. Usable in any training loop::

        flops_loss = AdaFuseFlopsLoss(model, input_shape=(8, 3, 224, 224), weight=0.1)
        loss = F.cross_entropy(af.consensus(model(frames), 8), labels) + flops_loss()

    Args:
        model: the patched model (held weakly; not registered as a submodule).
        input_shape: (T, 3, H, W) of one clip; fixes the dense FLOPs per block.
        weight: lambda.
        mode: "real" or "upb" (see `audit_flops`).
        normalize: divide by dense FLOPs so lambda is comparable across backbones
            (default); otherwise use GFLOPs per clip like the released scripts.
        target: b of the L1 form |F - b| (0 = minimise FLOPs).
    """

    def __init__(
        self,
        model: nn.Module,
        input_shape: tuple[int, ...] = (8, 3, 224, 224),
        weight: float = 0.1,
        mode: FlopsMode = "real",
        normalize: bool = True,
        target: float = 0.0,
    ) -> None:
        super().__init__()
        if mode not in get_args(FlopsMode):
            raise AdaFuseConfigError(f"mode must be 'real' or 'upb', got {mode!r}")
        self.weight, self.mode, self.normalize, self.target = weight, mode, normalize, target
        self._model = weakref.ref(model)
        report = audit_flops(model, input_shape)
        self.frames = report.frames
        self.dense_per_frame = report.dense / report.frames
        self.policy_per_frame = report.policy / report.frames
        self.convs = {b.name: (b.first_conv, b.second_conv) for b in report.blocks}
        self.last_gflops: float | None = None

    def expected_flops(self) -> torch.Tensor:
        """Expected adaptive FLOPs per clip of the last forward pass."""
        model = self._model()
        if model is None:
            raise AdaFuseInputError("the model of this AdaFuseFlopsLoss no longer exists")
        per_frame: torch.Tensor | float = self.dense_per_frame + self.policy_per_frame
        for name, gate in iter_gates(model):
            if gate.last_masks is None:
                raise AdaFuseInputError(
                    f"AdaFuse block {name!r} has no masks: run a forward pass before the loss"
                )
            first, second = self.convs[name]
            per_frame = (
                per_frame
                - (first + second)
                + expected_block_flops(gate.last_masks, first, second, self.mode)
            )
        return torch.as_tensor(per_frame * self.frames)

    def forward(self) -> torch.Tensor:
        flops = self.expected_flops()
        self.last_gflops = float(flops.detach()) / 1e9
        value = flops / (self.dense_per_frame * self.frames) if self.normalize else flops / 1e9
        return self.weight * (value - self.target).abs()


def consensus(logits: torch.Tensor, num_segments: int) -> torch.Tensor:
    """Mean of per-frame logits over each clip: (N*T, K) -> (N, K), the paper's G."""
    if logits.shape[0] % num_segments:
        raise AdaFuseInputError(
            f"{logits.shape[0]} frame logits are not divisible by num_segments={num_segments}"
        )
    return logits.view(-1, num_segments, *logits.shape[1:]).mean(dim=1)
