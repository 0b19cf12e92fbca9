"""Build an mmengine Runner for an AdaFuse config: compat fixes, plugin, checks, CPU DDP."""

from __future__ import annotations

import ast
import os
from pathlib import Path
from typing import Any

from ..errors import AdaFuseConfigError
from .compat import apply_compat_fixes

DATALOADERS = ("train_dataloader", "val_dataloader", "test_dataloader")


def load_config(path: str | os.PathLike, options: dict | None = None) -> Any:
    """``Config.fromfile`` after the compat fixes, with ``--cfg-options`` merged in;
    ``'mmaction::<path>'`` names a config of the installed package, as in ``_base_``."""
    apply_compat_fixes()
    from mmengine.config import Config

    package, separator, relative = str(path).partition("::")
    if separator:
        import importlib

        root = Path(importlib.import_module(package).__file__).parent  # type: ignore[arg-type]
        path = root / ".mim" / "configs" / relative
    if not Path(path).is_file():
        raise AdaFuseConfigError(f"config file {str(path)!r} does not exist")
    cfg = Config.fromfile(str(path))
    if options:
        cfg.merge_from_dict(options)
    return cfg


def _plain_value(node: ast.expr, path: Path) -> Any:
    """The value of a literal, ``dict(k=...)``, ``dict({...})``, list, tuple or dict; anything
    else (calls, names, attribute access) is refused, so nothing is executed."""
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        return -_plain_value(node.operand, path)
    if isinstance(node, (ast.List, ast.Tuple)):
        items = [_plain_value(item, path) for item in node.elts]
        return items if isinstance(node, ast.List) else tuple(items)
    if isinstance(node, ast.Dict) and None not in node.keys:
        return {
            _plain_value(k, path): _plain_value(v, path)  # type: ignore[arg-type]
            for k, v in zip(node.keys, node.values)
        }
    if (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id == "dict"
        and len(node.args) <= 1
        and all(kw.arg is not None for kw in node.keywords)
    ):
        # mmengine dumps keys that are no identifiers as dict({'.key.': ...}).
        entries = dict(_plain_value(node.args[0], path)) if node.args else {}
        return entries | {kw.arg: _plain_value(kw.value, path) for kw in node.keywords}
    raise AdaFuseConfigError(
        f"{path}:{node.lineno}: {ast.unparse(node)[:80]!r} is not a plain value; a config "
        "dump holds only literals and dict(...), so this file was edited or is not one. "
        "Pass allow_unsafe=True (--allow-unsafe-checkpoints) only for a work dir you trust: "
        "it executes the file."
    )


def load_config_dump(path: str | os.PathLike, allow_unsafe: bool = False) -> Any:
    """The config mmengine dumped into a work dir, read without executing it.

    ``Config.fromfile`` runs a ``.py`` config as Python; a dump is plain assignments of
    literals, so it is parsed instead. ``allow_unsafe=True`` falls back to
    ``Config.fromfile`` (trusted folders only).
    """
    path = Path(path)
    if allow_unsafe:
        return load_config(path)
    apply_compat_fixes()
    from mmengine.config import Config

    values = {}
    for statement in ast.parse(path.read_text(), filename=str(path)).body:
        if not (
            isinstance(statement, ast.Assign)
            and len(statement.targets) == 1
            and isinstance(statement.targets[0], ast.Name)
        ):
            raise AdaFuseConfigError(
                f"{path}:{statement.lineno}: only NAME = value assignments are read from a "
                "config dump; pass allow_unsafe=True for a work dir you trust"
            )
        values[statement.targets[0].id] = _plain_value(statement.value, path)
    return Config(values, filename=str(path))


def _adafuse_segments(cfg: Any) -> int | None:
    adafuse = cfg.get("model", {}).get("adafuse")
    return None if adafuse is None else adafuse.get("num_segments")


def _check_dataset(name: str, dataset: Any, segments: int | None) -> None:
    root = dataset.get("data_root")
    ann_file = dataset.get("ann_file")
    if ann_file and not Path(ann_file).is_file():
        raise AdaFuseConfigError(
            f"{name}: annotation file {ann_file!r} does not exist; set data_root / ann_file "
            "to your copy of the dataset (see docs/train-mmaction2.md for the layout)"
        )
    for key, prefix in (dataset.get("data_prefix") or {}).items():
        if prefix and not Path(prefix).is_dir():
            raise AdaFuseConfigError(
                f"{name}: data_prefix.{key}={prefix!r} is not a directory (data_root={root!r})"
            )
    if segments is None:
        return
    views = views_per_video(dataset.get("pipeline") or [], segments, where=name)
    if views != 1 and name.startswith("train"):
        raise AdaFuseConfigError(
            f"{name}: the pipeline makes {views} views of each video; training takes one "
            "clip of num_segments frames per sample (views are for testing)"
        )


#: Crops of one frame that each make a view (mmaction2's multi-crop test transforms).
_CROP_VIEWS = {"ThreeCrop": 3, "TenCrop": 10}
_SAMPLERS = ("SampleFrames", "DenseSampleFrames", "UniformSample", "UniformSampleFrames")


def views_per_video(pipeline: list, segments: int, where: str = "pipeline") -> int:
    """Test views per video of a pipeline, each a clip of ``segments`` frames, as mmaction2
    lays them out (crop-major, then clips, then frames: consecutive blocks of ``segments``
    frames are views, which the gates fuse separately and the head averages).

    TSN-style sampling (``clip_len=1``) must take ``num_clips == segments`` segments, one
    view, doubled by ``twice_sample``; clip sampling (``clip_len > 1``) must take
    ``clip_len == segments`` frames, one view per clip; ``DenseSampleFrames`` makes one view
    per sample position; ``ThreeCrop`` / ``TenCrop`` multiply the views.
    """
    views = None
    for step in pipeline:
        kind = step.get("type")
        if kind in _SAMPLERS:
            if kind not in ("SampleFrames", "DenseSampleFrames"):
                raise AdaFuseConfigError(
                    f"{where}: {kind} is not a sampling AdaFuse can check; use SampleFrames "
                    "(or DenseSampleFrames) with num_segments frames per view"
                )
            clip_len, num_clips = step.get("clip_len", 1), step.get("num_clips", 1)
            if clip_len == 1:
                if num_clips != segments:
                    raise AdaFuseConfigError(
                        f"{where}: {kind} takes num_clips={num_clips} one-frame segments but "
                        f"model.adafuse.num_segments={segments}: AdaFuse would fuse frames of "
                        f"pseudo-clips. Use num_clips={segments}; for more test views use "
                        "twice_sample=True or ThreeCrop / TenCrop"
                    )
                views = 1
            elif clip_len == segments:
                views = num_clips
            else:
                raise AdaFuseConfigError(
                    f"{where}: {kind} takes clips of clip_len={clip_len} frames but "
                    f"model.adafuse.num_segments={segments}; make them equal"
                )
            if step.get("twice_sample"):
                views *= 2
            if kind == "DenseSampleFrames":
                positions = step.get("num_sample_positions", 10)
                views *= positions if step.get("test_mode") else 1
        elif kind in _CROP_VIEWS and views is not None:
            views *= _CROP_VIEWS[kind]
    return 1 if views is None else views


def validate_config(cfg: Any) -> None:
    """Fail early, with a clear message, on a config that would fail deep in a run.

    Checks every dataloader present: its annotation file and data folders exist, and
    each SampleFrames step yields ``model.adafuse.num_segments`` frames.
    """
    segments = _adafuse_segments(cfg)
    for name in DATALOADERS:
        loader = cfg.get(name)
        if loader is None:
            continue
        dataset = loader.get("dataset", {})
        while "dataset" in dataset:  # RepeatDataset / wrappers
            dataset = dataset["dataset"]
        _check_dataset(name, dataset, segments)


def setup_cpu_distributed(cfg: Any) -> None:
    """Prepare a torchrun CPU job: gloo process group before the Runner, DDP without
    device ids, and unused-parameter detection for the policy networks."""
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("gloo")
    cfg.env_cfg = {**cfg.get("env_cfg", {}), "dist_cfg": dict(backend="gloo")}
    cfg.model_wrapper_cfg = dict(
        type="MMDistributedDataParallel", device_ids=None, find_unused_parameters=True
    )


def _seed_from_resumed_checkpoint(cfg: Any) -> None:
    """When resuming without an explicit seed, use the checkpoint's before the Runner is
    built: mmengine restores it only after the dataloaders have drawn their sampler seeds,
    so the resumed run would otherwise see another data order."""
    from mmengine.runner import find_latest_checkpoint

    randomness = dict(cfg.get("randomness") or {})
    if not cfg.get("resume") or randomness.get("seed") is not None:
        return
    path = cfg.get("load_from") or find_latest_checkpoint(cfg.work_dir)
    if path and Path(path).is_file():
        from .compat import safe_load_checkpoint

        seed = safe_load_checkpoint(path).get("meta", {}).get("seed")
        if seed is not None:
            cfg.randomness = dict(randomness, seed=seed)


def build_runner(cfg: Any, launcher: str = "none") -> Any:
    """An mmengine Runner for ``cfg`` with the plugin loaded and the config validated."""
    import torch
    from mmengine.runner import Runner

    apply_compat_fixes()
    import adafuse_plugin.mmaction  # noqa: F401  (registers the components)

    validate_config(cfg)
    _seed_from_resumed_checkpoint(cfg)
    cfg.launcher = launcher
    if launcher != "none" and not torch.cuda.is_available():
        setup_cpu_distributed(cfg)
    return Runner.from_cfg(cfg)
