"""Causal streaming inference that executes only the channels AdaFuse needs.

`StreamingRunner` converts a trained, patched model (eval mode) into a runner that takes
one frame at a time and keeps, per AdaFuse block, the state causal execution needs:
the pooled input of the previous frame (policy input), the first-stage output of the
previous frame for the channel groups computed then, and the previous block input.

Per frame t and block, with decisions keep K, reuse R, skip S per channel group:

- the first conv (BatchNorm and activation folded in) runs only for the groups in K;
- groups in R come from y_{t-1}: from the cache when they were kept at t-1, otherwise
  they are computed now from the cached input x_{t-1} ("late" computation). So the first
  conv runs for group i at frame tau iff keep_tau(i) or reuse_{tau+1}(i): exactly Eq. 5;
- the second conv runs only over the non-skipped input groups K + R (at t = 0 the reused
  groups are the zero history, and still count as executed, as in Eq. 5);
- everything else (stem, shortcut, third conv, head) runs densely.

Per-frame logits equal those of the patched model run on the whole clip (float
tolerance), and `StreamingRunner.executed_flops` equals `audit_flops`'s Eq. 5 count for
the same decisions after every frame.

Speed (CPU, batch 1). Weights are folded and packed once into oneDNN's blocked layout, so
no conv re-packs its weight per call (eager ``F.conv2d`` does, which dominates small-map
layers). A channel selection is served by a packed weight cached for exactly that
selection when there is one (packed when the selection recurs, so a stable policy pays
packing once and per-frame random decisions almost never do); otherwise by one call per
channel group with weights packed per group (coarse granularity; outputs concatenated,
inputs accumulated in place by oneDNN's fused add), by packing the gathered weight now,
by matrix products, by a small compiled kernel that reads the subset's weight rows in
place (built for the machine on first use), or by the dense conv with the unused
channels discarded, whichever online timings say is fastest for that conv
(``dense_fallback="timed"``). Activations are channels_last from the stem on. See
docs/online-inference.md for measurements.
"""

from ..adapters import streaming_block_classes as supported_streaming_blocks
from ..errors import AdaFuseStreamingError
from ._direct import status as kernel_status
from ._selection import DENSE_FALLBACKS
from .plans import StreamingPlan
from .runner import STREAMING_POLICIES, ExecutedFlops, StreamingRunner, StreamingStep

__all__ = [
    "DENSE_FALLBACKS",
    "STREAMING_POLICIES",
    "AdaFuseStreamingError",
    "ExecutedFlops",
    "StreamingPlan",
    "StreamingRunner",
    "StreamingStep",
    "kernel_status",
    "supported_streaming_blocks",
]
