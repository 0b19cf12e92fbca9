"""Seeded synthetic "temporal reasoning" video dataset (a stand-in for Something-Something).

Every class has a ``reverse`` partner (moving right / moving left, approaching / receding, ...).
A clip is rendered from a small :class:`ClipSpec`; :func:`reverse_spec` maps a spec to a spec
of the partner class whose rendered frames are *exactly* the original frames in reverse order.
Because :func:`sample_spec` draws a partner-class spec as the reverse of a canonical-class spec,
the unordered set of frames of a class and of its partner are identically distributed: a model
that ignores frame order (e.g. TSN averaging) cannot tell the two apart, one that models time can.

With ``phase="random"`` (the default) each action also starts at a uniformly random phase
of a periodic version of itself (the actor wraps around the frame edges, its size and
opacity ramp and wrap around a range), so the first frame alone is identically distributed
for a class and its partner too: nothing but the order of the frames tells them apart.
``phase="fixed"`` keeps version 1's clips, whose first frame gives the class away (moving
right starts on the left, approaching starts small, ...).

Each clip shows one textured, outlined "actor" object performing the labelled action, on top of
a static textured background, with 1-3 smaller randomly moving distractor objects, a global
lighting drift and per-frame Gaussian pixel noise.

:func:`generate_dataset` writes real ``.mp4`` files plus mmaction2 ``VideoDataset`` annotation
lists (``videos/<split>/<name>.mp4 <label>``, paths relative to the dataset root, so use
``data_prefix=dict(video=root)``).
"""

from __future__ import annotations

from .dataset import generate_dataset, write_video
from .render import render_clip
from .specs import (
    CLASSES,
    CYCLE_CLASSES,
    FAMILIES,
    ORIENTATION_CLASSES,
    PHASES,
    SIZES,
    ClipSpec,
    DatasetInfo,
    Family,
    Phase,
    Pose,
    Sprite,
    reverse_label,
    reverse_spec,
    sample_spec,
    sample_still_spec,
)

__all__ = [
    "CLASSES",
    "CYCLE_CLASSES",
    "FAMILIES",
    "ORIENTATION_CLASSES",
    "PHASES",
    "SIZES",
    "ClipSpec",
    "DatasetInfo",
    "Family",
    "Phase",
    "Pose",
    "Sprite",
    "generate_dataset",
    "render_clip",
    "reverse_label",
    "reverse_spec",
    "sample_spec",
    "sample_still_spec",
    "write_video",
]
