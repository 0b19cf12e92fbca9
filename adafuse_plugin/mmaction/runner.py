"""Build an mmengine Runner for an AdaFuse config: compat fixes, plugin, checks, CPU DDP."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..errors import AdaFuseConfigError
from .compat import apply_compat_fixes

DATALOADERS = ("train_dataloader", "val_dataloader", "test_dataloader")


def load_config(path: str | os.PathLike, options: dict | None = None) -> Any:
    """``Config.fromfile`` after the compat fixes, with ``--cfg-options`` merged in."""
    apply_compat_fixes()
    from mmengine.config import Config

    if not Path(path).is_file():
        raise AdaFuseConfigError(f"config file {str(path)!r} does not exist")
    cfg = Config.fromfile(str(path))
    if options:
        cfg.merge_from_dict(options)
    return cfg


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
    for step in dataset.get("pipeline") or []:
        if step.get("type") == "SampleFrames":
            frames = step.get("clip_len", 1) * step.get("num_clips", 1)
            if frames != segments:
                raise AdaFuseConfigError(
                    f"{name}: SampleFrames gives clip_len*num_clips={frames} frames per clip "
                    f"but model.adafuse.num_segments={segments}; make them equal (multi-clip "
                    "testing with AdaFuse is not supported)"
                )


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


def build_runner(cfg: Any, launcher: str = "none") -> Any:
    """An mmengine Runner for ``cfg`` with the plugin loaded and the config validated."""
    import torch
    from mmengine.runner import Runner

    apply_compat_fixes()
    import adafuse_plugin.mmaction  # noqa: F401  (registers the components)

    validate_config(cfg)
    cfg.launcher = launcher
    if launcher != "none" and not torch.cuda.is_available():
        setup_cpu_distributed(cfg)
    return Runner.from_cfg(cfg)
