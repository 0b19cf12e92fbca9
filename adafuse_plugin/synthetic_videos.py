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

import colorsys
import dataclasses
import json
import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

import numpy as np

__all__ = [
    "CLASSES",
    "CYCLE_CLASSES",
    "FAMILIES",
    "PHASES",
    "SIZES",
    "ClipSpec",
    "DatasetInfo",
    "Pose",
    "Sprite",
    "generate_dataset",
    "render_clip",
    "reverse_label",
    "reverse_spec",
    "sample_spec",
]

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
    ``label`` indexes (``FAMILIES``).
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
    wobble = tuple(float(w) for w in rng.uniform(-0.15, 0.15, 2))
    return Sprite(**look, start=start, end=end, wobble=wobble)


def _check_phase(phase: str) -> None:
    if phase not in PHASES:
        raise ValueError(f"phase must be one of {PHASES}, got {phase!r}")


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
    distractors = [_sample_distractor(rng) for _ in range(rng.integers(1, 4))]
    in_front = rng.uniform(size=len(distractors)) < 0.3
    spec = ClipSpec(
        label=canonical,
        num_frames=num_frames,
        frame_size=frame_size,
        actor=actor,
        behind=tuple(d for d, f in zip(distractors, in_front, strict=True) if not f),
        front=tuple(d for d, f in zip(distractors, in_front, strict=True) if f),
        background_seed=int(rng.integers(2**31)),
        lighting=tuple(float(g) for g in rng.uniform(0.85, 1.15, 2)),
        noise_std=float(rng.uniform(2.0, 8.0) / 255.0),
        frame_seeds=tuple(int(s) for s in rng.integers(2**31, size=num_frames)),
        pan=(pan_start, pan_start + pan_change),
        family=family,
    )
    return spec if label == canonical else reverse_spec(spec)


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


# --------------------------------------------------------------------------------------------
# Rendering
#
# Exact reversibility: frame t is interpolated with weights ((T-1-t)/(T-1), t/(T-1)) computed
# from integers, so swapping start/end and t <-> T-1-t swaps the two (commutative) products.
# Transcendental functions are only evaluated on per-frame Python scalars or on the static
# background; per-pixel work on frame-dependent data uses correctly rounded IEEE arithmetic
# only, so a frame's pixels do not depend on its position in the batch.
# --------------------------------------------------------------------------------------------


def _frame_weights(num_frames: int) -> list[tuple[float, float]]:
    last = num_frames - 1
    return [((last - t) / last, t / last) for t in range(num_frames)]


def _square_wave(phase: np.ndarray, period_px: np.ndarray) -> np.ndarray:
    """Anti-aliased 0/1 square wave of ``phase`` (in periods), edges about one pixel wide."""
    tri = np.abs(phase - np.floor(phase) - 0.5) - 0.25
    return np.clip(tri * period_px + 0.5, 0.0, 1.0)


def _polygon(u: np.ndarray, v: np.ndarray, sides: int, offset: float) -> np.ndarray:
    """Inside distance of a regular polygon with circumradius 1."""
    angles = [offset + 2.0 * math.pi * k / sides for k in range(sides)]
    out = u * math.cos(angles[0]) + v * math.sin(angles[0])
    for a in angles[1:]:
        out = np.maximum(out, u * math.cos(a) + v * math.sin(a))
    return math.cos(math.pi / sides) - out


def _inside_distance(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Signed distance (in radii, positive inside) to the outline of ``shape``."""
    if shape == "circle":
        return 1.0 - np.sqrt(u * u + v * v)
    if shape == "ellipse":
        return 0.55 * (1.0 - np.sqrt(u * u + (v / 0.55) ** 2))
    if shape == "square":
        return 0.8 - np.maximum(np.abs(u), np.abs(v))
    if shape == "triangle":
        return _polygon(u, v, 3, -math.pi / 2)
    if shape == "pentagon":
        return _polygon(u, v, 5, -math.pi / 2)
    if shape == "cross":
        au, av = np.abs(u), np.abs(v)
        return np.maximum(np.minimum(1.0 - au, 0.33 - av), np.minimum(0.33 - au, 1.0 - av))
    if shape == "ring":
        rho = np.sqrt(u * u + v * v)
        return np.minimum(1.0 - rho, rho - 0.5)
    raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")


def _texture(
    sprite: Sprite, u: np.ndarray, v: np.ndarray, radius_px: np.ndarray, scroll: np.ndarray
) -> np.ndarray:
    """Weight in ``[0, 1]`` of ``texture_color`` at local coordinates (u, v), the stripes
    or checks moved by ``scroll`` periods along the texture direction."""
    freq = sprite.texture_freq
    period_px = radius_px / freq
    if sprite.texture == "split":
        return np.clip(u * radius_px + 0.5, 0.0, 1.0)
    phi = math.radians(sprite.texture_angle)
    a = (u * math.cos(phi) + v * math.sin(phi)) * freq + scroll
    if sprite.texture == "stripes":
        return _square_wave(a, period_px)
    if sprite.texture == "checker":
        b = (v * math.cos(phi) - u * math.sin(phi)) * freq
        wa, wb = _square_wave(a, period_px), _square_wave(b, period_px)
        return wa + wb - 2.0 * wa * wb
    raise ValueError(f"unknown texture {sprite.texture!r}; expected one of {TEXTURES}")


def _wrapped(sprite: Sprite, attribute: str, value: float) -> float:
    """``value`` taken modulo the attribute's wrap range if the sprite wraps it."""
    if attribute not in sprite.wrap:
        return value
    low, high = _WRAP_RANGES[attribute]
    return low + (value - low) % (high - low)


@dataclass
class _Track:
    """Per-frame values of a sprite: centre and radius in pixels, rotation, opacity, hue
    rotation of its colours (degrees) and texture offset (periods)."""

    cx: list[float]
    cy: list[float]
    radius: list[float]
    cos_a: list[float]
    sin_a: list[float]
    opacity: list[float]
    hue: list[float]
    scroll: list[float]

    def shifted(self, dx: float, dy: float) -> _Track:
        return dataclasses.replace(self, cx=[c + dx for c in self.cx], cy=[c + dy for c in self.cy])


def _track(sprite: Sprite, num_frames: int, size: int) -> _Track:
    s, e = sprite.start, sprite.end
    track = _Track([], [], [], [], [], [], [], [])
    for w0, w1 in _frame_weights(num_frames):
        bump = 4.0 * (w0 * w1)
        orbit = math.radians(w0 * s.orbit + w1 * e.orbit)
        x = _wrapped(sprite, "x", w0 * s.x + w1 * e.x + bump * sprite.wobble[0])
        y = _wrapped(sprite, "y", w0 * s.y + w1 * e.y + bump * sprite.wobble[1])
        track.cx.append((x + sprite.orbit_radius * math.cos(orbit)) * size)
        track.cy.append((y + sprite.orbit_radius * math.sin(orbit)) * size)
        scale = _wrapped(sprite, "scale", w0 * s.scale + w1 * e.scale)
        track.radius.append(sprite.radius * scale * size)
        angle = math.radians(w0 * s.angle + w1 * e.angle)
        track.cos_a.append(math.cos(angle))
        track.sin_a.append(math.sin(angle))
        track.opacity.append(_wrapped(sprite, "opacity", w0 * s.opacity + w1 * e.opacity))
        track.hue.append(w0 * s.hue + w1 * e.hue)
        track.scroll.append(w0 * s.scroll + w1 * e.scroll)
    return track


def _draw_sprite(frames: np.ndarray, sprite: Sprite, grid: np.ndarray) -> None:
    """Alpha-composite ``sprite`` onto ``frames`` (T, H, W, 3) float32, in place; a sprite
    wrapping ``x`` / ``y`` is drawn on a torus (copies one frame width to either side)."""
    size = frames.shape[1]
    track = _track(sprite, frames.shape[0], size)
    x_copies = (-size, 0, size) if "x" in sprite.wrap else (0,)
    y_copies = (-size, 0, size) if "y" in sprite.wrap else (0,)
    for dx in x_copies:
        for dy in y_copies:
            _composite(frames, sprite, grid, track.shifted(dx, dy))


def _hue_rotated(color: tuple[float, ...], degrees: float) -> tuple[float, ...]:
    if degrees == 0.0:
        return color
    hue, lightness, saturation = colorsys.rgb_to_hls(*color)
    return colorsys.hls_to_rgb((hue + degrees / 360.0) % 1.0, lightness, saturation)


def _composite(frames: np.ndarray, sprite: Sprite, grid: np.ndarray, track: _Track) -> None:
    """Alpha-composite the sprite along ``track`` onto ``frames``, in place."""
    size = frames.shape[1]
    cx, cy, radius = track.cx, track.cy, track.radius

    # Only touch the pixels the sprite can reach in some frame (every shape fits in a disc of
    # 1.2 radii; 2 px margin for anti-aliasing).
    reach = [1.2 * rad + 2.0 for rad in radius]
    x0 = max(0, math.floor(min(c - m for c, m in zip(cx, reach, strict=True))))
    x1 = min(size, math.ceil(max(c + m for c, m in zip(cx, reach, strict=True))))
    y0 = max(0, math.floor(min(c - m for c, m in zip(cy, reach, strict=True))))
    y1 = min(size, math.ceil(max(c + m for c, m in zip(cy, reach, strict=True))))
    if x0 >= x1 or y0 >= y1:
        return
    frames = frames[:, y0:y1, x0:x1]

    def column(values: list[float]) -> np.ndarray:
        return np.asarray(values, dtype=np.float32)[:, None, None]

    r = column(radius)
    dx = grid[None, None, x0:x1] - column(cx)
    dy = grid[None, y0:y1, None] - column(cy)
    c, sn = column(track.cos_a), column(track.sin_a)
    # Local coordinates: the sprite is drawn rotated by +angle (clockwise, as y points down).
    u = (dx * c + dy * sn) / r
    v = (dy * c - dx * sn) / r
    inside_px = _inside_distance(sprite.shape, u, v) * r
    outline_px = max(1.0, size / 64.0)
    op = column(track.opacity)
    cover_all = (np.clip(inside_px + 0.5, 0.0, 1.0) * op)[..., None]
    cover_fill = (np.clip(inside_px - outline_px + 0.5, 0.0, 1.0) * op)[..., None]
    # Per-frame colours (hue rotation computed on per-frame scalars), (T, 1, 1, 3).
    color = np.asarray([_hue_rotated(sprite.color, h) for h in track.hue], dtype=np.float32)
    tex_color = np.asarray(
        [_hue_rotated(sprite.texture_color, h) for h in track.hue], dtype=np.float32
    )
    color, tex_color = color[:, None, None], tex_color[:, None, None]
    tex = _texture(sprite, u, v, r, column(track.scroll))[..., None]
    fill = color + (tex_color - color) * tex
    frames *= 1.0 - cover_all
    frames += (0.2 * color) * cover_all
    frames += (fill - frames) * cover_fill


def _bilinear_matrix(size: int, cells: int) -> np.ndarray:
    """(size, cells) matrix that bilinearly upsamples ``cells`` samples to ``size`` pixels."""
    pos = (np.arange(size) + 0.5) / size * (cells - 1)
    low = np.minimum(np.floor(pos).astype(int), cells - 2)
    frac = pos - low
    mat = np.zeros((size, cells))
    mat[np.arange(size), low] = 1.0 - frac
    mat[np.arange(size), low + 1] = frac
    return mat


def _background(seed: int, size: int) -> np.ndarray:
    """Static textured background (H, W, 3) float32 in ``[0, 1]``: blotches, grating, grain."""
    rng = np.random.default_rng(seed)
    base = rng.uniform(0.25, 0.75, 3)
    blotches = rng.uniform(-0.2, 0.2, (5, 5, 3))
    up = _bilinear_matrix(size, 5)
    image = base + np.stack([up @ blotches[..., c] @ up.T for c in range(3)], axis=-1)
    theta = rng.uniform(0.0, math.pi)
    freq = rng.uniform(2.0, 7.0)
    coords = (np.arange(size) + 0.5) / size
    phase = coords[None, :] * math.cos(theta) + coords[:, None] * math.sin(theta)
    grating = np.sin(2.0 * math.pi * (freq * phase + rng.uniform()))
    image += (rng.uniform(0.0, 0.1) * grating)[..., None] * rng.uniform(0.5, 1.0, 3)
    image += rng.uniform(-0.06, 0.06, (size, size, 3))
    return np.clip(image, 0.0, 1.0).astype(np.float32)


def render_clip(spec: ClipSpec) -> np.ndarray:
    """Render ``spec`` as a (T, H, W, 3) uint8 RGB array; a pure function of ``spec``."""
    _check_geometry(spec.num_frames, spec.frame_size)
    if len(spec.frame_seeds) != spec.num_frames:
        raise ValueError(
            f"spec has {len(spec.frame_seeds)} frame seeds for {spec.num_frames} frames"
        )
    size = spec.frame_size
    weights = _frame_weights(spec.num_frames)
    grid = (np.arange(size, dtype=np.float32) + 0.5).astype(np.float32)
    background = _background(spec.background_seed, size)
    p0, p1 = spec.pan
    frames = np.stack(
        [np.roll(background, round((w0 * p0 + w1 * p1) * size), axis=1) for w0, w1 in weights]
    )
    for sprite in (*spec.behind, spec.actor, *spec.front):
        _draw_sprite(frames, sprite, grid)
    g0, g1 = spec.lighting
    gain = [w0 * g0 + w1 * g1 for w0, w1 in weights]
    frames *= np.asarray(gain, dtype=np.float32)[:, None, None, None]
    noise = np.stack(
        [
            np.random.default_rng(seed).standard_normal((size, size, 3), dtype=np.float32)
            for seed in spec.frame_seeds
        ]
    )
    frames += np.float32(spec.noise_std) * noise
    return np.rint(np.clip(frames * 255.0, 0.0, 255.0)).astype(np.uint8)


# --------------------------------------------------------------------------------------------
# Dataset files
# --------------------------------------------------------------------------------------------


def _counts_per_class(size: str | int) -> dict[str, int]:
    if isinstance(size, bool) or not isinstance(size, (str, int)):
        raise ValueError(f"size must be one of {sorted(SIZES)} or an int, got {size!r}")
    if isinstance(size, str):
        if size not in SIZES:
            raise ValueError(f"unknown size {size!r}; expected one of {sorted(SIZES)} or an int")
        return dict(SIZES[size])
    if size < 3:
        raise ValueError(f"an int size is clips per class and must be >= 3, got {size}")
    held_out = max(1, round(0.15 * size))
    return {"train": size - 2 * held_out, "val": held_out, "test": held_out}


def _write_video(path: Path, frames: np.ndarray) -> None:
    import cv2

    height, width = frames.shape[1:3]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), FPS, (width, height))
    if not writer.isOpened():
        raise RuntimeError(f"OpenCV cannot write mp4v video {path}")
    try:
        for frame in frames:
            writer.write(np.ascontiguousarray(frame[..., ::-1]))  # RGB -> BGR
    finally:
        writer.release()


def _dataset_info(root: Path, counts: dict[str, int], num_classes: int) -> DatasetInfo:
    return DatasetInfo(
        root=root,
        classes_file=root / "classes.txt",
        lists={split: root / f"{split}_list.txt" for split in SPLITS},
        num_classes=num_classes,
        counts=counts,
    )


def _is_cached(root: Path, params: dict) -> bool:
    """Whether ``root`` holds a complete dataset generated with ``params``."""
    manifest = root / "manifest.json"
    if not manifest.is_file():
        return False
    try:
        if json.loads(manifest.read_text()).get("params") != params:
            return False
    except (json.JSONDecodeError, AttributeError):
        return False
    for split in SPLITS:
        list_file = root / f"{split}_list.txt"
        if not list_file.is_file():
            return False
        for line in list_file.read_text().splitlines():
            if not (root / line.rsplit(" ", 1)[0]).is_file():
                return False
    return (root / "classes.txt").is_file()


def generate_dataset(
    root: str | Path,
    size: str | int = "tiny",
    num_frames: int = 16,
    frame_size: int = 64,
    seed: int = 0,
    progress: bool = True,
    phase: Phase = "random",
    family: Family = "motion",
) -> DatasetInfo:
    """Render the dataset to ``root`` (or reuse it if already generated with these parameters).

    ``size`` is a name from :data:`SIZES` (clips per class per split) or an int number of clips
    per class, split 70/15/15 into train/val/test. Writes ``videos/<split>/<name>.mp4``,
    ``<split>_list.txt`` (``videos/<split>/<name>.mp4 <label>`` per line), ``classes.txt`` and
    ``manifest.json``. Clip ``i`` of class ``c`` in split ``s`` depends only on
    ``(seed, s, c, i)``, so a larger size extends a smaller one with the same clips.
    ``phase`` chooses how actions start (see the module docstring), ``family`` the classes
    (``FAMILIES``: ``"motion"``, the default, or ``"cycles"``).
    """
    from tqdm import tqdm

    counts = _counts_per_class(size)
    _check_geometry(num_frames, frame_size)
    _check_phase(phase)
    _check_label(0, family)
    classes = FAMILIES[family]
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    root = Path(root)
    totals = {split: counts[split] * len(classes) for split in SPLITS}
    params = {
        "generator_version": GENERATOR_VERSION,
        "size": size,
        "clips_per_class": counts,
        "num_frames": num_frames,
        "frame_size": frame_size,
        "seed": seed,
        "phase": phase,
        "family": family,
        "fps": FPS,
        "classes": list(classes),
    }
    if _is_cached(root, params):
        return _dataset_info(root, totals, len(classes))

    manifest = root / "manifest.json"
    if manifest.exists():  # a dataset of ours with other parameters: drop its stale videos
        manifest.unlink()
        shutil.rmtree(root / "videos", ignore_errors=True)
    root.mkdir(parents=True, exist_ok=True)
    with tqdm(total=sum(totals.values()), desc="synthetic videos", disable=not progress) as bar:
        for split_index, split in enumerate(SPLITS):
            video_dir = root / "videos" / split
            video_dir.mkdir(parents=True, exist_ok=True)
            lines = []
            for index in range(counts[split]):
                for label in range(len(classes)):
                    rng = np.random.default_rng([seed, split_index, label, index])
                    spec = sample_spec(label, rng, num_frames, frame_size, phase, family)
                    name = f"{index * len(classes) + label:05d}.mp4"
                    _write_video(video_dir / name, render_clip(spec))
                    lines.append(f"videos/{split}/{name} {label}\n")
                    bar.update()
            (root / f"{split}_list.txt").write_text("".join(lines))
    (root / "classes.txt").write_text("".join(f"{name}\n" for name in classes))
    manifest.write_text(json.dumps({"params": params, "counts": totals}, indent=2) + "\n")
    return _dataset_info(root, totals, len(classes))
