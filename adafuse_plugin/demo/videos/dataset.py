"""Writing a generated dataset: mp4 files, mmaction2 video lists, a cached manifest."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from .render import render_clip
from .specs import (
    FAMILIES,
    FPS,
    GENERATOR_VERSION,
    SIZES,
    SPLITS,
    DatasetInfo,
    Family,
    Phase,
    _check_geometry,
    _check_label,
    _check_phase,
    sample_spec,
)

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


def write_video(path: Path, frames: np.ndarray) -> None:
    """Write (T, H, W, 3) uint8 RGB frames as an mp4v video at the dataset's frame rate."""
    import cv2

    height, width = frames.shape[1:3]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"mp4v"), FPS, (width, height))
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
                    write_video(video_dir / name, render_clip(spec))
                    lines.append(f"videos/{split}/{name} {label}\n")
                    bar.update()
            (root / f"{split}_list.txt").write_text("".join(lines))
    (root / "classes.txt").write_text("".join(f"{name}\n" for name in classes))
    manifest.write_text(json.dumps({"params": params, "counts": totals}, indent=2) + "\n")
    return _dataset_info(root, totals, len(classes))
