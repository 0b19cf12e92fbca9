"""Tests for the synthetic temporal-reasoning video dataset."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from adafuse_plugin.demo.videos import (
    CLASSES,
    CYCLE_CLASSES,
    ORIENTATION_CLASSES,
    SIZES,
    ClipSpec,
    DatasetInfo,
    Pose,
    Sprite,
    generate_dataset,
    render_clip,
    reverse_label,
    reverse_spec,
    sample_spec,
    sample_still_spec,
)

PAIRS = [(label, label + 1) for label in range(0, len(CLASSES), 2)]


def _decode(path: Path) -> np.ndarray:
    """All frames of a video as a (T, H, W, 3) uint8 RGB array."""
    import cv2

    capture = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(frame[..., ::-1])
    capture.release()
    return np.stack(frames)


def _read_list(path: Path) -> list[tuple[str, int]]:
    entries = []
    for line in path.read_text().splitlines():
        name, label = line.split(" ")
        entries.append((name, int(label)))
    return entries


def _mtimes(root: Path) -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}


# ------------------------------------------------------------------------------------------
# Classes and specs
# ------------------------------------------------------------------------------------------


def test_reverse_label_is_an_involution_pairing_opposites() -> None:
    for label in range(len(CLASSES)):
        partner = reverse_label(label)
        assert partner != label
        assert reverse_label(partner) == label
    assert CLASSES[reverse_label(CLASSES.index("moving_left"))] == "moving_right"
    assert CLASSES[reverse_label(CLASSES.index("approaching"))] == "receding"
    assert CLASSES[reverse_label(CLASSES.index("appearing"))] == "disappearing"
    assert len(set(CLASSES)) == len(CLASSES)


@pytest.mark.parametrize("label", range(len(CLASSES)))
@pytest.mark.parametrize(("num_frames", "frame_size"), [(2, 32), (7, 50), (16, 64)])
def test_reverse_spec_renders_exactly_reversed_frames(
    label: int, num_frames: int, frame_size: int
) -> None:
    for seed in range(3):
        spec = sample_spec(label, np.random.default_rng(seed), num_frames, frame_size)
        clip = render_clip(spec)
        assert clip.shape == (num_frames, frame_size, frame_size, 3)
        assert clip.dtype == np.uint8
        partner = reverse_spec(spec)
        assert partner.label == reverse_label(label)
        np.testing.assert_array_equal(render_clip(partner), clip[::-1])
        assert reverse_spec(partner) == spec


@pytest.mark.parametrize(("label", "partner"), PAIRS)
def test_partner_class_is_sampled_as_reversed_clips(label: int, partner: int) -> None:
    """With the same random stream, the partner's clip is the class's clip played backwards."""
    for seed in range(3):
        a = sample_spec(label, np.random.default_rng(seed), 8, 32)
        b = sample_spec(partner, np.random.default_rng(seed), 8, 32)
        assert a.label == label and b.label == partner
        assert b == reverse_spec(a)
        np.testing.assert_array_equal(render_clip(b), render_clip(a)[::-1])


def test_render_is_deterministic_and_specs_vary() -> None:
    spec = sample_spec(4, np.random.default_rng(7), 8, 48)
    np.testing.assert_array_equal(render_clip(spec), render_clip(spec))
    assert sample_spec(4, np.random.default_rng(7), 8, 48) == spec
    other = sample_spec(4, np.random.default_rng(8), 8, 48)
    assert other != spec
    assert not np.array_equal(render_clip(other), render_clip(spec))


# ------------------------------------------------------------------------------------------
# What the classes look like
# ------------------------------------------------------------------------------------------


def _actor_only(spec: ClipSpec) -> ClipSpec:
    """``spec`` without distractors, lighting drift and noise."""
    return dataclasses.replace(spec, behind=(), front=(), lighting=(1.0, 1.0), noise_std=0.0)


def _actor_masks(spec: ClipSpec) -> np.ndarray:
    """(T, H, W) masks of the pixels where the actor changes the clean frames."""
    spec = _actor_only(spec)
    actor = spec.actor
    hidden = dataclasses.replace(
        actor,
        start=dataclasses.replace(actor.start, opacity=0.0),
        end=dataclasses.replace(actor.end, opacity=0.0),
    )
    background = render_clip(dataclasses.replace(spec, actor=hidden)).astype(int)
    return np.abs(render_clip(spec).astype(int) - background).sum(axis=-1) > 30


def _centroid(mask: np.ndarray) -> np.ndarray:
    ys, xs = np.nonzero(mask)
    return np.array([xs.mean(), ys.mean()])


def _actor_features(spec: ClipSpec) -> np.ndarray:
    """(T, 3) per-frame actor area and first moments (x, y) about the frame centre."""
    masks = _actor_masks(spec)
    size = spec.frame_size
    offsets = np.arange(size) + 0.5 - size / 2
    x_moment = (masks * offsets[None, None, :]).sum(axis=(1, 2))
    y_moment = (masks * offsets[None, :, None]).sum(axis=(1, 2))
    return np.stack([masks.sum(axis=(1, 2)), x_moment, y_moment], axis=1) / size**2


def _z_scores(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """|difference of means| / its standard error, per column of two (N, F) samples."""
    stderr = np.sqrt(a.var(axis=0, ddof=1) / len(a) + b.var(axis=0, ddof=1) / len(b))
    return np.abs(a.mean(axis=0) - b.mean(axis=0)) / (stderr + 1e-12)


@pytest.mark.parametrize("phase", ["random", "fixed"])
@pytest.mark.parametrize(("label", "partner"), PAIRS)
def test_unordered_frames_of_a_class_and_its_partner_match(
    label: int, partner: int, phase: str
) -> None:
    """Independently drawn clips: frame-order-free actor statistics of both classes agree.
    Taken on the first frame only, they agree too with random phases, and tell the classes
    apart with fixed ones (the shortcut the random phase removes)."""
    features = {
        cls: np.stack(
            [
                _actor_features(
                    sample_spec(cls, np.random.default_rng([cls, seed]), 6, 32, phase=phase)
                )
                for seed in range(40)
            ]
        )
        for cls in (label, partner)
    }
    a, b = features[label], features[partner]  # (clips, frames, features)
    assert np.all(_z_scores(a.mean(axis=1), b.mean(axis=1)) < 4.0)
    first_frame = np.max(_z_scores(a[:, 0], b[:, 0]))
    if phase == "random":
        assert first_frame < 4.0
    elif CLASSES[label] != "rotating_clockwise":  # rotation starts at a uniform random angle
        assert first_frame > 8.0


@pytest.mark.parametrize(
    ("name", "axis", "sign"),
    [("moving_right", 0, 1), ("moving_left", 0, -1), ("moving_down", 1, 1), ("moving_up", 1, -1)],
)
def test_moving_classes_move_the_actor(name: str, axis: int, sign: int) -> None:
    size = 64
    for seed in range(5):
        spec = sample_spec(CLASSES.index(name), np.random.default_rng(seed), 8, size, "fixed")
        masks = _actor_masks(spec)
        shift = _centroid(masks[-1]) - _centroid(masks[0])
        assert sign * shift[axis] > 0.3 * size
        assert abs(shift[1 - axis]) < 0.15 * size


@pytest.mark.parametrize(("name", "grows"), [("approaching", True), ("receding", False)])
def test_approaching_and_receding_change_the_actor_size(name: str, grows: bool) -> None:
    for seed in range(5):
        spec = sample_spec(CLASSES.index(name), np.random.default_rng(seed), 8, 64, "fixed")
        first, last = _actor_masks(spec)[[0, -1]].sum(axis=(1, 2))
        assert (last > 3 * first) if grows else (first > 3 * last)


@pytest.mark.parametrize(("name", "shows"), [("appearing", True), ("disappearing", False)])
def test_appearing_and_disappearing_fade_the_actor(name: str, shows: bool) -> None:
    for seed in range(5):
        spec = sample_spec(CLASSES.index(name), np.random.default_rng(seed), 8, 64, "fixed")
        first, last = _actor_masks(spec)[[0, -1]].sum(axis=(1, 2))
        assert (last > 5 * first + 20) if shows else (first > 5 * last + 20)


def _circular_shift(previous: np.ndarray, current: np.ndarray) -> int:
    """The roll in (-n/2, n/2] that best maps the 1-D profile ``previous`` onto ``current``."""
    n = len(previous)
    shifts = np.arange(-n // 2 + 1, n // 2 + 1)
    return int(shifts[np.argmax([np.dot(np.roll(previous, k), current) for k in shifts])])


@pytest.mark.parametrize(
    ("name", "axis", "sign"),
    [("moving_right", 0, 1), ("moving_left", 0, -1), ("moving_down", 1, 1), ("moving_up", 1, -1)],
)
def test_random_phase_actors_move_on_a_torus(name: str, axis: int, sign: int) -> None:
    """Frame to frame the actor moves the labelled way, also across the edge it wraps at."""
    crossed = 0
    for seed in range(6):
        spec = sample_spec(CLASSES.index(name), np.random.default_rng(seed), 8, 64, "random")
        masks = _actor_masks(spec).astype(float)
        profiles = masks.sum(axis=1 + axis)  # (T, size) along the moving axis
        steps = [_circular_shift(a, b) for a, b in zip(profiles[:-1], profiles[1:])]
        assert all(sign * step > 0 for step in steps), steps
        # Nothing is lost at the edge: the same actor held at the centre covers as much.
        held = {"xy"[axis]: 0.5}
        centred = dataclasses.replace(
            spec.actor,
            start=dataclasses.replace(spec.actor.start, **held),
            end=dataclasses.replace(spec.actor.end, **held),
            wrap=(),
        )
        reference = _actor_masks(dataclasses.replace(spec, actor=centred)).sum(axis=(1, 2))
        np.testing.assert_allclose(masks.sum(axis=(1, 2)), reference, rtol=0.08)
        start, end = spec.actor.start, spec.actor.end
        crossed += int((getattr(start, "xy"[axis]) % 1) > (getattr(end, "xy"[axis]) % 1)) ^ (
            sign < 0
        )
    assert crossed  # some clips do wrap around the edge


@pytest.mark.parametrize(
    ("name", "grows"),
    [("approaching", True), ("receding", False), ("appearing", True), ("disappearing", False)],
)
def test_random_phase_ramps_wrap_at_most_once(name: str, grows: bool) -> None:
    """Size (approaching) or visibility (appearing) ramps the labelled way at every step
    but at most one, where it wraps around its range."""
    wrapped = 0
    for seed in range(8):
        spec = _actor_only(
            sample_spec(CLASSES.index(name), np.random.default_rng(seed), 8, 64, "random")
        )
        if "scale" in spec.actor.wrap:
            amount = _actor_masks(spec).sum(axis=(1, 2)).astype(float)
        else:  # opacity: how much the actor changes the clean frames
            hidden = dataclasses.replace(
                spec.actor,
                start=dataclasses.replace(spec.actor.start, opacity=0.0),
                end=dataclasses.replace(spec.actor.end, opacity=0.0),
            )
            background = render_clip(dataclasses.replace(spec, actor=hidden)).astype(float)
            amount = np.abs(render_clip(spec) - background).sum(axis=(1, 2, 3))
        steps = np.diff(amount) * (1 if grows else -1)
        assert (steps <= 0).sum() <= 1, amount
        wrapped += int((steps <= 0).sum())
    assert wrapped  # some clips do wrap


def test_phase_is_checked() -> None:
    with pytest.raises(ValueError, match="phase must be one of"):
        sample_spec(0, np.random.default_rng(0), phase="shifted")


def test_growing_angle_rotates_clockwise_on_screen() -> None:
    """A half-coloured disc turned by +90 degrees moves its coloured half from right to bottom."""
    red, blue = (1.0, 0.0, 0.0), (0.0, 0.0, 1.0)
    pose = Pose(x=0.5, y=0.5, scale=1.0, angle=0.0, opacity=1.0)
    actor = Sprite("circle", "split", red, blue, 1.0, 0.0, 0.3, pose, pose)
    spec = sample_spec(CLASSES.index("rotating_clockwise"), np.random.default_rng(0), 2, 64)
    spec = _actor_only(dataclasses.replace(spec, actor=actor))
    turned = dataclasses.replace(actor, end=dataclasses.replace(pose, angle=90.0))
    clip = render_clip(dataclasses.replace(spec, actor=turned)).astype(int)
    centre = np.array([32.0, 32.0])
    blue_mask = (clip[..., 2] > 200) & (clip[..., 0] < 50) & (clip[..., 1] < 50)
    right, below = _centroid(blue_mask[0]) - centre, _centroid(blue_mask[1]) - centre
    assert right[0] > 5 and abs(right[1]) < 2
    assert below[1] > 5 and abs(below[0]) < 2
    clockwise = sample_spec(CLASSES.index("rotating_clockwise"), np.random.default_rng(3), 8, 64)
    assert clockwise.actor.end.angle > clockwise.actor.start.angle


# ------------------------------------------------------------------------------------------
# Dataset files
# ------------------------------------------------------------------------------------------


def test_generate_dataset_writes_lists_videos_and_manifest(tmp_path: Path) -> None:
    info = generate_dataset(tmp_path / "ds", "tiny", progress=False)
    assert isinstance(info, DatasetInfo)
    assert info.num_classes == len(CLASSES)
    per_split = {split: n * len(CLASSES) for split, n in SIZES["tiny"].items()}
    assert info.counts == per_split
    assert info.classes_file.read_text().split() == list(CLASSES)
    seen = set()
    for split, list_file in info.lists.items():
        entries = _read_list(list_file)
        assert len(entries) == per_split[split]
        assert sorted(label for _, label in entries) == sorted(
            list(range(len(CLASSES))) * SIZES["tiny"][split]
        )
        for name, _ in entries:
            assert name.startswith(f"videos/{split}/") and name.endswith(".mp4")
            assert (info.root / name).is_file()
            seen.add(name)
    assert len(seen) == sum(per_split.values())
    manifest = json.loads((info.root / "manifest.json").read_text())
    assert manifest["params"]["num_frames"] == 16
    assert manifest["params"]["frame_size"] == 64
    assert manifest["params"]["seed"] == 0


def test_videos_decode_to_the_rendered_clips(tmp_path: Path) -> None:
    import cv2

    info = generate_dataset(tmp_path / "ds", 3, num_frames=8, frame_size=48, progress=False)
    name, label = _read_list(info.lists["val"])[0]
    video = _decode(info.root / name)
    assert video.shape == (8, 48, 48, 3)
    # The list order is (index, label) and clip (split, label, index) uses that random stream.
    expected = render_clip(sample_spec(label, np.random.default_rng([0, 1, label, 0]), 8, 48))

    def gray(x: np.ndarray) -> np.ndarray:
        return np.stack([cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in x]).astype(float)

    assert np.abs(gray(video) - gray(expected)).mean() < 6.0


def test_generation_is_deterministic(tmp_path: Path) -> None:
    kwargs = dict(size="tiny", num_frames=6, frame_size=32, seed=5, progress=False)
    a = generate_dataset(tmp_path / "a", **kwargs)
    b = generate_dataset(tmp_path / "b", **kwargs)
    for split in a.lists:
        assert a.lists[split].read_text() == b.lists[split].read_text()
        for name, _ in _read_list(a.lists[split]):
            np.testing.assert_array_equal(_decode(a.root / name), _decode(b.root / name))
    c = generate_dataset(tmp_path / "c", **{**kwargs, "seed": 6})
    name, _ = _read_list(a.lists["train"])[0]
    assert not np.array_equal(_decode(a.root / name), _decode(c.root / name))


def test_cache_is_reused_and_invalidated(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    kwargs = dict(num_frames=6, frame_size=32, progress=False)
    generate_dataset(root, "tiny", **kwargs)
    before = _mtimes(root)
    generate_dataset(root, "tiny", **kwargs)
    assert _mtimes(root) == before

    # A missing video makes the cache incomplete.
    name, _ = _read_list(root / "test_list.txt")[-1]
    (root / name).unlink()
    generate_dataset(root, "tiny", **kwargs)
    assert (root / name).is_file()

    # Other parameters regenerate, and the old dataset's extra videos are removed.
    info = generate_dataset(root, 3, **kwargs)
    assert json.loads((root / "manifest.json").read_text())["params"]["size"] == 3
    assert info.counts == {"train": 10, "val": 10, "test": 10}
    assert len(list((root / "videos").rglob("*.mp4"))) == 30
    assert _decode(root / _read_list(info.lists["train"])[0][0]).shape == (6, 32, 32, 3)


def test_int_size_splits_clips_per_class(tmp_path: Path) -> None:
    info = generate_dataset(tmp_path / "ds", 7, num_frames=2, frame_size=32, progress=False)
    assert info.counts == {"train": 50, "val": 10, "test": 10}


# ------------------------------------------------------------------------------------------
# Bad input
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(size="huge"), "unknown size"),
        (dict(size=2), "must be >= 3"),
        (dict(size=1.5), "size must be"),
        (dict(frame_size=16), "frame_size must be >= 32"),
        (dict(frame_size=33), "frame_size must be even"),
        (dict(num_frames=1), "num_frames must be >= 2"),
        (dict(seed=-1), "seed must be >= 0"),
    ],
)
def test_generate_dataset_rejects_bad_input(tmp_path: Path, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        generate_dataset(tmp_path / "ds", **{"progress": False, **kwargs})
    assert not (tmp_path / "ds").exists()


@pytest.mark.slow
def test_module_imports_without_opencv() -> None:
    code = "import sys, adafuse_plugin.demo.videos; assert 'cv2' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[1])


def test_bad_labels_and_specs_are_rejected() -> None:
    rng = np.random.default_rng(0)
    for label in (-1, len(CLASSES)):
        with pytest.raises(ValueError, match="label must be in"):
            reverse_label(label)
        with pytest.raises(ValueError, match="label must be in"):
            sample_spec(label, rng)
    with pytest.raises(ValueError, match="num_frames must be >= 2"):
        sample_spec(0, rng, num_frames=1)
    with pytest.raises(ValueError, match="frame_size must be >= 32"):
        sample_spec(0, rng, frame_size=31)
    spec = sample_spec(0, rng, 4, 32)
    with pytest.raises(ValueError, match="frame seeds"):
        render_clip(dataclasses.replace(spec, frame_seeds=spec.frame_seeds[:-1]))
    with pytest.raises(ValueError, match="unknown shape"):
        render_clip(dataclasses.replace(spec, actor=dataclasses.replace(spec.actor, shape="blob")))
    with pytest.raises(ValueError, match="unknown texture"):
        render_clip(
            dataclasses.replace(spec, actor=dataclasses.replace(spec.actor, texture="plaid"))
        )


def test_still_specs_hold_the_actor_at_an_angle_of_its_labels_bin() -> None:
    """Frame-level pretraining's stills: the label is the actor's angle bin, the actor
    does not turn, its texture turns with its body; the rest of the scene as in a clip."""
    for label, name in enumerate(ORIENTATION_CLASSES):
        low = float(name.removeprefix("angle_"))
        for index in range(4):
            spec = sample_still_spec(label, np.random.default_rng([label, index]), 32)
            actor = spec.actor
            assert spec.label == label and spec.num_frames == 2
            assert low <= actor.start.angle == actor.end.angle < low + 30.0
            assert actor.texture_angle == 0.0
    assert len(ORIENTATION_CLASSES) == 12
    # Without distractors, noise or a lighting change, both frames are the same image.
    still = dataclasses.replace(spec, behind=(), front=(), noise_std=0.0, lighting=(1.0, 1.0))
    frames = render_clip(still)
    np.testing.assert_array_equal(frames[0], frames[1])
    turned = dataclasses.replace(
        still, actor=dataclasses.replace(actor, end=dataclasses.replace(actor.end, angle=low + 60))
    )
    assert not np.array_equal(*render_clip(turned))  # a turning actor would show
    for label in (-1, len(ORIENTATION_CLASSES)):
        with pytest.raises(ValueError, match="label must be in"):
            sample_still_spec(label, np.random.default_rng(0))


# ------------------------------------------------------------------------------------------
# The second family: cyclic changes
# ------------------------------------------------------------------------------------------

CYCLE_PAIRS = [(label, label + 1) for label in range(0, len(CYCLE_CLASSES), 2)]


def _cycle_spec(name: str, seed: int, frames: int = 8, size: int = 64) -> ClipSpec:
    label = CYCLE_CLASSES.index(name)
    return sample_spec(label, np.random.default_rng(seed), frames, size, family="cycles")


@pytest.mark.parametrize("label", range(len(CYCLE_CLASSES)))
def test_cycles_reverse_exactly_and_partners_are_reversed_clips(label: int) -> None:
    for seed in range(3):
        spec = sample_spec(label, np.random.default_rng(seed), 7, 48, family="cycles")
        partner = sample_spec(label ^ 1, np.random.default_rng(seed), 7, 48, family="cycles")
        assert partner == reverse_spec(spec) and reverse_spec(partner) == spec
        np.testing.assert_array_equal(render_clip(partner), render_clip(spec)[::-1])


def _without_actor(spec: ClipSpec) -> ClipSpec:
    actor = spec.actor
    hidden = dataclasses.replace(
        actor,
        start=dataclasses.replace(actor.start, opacity=0.0),
        end=dataclasses.replace(actor.end, opacity=0.0),
    )
    return dataclasses.replace(spec, actor=hidden)


def _frame_features(spec: ClipSpec) -> np.ndarray:
    """(T, 6): actor area and moments, and the mean colour of the clean frame."""
    clean = render_clip(_actor_only(spec)).astype(float).mean(axis=(1, 2)) / 255
    return np.concatenate([_actor_features(spec), clean], axis=1)


@pytest.mark.parametrize(("label", "partner"), CYCLE_PAIRS)
def test_cycle_pairs_differ_only_in_frame_order(label: int, partner: int) -> None:
    """Frame sets and first frames of a class and its partner agree in law."""
    features = {
        cls: np.stack(
            [
                _frame_features(
                    sample_spec(cls, np.random.default_rng([cls, s]), 6, 32, family="cycles")
                )
                for s in range(40)
            ]
        )
        for cls in (label, partner)
    }
    a, b = features[label], features[partner]
    assert np.all(_z_scores(a.mean(axis=1), b.mean(axis=1)) < 4.0)
    assert np.all(_z_scores(a[:, 0], b[:, 0]) < 4.0)


@pytest.mark.parametrize(
    ("name", "sign"), [("orbiting_clockwise", 1), ("orbiting_anticlockwise", -1)]
)
def test_orbiting_actors_circle_their_centre(name: str, sign: int) -> None:
    for seed in range(4):
        spec = _cycle_spec(name, seed)
        centre = np.array([spec.actor.start.x, spec.actor.start.y]) * 0.5
        centre += np.array([spec.actor.end.x, spec.actor.end.y]) * 0.5
        offsets = np.stack([_centroid(m) for m in _actor_masks(spec)]) - 64 * centre
        a, b = offsets[:-1], offsets[1:]
        turns = a[:, 0] * b[:, 1] - a[:, 1] * b[:, 0]  # > 0: clockwise on screen (y down)
        assert np.all(sign * turns > 0), turns


@pytest.mark.parametrize(("name", "sign"), [("hue_rising", 1), ("hue_falling", -1)])
def test_hue_classes_turn_the_actor_colour_wheel(name: str, sign: int) -> None:
    import colorsys

    for seed in range(4):
        spec = _actor_only(_cycle_spec(name, seed))
        hidden = _without_actor(spec)
        changed = np.abs(render_clip(spec).astype(int) - render_clip(hidden)).sum(-1) > 30
        clip = render_clip(spec).astype(float) / 255
        hues = [colorsys.rgb_to_hls(*frame[mask].mean(0))[0] for frame, mask in zip(clip, changed)]
        steps = (np.diff(hues) + 0.5) % 1.0 - 0.5  # shortest way round the wheel
        assert (sign * steps > 0).mean() >= 0.8, steps


@pytest.mark.parametrize(
    ("name", "sign"), [("background_moving_left", -1), ("background_moving_right", 1)]
)
def test_background_classes_pan_the_background(name: str, sign: int) -> None:
    for seed in range(4):
        spec = _cycle_spec(name, seed)
        empty = _without_actor(_actor_only(spec))
        profiles = render_clip(empty).astype(float).mean(axis=(1, 3))  # (T, W)
        profiles -= profiles.mean(axis=1, keepdims=True)
        steps = [_circular_shift(p, q) for p, q in zip(profiles[:-1], profiles[1:])]
        assert all(sign * step >= 0 for step in steps) and sign * sum(steps) > 8, steps


def test_generate_a_cycles_dataset(tmp_path: Path) -> None:
    info = generate_dataset(
        tmp_path / "ds", 3, num_frames=4, frame_size=32, progress=False, family="cycles"
    )
    assert info.num_classes == len(CYCLE_CLASSES)
    assert info.classes_file.read_text().split() == list(CYCLE_CLASSES)
    labels = {int(line.split()[1]) for line in info.lists["train"].read_text().splitlines()}
    assert labels == set(range(len(CYCLE_CLASSES)))
    with pytest.raises(ValueError, match="family must be one of"):
        generate_dataset(tmp_path / "other", 3, family="colours")
