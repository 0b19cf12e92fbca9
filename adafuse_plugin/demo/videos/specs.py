"""The generated classes and clip specs: what a clip shows, how it is sampled, and how
its partner class reverses it frame for frame."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

import numpy as np

# Opposite pairs are adjacent: the partner of label ``l`` is ``l ^ 1``. The even member of each
# pair is the canonical one that :func:`sample_spec` draws directly.
CLASSES: tuple[str, ...] = (
    "moving_right",
    "moving_left",
    "moving_down",
    "moving_up",
    "approaching",
    "receding",
    "rotating_clockwise",
    "rotating_anticlockwise",
    "appearing",
    "disappearing",
)

# A second, independently designed family: cyclic changes, each periodic, so every clip
# starts at a random phase of its cycle whatever ``phase`` says.
CYCLE_CLASSES: tuple[str, ...] = (
    "orbiting_clockwise",
    "orbiting_anticlockwise",
    "hue_rising",
    "hue_falling",
    "texture_scrolling_forward",
    "texture_scrolling_backward",
    "background_moving_left",
    "background_moving_right",
)

#: Classes of the still frames of frame-level pretraining (`sample_still_spec`): the
#: actor's angle in 12 bins of 30 degrees. Not a temporal family: no pairs, no motion.
ORIENTATION_CLASSES: tuple[str, ...] = tuple(f"angle_{30 * b:03d}" for b in range(12))

#: The class families ``generate_dataset`` can render.
Family = Literal["motion", "cycles"]
FAMILIES: dict[str, tuple[str, ...]] = {"motion": CLASSES, "cycles": CYCLE_CLASSES}

SPLITS: tuple[str, ...] = ("train", "val", "test")

# Named dataset sizes: clips per class in each split.
SIZES: dict[str, dict[str, int]] = {
    "tiny": {"train": 2, "val": 2, "test": 2},
    "small": {"train": 28, "val": 6, "test": 6},
    "medium": {"train": 110, "val": 20, "test": 20},
    "large": {"train": 300, "val": 50, "test": 50},
}

SHAPES: tuple[str, ...] = ("circle", "ellipse", "square", "triangle", "pentagon", "cross", "ring")
TEXTURES: tuple[str, ...] = ("stripes", "checker", "split")

#: How an action starts: at a random phase of its periodic version, or as in version 1.
Phase = Literal["random", "fixed"]
PHASES: tuple[str, ...] = get_args(Phase)

FPS = 12
MIN_FRAME_SIZE = 32
# Bump when the rendering changes, so that cached datasets are regenerated.
GENERATOR_VERSION = 2
# Ranges the wrapped attributes of a random-phase actor cycle through: [low, high).
_WRAP_RANGES: dict[str, tuple[float, float]] = {
    "x": (0.0, 1.0),
    "y": (0.0, 1.0),
    "scale": (0.4, 1.6),
    "opacity": (0.0, 1.0),
}
# Largest rotation between consecutive frames of a rotating actor (degrees). It stays below
# half the smallest symmetry period of any shape (36 degrees, the pentagon), so the perceived
# rotation direction is never ambiguous.
_MAX_ROTATION_STEP = 25.0


def reverse_label(label: int, family: str = "motion") -> int:
    """Return the label of the class whose clips are the time-reversed clips of ``label``."""
    _check_label(label, family)
    return label ^ 1


@dataclass(frozen=True)
class Pose:
    """State of a sprite at the first or last frame; frames in between interpolate linearly.

    ``x``/``y`` are the centre as fractions of the frame size, ``angle`` is in degrees (growing
    angles rotate clockwise on screen), ``scale`` multiplies the sprite radius and ``opacity``
    is in ``[0, 1]``. ``orbit`` is the position in degrees on a circle of the sprite's
    ``orbit_radius`` around (x, y), ``hue`` a rotation of its colours' hue in degrees and
    ``scroll`` an offset of its stripes or checks in texture periods.
    """

    x: float
    y: float
    scale: float
    angle: float
    opacity: float
    orbit: float = 0.0
    hue: float = 0.0
    scroll: float = 0.0


@dataclass(frozen=True)
class Sprite:
    """A textured, outlined shape moving from pose ``start`` to pose ``end``.

    ``radius`` is a fraction of the frame size. ``wobble`` is the (x, y) offset, as a fraction
    of the frame size, of a parabolic detour that peaks mid-clip and is zero at both ends.
    ``texture_freq`` is in texture periods per radius, ``texture_angle`` in degrees.
    ``wrap`` names pose attributes taken modulo their range in ``_WRAP_RANGES`` after
    interpolation (``x`` / ``y``: the sprite leaves one edge and re-enters at the other).
    """

    shape: str
    texture: str
    color: tuple[float, float, float]
    texture_color: tuple[float, float, float]
    texture_freq: float
    texture_angle: float
    radius: float
    start: Pose
    end: Pose
    wobble: tuple[float, float] = (0.0, 0.0)
    wrap: tuple[str, ...] = ()
    orbit_radius: float = 0.0


@dataclass(frozen=True)
class ClipSpec:
    """Everything :func:`render_clip` needs to draw a clip (colours are RGB in ``[0, 1]``).

    ``lighting`` is the global gain at the first and last frame, ``noise_std`` the standard
    deviation of the pixel noise (in ``[0, 1]`` intensity units) and ``frame_seeds`` seed the
    noise of each frame. ``pan`` is the background's horizontal offset (fraction of the
    width, wrapping around) at the first and last frame; ``family`` names the class list
    ``label`` indexes (``FAMILIES``; ``"orientation"``: `sample_still_spec`'s stills).
    """

    label: int
    num_frames: int
    frame_size: int
    actor: Sprite
    behind: tuple[Sprite, ...]
    front: tuple[Sprite, ...]
    background_seed: int
    lighting: tuple[float, float]
    noise_std: float
    frame_seeds: tuple[int, ...]
    pan: tuple[float, float] = (0.0, 0.0)
    family: str = "motion"


@dataclass(frozen=True)
class DatasetInfo:
    """Where :func:`generate_dataset` put a dataset.

    Paths in the lists are relative to ``root``; ``counts`` is the number of clips per split.
    """

    root: Path
    classes_file: Path
    lists: dict[str, Path]
    num_classes: int
    counts: dict[str, int]


# --------------------------------------------------------------------------------------------
# Sampling
# --------------------------------------------------------------------------------------------


def _pair(values: np.ndarray) -> tuple[float, float]:
    """Two drawn numbers as a pair of Python floats."""
    return float(values[0]), float(values[1])


def _check_label(label: int, family: str = "motion") -> None:
    if family not in FAMILIES:
        raise ValueError(f"family must be one of {sorted(FAMILIES)}, got {family!r}")
    classes = FAMILIES[family]
    if not 0 <= label < len(classes):
        raise ValueError(f"label must be in [0, {len(classes) - 1}], got {label}")


def _check_geometry(num_frames: int, frame_size: int) -> None:
    if num_frames < 2:
        raise ValueError(f"num_frames must be >= 2, got {num_frames}")
    if frame_size < MIN_FRAME_SIZE:
        raise ValueError(f"frame_size must be >= {MIN_FRAME_SIZE}, got {frame_size}")
    if frame_size % 2:
        raise ValueError(f"frame_size must be even (mp4v needs even sizes), got {frame_size}")


def _color_pair(rng: np.random.Generator) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Two RGB colours that differ by at least 0.35 in every channel."""
    first = rng.uniform(0.0, 1.0, 3)
    second = (first + rng.uniform(0.35, 0.65, 3)) % 1.0
    return tuple(float(c) for c in first), tuple(float(c) for c in second)


def _sprite_look(rng: np.random.Generator, radius: float) -> dict:
    color, texture_color = _color_pair(rng)
    return dict(
        shape=SHAPES[rng.integers(len(SHAPES))],
        texture=TEXTURES[rng.integers(len(TEXTURES))],
        color=color,
        texture_color=texture_color,
        texture_freq=float(rng.uniform(0.8, 1.6)),
        texture_angle=float(rng.uniform(0.0, 180.0)),
        radius=radius,
    )


def _drift(centre: float, change: float) -> tuple[float, float]:
    """Start and end values that are ``change`` apart around ``centre``."""
    return centre - 0.5 * change, centre + 0.5 * change


def _idle_actor(rng: np.random.Generator) -> Sprite:
    """An actor whose attributes only drift slightly, start and end exchangeable."""
    look = _sprite_look(rng, float(rng.uniform(0.13, 0.18)))
    x0, x1 = _drift(rng.uniform(0.3, 0.7), rng.uniform(-0.06, 0.06))
    y0, y1 = _drift(rng.uniform(0.3, 0.7), rng.uniform(-0.06, 0.06))
    s0, s1 = rng.uniform(0.85, 1.1, 2)
    a0, a1 = _drift(rng.uniform(0.0, 360.0), rng.uniform(-15.0, 15.0))
    o0, o1 = rng.uniform(0.85, 1.0, 2)
    start = Pose(float(x0), float(y0), float(s0), float(a0), float(o0))
    end = Pose(float(x1), float(y1), float(s1), float(a1), float(o1))
    return Sprite(**look, start=start, end=end)


def _sample_actor(
    canonical: int, rng: np.random.Generator, num_frames: int, phase: Phase
) -> Sprite:
    """The actor of a clip of the canonical (even) class ``canonical``.

    Attributes the class does not act on only drift slightly, with start and end exchangeable
    (swapping them does not change their distribution), so they do not reveal the direction
    of time. With ``phase="random"`` the acted attribute starts uniformly in its wrap range
    and changes by less than the range: its first and last values are both uniform.
    """
    idle = _idle_actor(rng)
    (x0, x1), (y0, y1) = (idle.start.x, idle.end.x), (idle.start.y, idle.end.y)
    (s0, s1), (a0, a1) = (idle.start.scale, idle.end.scale), (idle.start.angle, idle.end.angle)
    o0, o1 = idle.start.opacity, idle.end.opacity
    action = CLASSES[canonical]
    if phase == "random" and action != "rotating_clockwise":  # angles are periodic already
        attribute, change = {
            "moving_right": ("x", rng.uniform(0.45, 0.7)),
            "moving_down": ("y", rng.uniform(0.45, 0.7)),
            "approaching": ("scale", rng.uniform(0.8, 1.1)),
            "appearing": ("opacity", rng.uniform(0.8, 0.95)),
        }[action]
        low, high = _WRAP_RANGES[attribute]
        first = rng.uniform(low, high)
        values = dict(x=(x0, x1), y=(y0, y1), scale=(s0, s1), opacity=(o0, o1))
        values[attribute] = (first, first + change)
        (x0, x1), (y0, y1), (s0, s1), (o0, o1) = values.values()
        start = Pose(float(x0), float(y0), float(s0), float(a0), float(o0))
        end = Pose(float(x1), float(y1), float(s1), float(a1), float(o1))
        return dataclasses.replace(idle, start=start, end=end, wrap=(attribute,))
    if action == "moving_right":
        x0, x1 = rng.uniform(0.15, 0.3), rng.uniform(0.7, 0.85)
    elif action == "moving_down":
        y0, y1 = rng.uniform(0.15, 0.3), rng.uniform(0.7, 0.85)
    elif action == "approaching":
        s0, s1 = rng.uniform(0.4, 0.6), rng.uniform(1.3, 1.6)
    elif action == "rotating_clockwise":
        turn = min(rng.uniform(100.0, 200.0), _MAX_ROTATION_STEP * (num_frames - 1))
        a0, a1 = _drift(0.5 * (a0 + a1), turn)
    else:  # appearing
        o0, o1 = rng.uniform(0.0, 0.1), rng.uniform(0.9, 1.0)
    start = Pose(float(x0), float(y0), float(s0), float(a0), float(o0))
    end = Pose(float(x1), float(y1), float(s1), float(a1), float(o1))
    return dataclasses.replace(idle, start=start, end=end)


def _sample_cycle_actor(canonical: int, rng: np.random.Generator) -> tuple[Sprite, float]:
    """The actor of a canonical (even) class of the cycles family, and the background's
    pan over the clip (fraction of the width). Each change is periodic and starts at a
    uniformly random point of its cycle, so first and last frames are alike in law."""
    idle = _idle_actor(rng)
    base = dataclasses.replace(idle, start=_centred(idle.start), end=_centred(idle.end))
    action = CYCLE_CLASSES[canonical]
    start, end, pan = base.start, base.end, 0.0
    if action == "orbiting_clockwise":  # growing angle: clockwise on screen
        first = rng.uniform(0.0, 360.0)
        start = dataclasses.replace(start, orbit=first)
        end = dataclasses.replace(end, orbit=first + rng.uniform(180.0, 300.0))
        base = dataclasses.replace(base, orbit_radius=float(rng.uniform(0.18, 0.25)))
    elif action == "hue_rising":
        first = rng.uniform(0.0, 360.0)
        start = dataclasses.replace(start, hue=first)
        end = dataclasses.replace(end, hue=first + rng.uniform(150.0, 300.0))
    elif action == "texture_scrolling_forward":
        first = rng.uniform(0.0, 1.0)
        start = dataclasses.replace(start, scroll=first)
        end = dataclasses.replace(end, scroll=first + rng.uniform(1.2, 2.5))
        texture = ("stripes", "checker")[rng.integers(2)]  # split has nothing to scroll
        base = dataclasses.replace(base, texture=texture, texture_freq=1.2)
    else:  # background moving left
        pan = -float(rng.uniform(0.3, 0.5))
    return dataclasses.replace(base, start=start, end=end), pan


def _centred(pose: Pose) -> Pose:
    """``pose`` moved towards the frame centre (room for an orbit)."""
    return dataclasses.replace(pose, x=0.5 + 0.5 * (pose.x - 0.5), y=0.5 + 0.5 * (pose.y - 0.5))


def _sample_distractor(rng: np.random.Generator) -> Sprite:
    """A small sprite wandering along a random curved path; start and end are i.i.d."""
    look = _sprite_look(rng, float(rng.uniform(0.05, 0.09)))
    x, y = rng.uniform(0.05, 0.95, (2, 2))
    scale = rng.uniform(0.7, 1.3, 2)
    a0, a1 = _drift(rng.uniform(0.0, 360.0), rng.uniform(-90.0, 90.0))
    opacity = rng.uniform(0.7, 1.0, 2)
    start = Pose(float(x[0]), float(y[0]), float(scale[0]), float(a0), float(opacity[0]))
    end = Pose(float(x[1]), float(y[1]), float(scale[1]), float(a1), float(opacity[1]))
    return Sprite(**look, start=start, end=end, wobble=_pair(rng.uniform(-0.15, 0.15, 2)))


def _check_phase(phase: str) -> None:
    if phase not in PHASES:
        raise ValueError(f"phase must be one of {PHASES}, got {phase!r}")


def _scene(
    label: int,
    actor: Sprite,
    rng: np.random.Generator,
    num_frames: int,
    frame_size: int,
    pan: tuple[float, float] = (0.0, 0.0),
    family: str = "motion",
) -> ClipSpec:
    """A clip of ``actor`` among 1-3 wandering distractors (some in front of it), on a
    textured background, with a lighting drift and per-frame pixel noise."""
    distractors = [_sample_distractor(rng) for _ in range(rng.integers(1, 4))]
    in_front = rng.uniform(size=len(distractors)) < 0.3
    return ClipSpec(
        label=label,
        num_frames=num_frames,
        frame_size=frame_size,
        actor=actor,
        behind=tuple(d for d, f in zip(distractors, in_front, strict=True) if not f),
        front=tuple(d for d, f in zip(distractors, in_front, strict=True) if f),
        background_seed=int(rng.integers(2**31)),
        lighting=_pair(rng.uniform(0.85, 1.15, 2)),
        noise_std=float(rng.uniform(2.0, 8.0) / 255.0),
        frame_seeds=tuple(int(s) for s in rng.integers(2**31, size=num_frames)),
        pan=pan,
        family=family,
    )


def sample_spec(
    label: int,
    rng: np.random.Generator,
    num_frames: int = 16,
    frame_size: int = 64,
    phase: Phase = "random",
    family: Family = "motion",
) -> ClipSpec:
    """Draw a random clip of class ``label`` of ``family`` (all randomness from ``rng``).

    Clips of the odd member of a pair are drawn as reversed clips of the even member, so the
    unordered frames of both classes follow the same distribution; with ``phase="random"``
    (and always in the cycles family) so does the first frame.
    """
    _check_label(label, family)
    _check_geometry(num_frames, frame_size)
    _check_phase(phase)
    canonical = label & ~1
    pan_start = pan_change = 0.0
    if family == "cycles":
        actor, pan_change = _sample_cycle_actor(canonical, rng)
        pan_start = float(rng.uniform(0.0, 1.0)) if pan_change else 0.0
    else:
        actor = _sample_actor(canonical, rng, num_frames, phase)
    pan = (pan_start, pan_start + pan_change)
    spec = _scene(canonical, actor, rng, num_frames, frame_size, pan, family)
    return spec if label == canonical else reverse_spec(spec)


def sample_still_spec(
    label: int, rng: np.random.Generator, frame_size: int = 64, num_frames: int = 2
) -> ClipSpec:
    """A still scene of class ``label`` of ``ORIENTATION_CLASSES``, for frame-level
    pretraining (the stand-in for ImageNet): a clip's actor that does not turn, at an angle
    drawn uniformly in the label's bin, its texture fixed to its body (so the angle shows
    where the outline's symmetry hides it), among distractors as in a clip; only the
    distractors, the lighting and the noise change between frames."""
    if not 0 <= label < len(ORIENTATION_CLASSES):
        raise ValueError(f"label must be in [0, {len(ORIENTATION_CLASSES) - 1}], got {label}")
    _check_geometry(num_frames, frame_size)
    idle = _idle_actor(rng)
    angle = float((label + rng.uniform()) * 360.0 / len(ORIENTATION_CLASSES))
    pose = dataclasses.replace(idle.start, angle=angle)
    actor = dataclasses.replace(idle, start=pose, end=pose, texture_angle=0.0)
    return _scene(label, actor, rng, num_frames, frame_size, family="orientation")


def _reverse_sprite(sprite: Sprite) -> Sprite:
    return dataclasses.replace(sprite, start=sprite.end, end=sprite.start)


def reverse_spec(spec: ClipSpec) -> ClipSpec:
    """Spec of the partner class whose rendered frames are exactly ``spec``'s frames reversed."""
    return dataclasses.replace(
        spec,
        label=reverse_label(spec.label, spec.family),
        actor=_reverse_sprite(spec.actor),
        behind=tuple(_reverse_sprite(s) for s in spec.behind),
        front=tuple(_reverse_sprite(s) for s in spec.front),
        lighting=spec.lighting[::-1],
        frame_seeds=spec.frame_seeds[::-1],
        pan=spec.pan[::-1],
    )
