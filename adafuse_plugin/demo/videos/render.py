"""Rendering a `ClipSpec` into frames, exactly reversibly."""

from __future__ import annotations

import colorsys
import dataclasses
import math
from dataclasses import dataclass

import numpy as np

from .specs import _WRAP_RANGES, SHAPES, TEXTURES, ClipSpec, Sprite, _check_geometry

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
