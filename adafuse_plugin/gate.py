"""The AdaFuse block: a policy network and the keep / reuse / skip fusion of one residual block.

A gate lives as the submodule ``adafuse`` of the block it patches and acts through
two hooks, so no original module is wrapped or renamed:

- a forward pre-hook on the first conv records ``v_t = GAP(x_t)`` of its input, the
  block input;
- a forward hook on the first conv stage replaces its output ``y`` with the fused map
  ``keep * y_t + reuse * y_{t-1}`` (skipped channels are zero; ``y_{-1} = 0``).

Decisions are per frame and per group of ``granularity`` channels:
0 = keep, 1 = reuse, 2 = skip (the paper's p in {0, 1, 2}).
"""

from __future__ import annotations

import contextlib
import threading
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .config import LEARNED_POLICIES, AdaFuseConfig
from .errors import AdaFuseInputError

KEEP, REUSE, SKIP = 0, 1, 2
ACTIONS = ("keep", "reuse", "skip")

#: Attribute under which a gate is attached to its block. Never ``net``/``block``:
#: mmaction2's ResNetTSM strips those from checkpoint keys.
GATE_ATTR = "adafuse"

#: Actions a learned policy may not take, per policy (shared with the streaming runner).
FORBIDDEN_ACTIONS = {"adafuse": (), "keep_skip": (REUSE,), "keep_reuse": (SKIP,)}


class PolicyNet(nn.Module):
    """g([v_{t-1}, v_t]) -> logits over (keep, reuse, skip) for each channel group.

    Linear(2c -> H) -> BatchNorm1d(H) -> ReLU -> Linear(H -> 3 * groups), the paper's
    architecture, with weights drawn from N(0, 0.001) and zero biases so a fresh policy
    starts near uniform. Blocks that share a policy (``share_policy=True``) pass the
    same ``fc1`` / ``fc2`` modules; the BatchNorm1d is always the block's own, as in
    the authors' networks.
    """

    def __init__(
        self,
        in_channels: int,
        groups: int,
        hidden: int,
        shared: tuple[nn.Linear, nn.Linear] | None = None,
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.groups = groups
        if shared is None:
            self.fc1 = nn.Linear(2 * in_channels, hidden)
            self.norm = nn.BatchNorm1d(hidden)
            self.fc2 = nn.Linear(hidden, 3 * groups)
            self.reset_parameters()
        else:
            self.fc1, self.fc2 = shared
            self.norm = nn.BatchNorm1d(hidden)

    def reset_parameters(self) -> None:
        """The paper's initialisation; call again after a backbone's own init_weights."""
        for linear in (self.fc1, self.fc2):
            nn.init.normal_(linear.weight, 0.0, 0.001)
            nn.init.zeros_(linear.bias)
        self.norm.reset_parameters()
        self.norm.reset_running_stats()

    def forward(self, pooled_prev: torch.Tensor, pooled: torch.Tensor) -> torch.Tensor:
        """(F, c) pooled features of frames t-1 and t -> (F, groups, 3) logits."""
        hidden = F.relu(self.norm(self.fc1(torch.cat([pooled_prev, pooled], dim=1))))
        return self.fc2(hidden).unflatten(1, (self.groups, 3))


def _frame_index(x: torch.Tensor, segments: int) -> torch.Tensor:
    """Index within its clip of each row of an (N*T, ...) tensor, shaped to broadcast."""
    index = torch.arange(x.shape[0], device=x.device) % segments
    return index.view(-1, *([1] * (x.dim() - 1)))


def shift_to_previous_frame(x: torch.Tensor, segments: int) -> torch.Tensor:
    """(N*T, ...) clips, frame index fastest -> frame t holds frame t-1, zeros at t = 0.

    Works on the flat layout: splitting N*T into (N, T) makes symbolic shapes (torch.export
    with a dynamic batch) grow with every block, as N*T // T // ... never simplifies.
    """
    shifted = torch.cat([torch.zeros_like(x[:1]), x[:-1]])
    return torch.where(_frame_index(x, segments) == 0, 0.0, shifted)


def shift_to_next_frame(x: torch.Tensor, segments: int) -> torch.Tensor:
    """(N*T, ...) clips -> frame t holds frame t+1, zeros at the last frame of each clip."""
    shifted = torch.cat([x[1:], torch.zeros_like(x[:1])])
    return torch.where(_frame_index(x, segments) == segments - 1, 0.0, shifted)


def temporal_shift(x: torch.Tensor, segments: int, shift_div: int) -> torch.Tensor:
    """TSM's shift on (N*T, C, ...) clips: the first C // shift_div channels of frame t
    take frame t+1's, the next C // shift_div take frame t-1's (zeros at the clip ends)."""
    fold = x.shape[1] // shift_div
    future = shift_to_next_frame(x[:, :fold], segments)
    past = shift_to_previous_frame(x[:, fold : 2 * fold], segments)
    return torch.cat([future, past, x[:, 2 * fold :]], dim=1)


def _one_hot(actions: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """One-hot masks (..., 3) of actions; unlike F.one_hot, no device sync (it validates
    the values on the host), which cost a sync per block and call on a GPU."""
    return (actions.unsqueeze(-1) == torch.arange(3, device=actions.device)).to(dtype)


def _fuse(y: torch.Tensor, masks: torch.Tensor, segments: int) -> torch.Tensor:
    """keep * y_t + reuse * y_{t-1} for (N*T, ...) maps and broadcastable one-hot masks.

    Selected by ``where``, so an inf or NaN in a skipped or unused map stays out of the
    result (``0 * inf`` would be NaN); with straight-through masks the policy still
    receives d(loss)/d(mask) = the map, as for the product. Frame t-1 is read from the
    map rolled by one frame, the first frame of each clip (no history: y_{-1} = 0)
    masked on the small masks, not the map: three passes over the map in all.
    """
    has_history = _frame_index(masks, segments) > 0
    keep = masks[..., KEEP].to(y.dtype)
    reuse = masks[..., REUSE].to(y.dtype) * has_history[..., 0]
    previous = y.roll(1, dims=0)
    fused = torch.where(keep > 0.5, y, torch.where(reuse > 0.5, previous, 0.0))
    if masks.requires_grad:  # value 0: adds only the masks' straight-through gradient
        fused = fused + (keep - keep.detach()) * y.detach().nan_to_num(0.0, 0.0, 0.0)
        fused = fused + (reuse - reuse.detach()) * previous.detach().nan_to_num(0.0, 0.0, 0.0)
    return fused


class AdaFuseGate(nn.Module):
    """Per-block AdaFuse state: its policy (learned or fixed) and the fusion hooks.

    Nothing of a forward pass is kept on the module itself: the pooled input travels
    from the first conv's pre-hook to the first stage's hook, and the decisions are
    recorded, in per-thread storage. Concurrent calls from several threads, replicas
    sharing these hooks, and activation checkpointing (which re-runs the first conv and
    its stage together) each see their own values.

    Per thread, from that thread's last forward pass:
        last_decisions: (N, T, c') long, 0 keep / 1 reuse / 2 skip per channel.
        last_masks: (N, T, groups, 3) one-hot masks; in training, straight-through
            Gumbel samples that carry gradients to the policy (used by the FLOPs loss).
    """

    def __init__(
        self,
        block_name: str,
        in_channels: int,
        out_channels: int,
        config: AdaFuseConfig,
        policy_net: PolicyNet | None,
    ) -> None:
        super().__init__()
        self.block_name = block_name
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.config = config
        self.groups = out_channels // config.granularity
        self.tau = config.tau
        self.enabled = True
        self.policy_net = policy_net
        self._calls = threading.local()

    @property
    def last_decisions(self) -> torch.Tensor | None:
        return getattr(self._calls, "decisions", None)

    @property
    def last_masks(self) -> torch.Tensor | None:
        return getattr(self._calls, "masks", None)

    def extra_repr(self) -> str:
        return (
            f"policy={self.config.policy}, channels={self.in_channels}->{self.out_channels}, "
            f"groups={self.groups}, num_segments={self.config.num_segments}, tau={self.tau}"
        )

    def __getstate__(self) -> dict[str, Any]:
        # Per-call values may hang on an autograd graph (not copyable or picklable) and
        # belong to the calls of this process's threads: a copy starts with none.
        state = super().__getstate__()
        state.pop("_calls", None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self._calls = threading.local()

    # -- hooks -------------------------------------------------------------------
    def check_model_input(self, stem: nn.Module, args: tuple[Any, ...]) -> None:
        """Forward pre-hook on the model's first conv: refuse a batch AdaFuse cannot
        split into clips before any work is done, with the fix in the message."""
        if not self.enabled or not args or not isinstance(args[0], torch.Tensor):
            return
        x, segments = args[0], self.config.num_segments
        layout = f"(N*T, C, H, W) frames, N clips of num_segments={segments} frames"
        if x.dim() == 5:
            raise AdaFuseInputError(
                f"the patched model got a 5-D input {tuple(x.shape)}; it takes {layout}: "
                "call it on clips.flatten(0, 1) (frame index fastest)"
            )
        if x.dim() != 4:
            raise AdaFuseInputError(
                f"the patched model got a {x.dim()}-D input {tuple(x.shape)}; it takes "
                f"{layout} (a single image has no frames to fuse)"
            )
        frames = x.shape[0]
        if frames == 0:
            raise AdaFuseInputError(
                f"the patched model got an empty batch {tuple(x.shape)}; pass at least "
                f"one clip of {segments} frames"
            )
        if frames % segments:
            raise AdaFuseInputError(
                f"the patched model got {frames} frames, not divisible by "
                f"num_segments={segments}; pass {layout}, or patch with the clip length "
                "you feed"
            )
        if self.training and frames == 1 and self.policy_net is not None:
            raise AdaFuseInputError(
                "training a learned AdaFuse policy on a batch of 1 frame: its BatchNorm1d "
                "needs more than one frame; train on clips of num_segments >= 2 frames "
                "or batches of >= 2 clips"
            )

    def capture_input(self, first_conv: nn.Module, args: tuple[Any, ...]) -> None:
        """Forward pre-hook on the first conv: GAP of its input, the block input x_t."""
        if not self.enabled:
            return
        x = args[0]
        if not isinstance(x, torch.Tensor) or x.dim() != 4:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise AdaFuseInputError(
                f"AdaFuse block {self.block_name!r} expects a 4-D (N*T, C, H, W) input, "
                f"got {shape}; reshape clips of shape (N, T, C, H, W) with "
                "x.flatten(0, 1) before calling the backbone"
            )
        if self.policy_net is None:
            self._calls.pooled = None
            return
        # Inside a reentrant activation checkpoint the forward runs without grad, but x
        # is attached to the graph: record the policy with grad so the FLOPs loss
        # reaches it (the recomputation in backward serves the main loss).
        reentrant = self.training and x.requires_grad and not torch.is_grad_enabled()
        with torch.enable_grad() if reentrant else contextlib.nullcontext():
            self._calls.pooled = x.mean(dim=(2, 3))

    def fuse(self, stage: nn.Module, args: tuple[Any, ...], output: torch.Tensor) -> torch.Tensor:
        """Forward hook on the first conv stage: return the fused feature map."""
        if not self.enabled:
            return output
        frames, channels = output.shape[:2]
        segments = self.config.num_segments
        if frames % segments:
            raise AdaFuseInputError(
                f"AdaFuse block {self.block_name!r}: a batch of {frames} frames is not "
                f"divisible by num_segments={segments}; lay the batch out as N clips x "
                f"{segments} frames (frame index fastest), or patch with the right "
                "num_segments"
            )
        if channels != self.out_channels:
            raise AdaFuseInputError(
                f"AdaFuse block {self.block_name!r} was built for {self.out_channels} "
                f"channels but its first stage produced {channels}"
            )
        pooled = getattr(self._calls, "pooled", None)
        self._calls.pooled = None
        masks = self._decide(output, pooled)  # (N*T, groups, 3)
        # The view keeps the masks' graph also in a reentrant checkpoint's no-grad forward.
        with torch.enable_grad() if masks.requires_grad else contextlib.nullcontext():
            self._calls.masks = masks.unflatten(0, (-1, segments))
        self._calls.decisions = (
            self._calls.masks.detach()
            .argmax(dim=-1)
            .repeat_interleave(self.config.granularity, dim=-1)
        )
        if self.config.policy == "keep":
            return output
        y = output.unflatten(1, (self.groups, self.config.granularity))
        fused = _fuse(y, masks[:, :, None, None, None, :], segments)
        return fused.flatten(1, 2)

    # -- decisions ---------------------------------------------------------------
    def _decide(self, y: torch.Tensor, pooled: torch.Tensor | None) -> torch.Tensor:
        """(N*T, groups, 3) one-hot masks for the configured policy."""
        shape = (y.shape[0], self.groups)
        policy = self.config.policy
        if policy in LEARNED_POLICIES:
            return self._learned_masks(pooled, shape)
        if policy == "keep":
            actions = torch.full(shape, KEEP, device=y.device)
        elif policy == "random":
            ratios = torch.tensor(self.config.random_ratios, device=y.device).cumsum(0)
            draws = torch.rand(shape, device=y.device)
            actions = (draws >= ratios[0]).long() + (draws >= ratios[1]).long()
        else:  # threshold: keep the channel groups with the largest mean |y|
            scores = y.detach().abs().mean(dim=(2, 3)).view(*shape, self.config.granularity)
            kept = round(self.config.threshold_keep_ratio * self.groups)
            actions = torch.full(shape, SKIP, device=y.device)
            top = scores.mean(dim=-1).topk(kept, dim=-1).indices
            actions.scatter_(-1, top, KEEP)
        return _one_hot(actions, y.dtype)

    def _learned_masks(self, pooled: torch.Tensor | None, shape: tuple[int, int]) -> torch.Tensor:
        if pooled is None:
            raise AdaFuseInputError(
                f"AdaFuse block {self.block_name!r}: its first stage ran without its first "
                "conv (no pooled input recorded); call the block, not its submodules"
            )
        with torch.enable_grad() if pooled.requires_grad else contextlib.nullcontext():
            return self._policy_masks(pooled, shape)

    def _policy_masks(self, pooled: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
        segments = self.config.num_segments
        if self.config.policy_shift_div is not None:
            # GAP commutes with the temporal shift: pooling the shifted input (the
            # authors' AdaFuse-TSM) equals shifting the pooled one.
            pooled = temporal_shift(pooled, segments, self.config.policy_shift_div)
        net = self.policy_net
        if net is None:  # only learned policies have a policy net, and only they get here
            raise AdaFuseInputError(f"policy {self.config.policy!r} has no policy network")
        logits = net(shift_to_previous_frame(pooled, segments), pooled)
        forbidden = FORBIDDEN_ACTIONS[self.config.policy]
        if forbidden:
            mask = torch.zeros(3, dtype=torch.bool, device=logits.device)
            mask[list(forbidden)] = True
            logits = logits.masked_fill(mask, float("-inf"))
        if self.training:
            return F.gumbel_softmax(logits, tau=self.tau, hard=True, dim=-1)
        if self.config.eval_decisions == "gumbel":
            # argmax(logits + Gumbel noise): the hard sample, independent of tau.
            noise = -torch.empty_like(logits).exponential_().log()
            return _one_hot((logits + noise).argmax(dim=-1), logits.dtype)
        return _one_hot(logits.argmax(dim=-1), logits.dtype)
