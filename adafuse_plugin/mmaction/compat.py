"""Compatibility fixes for mmaction2 1.1.0 / mmengine 0.10.7 on a current stack.

The pinned OpenMMLab stack (see ``constraints.txt``) predates the torch, numpy and
setuptools releases we run it with. Everything that breaks, and that we need, is
fixed here by small, narrowly scoped patches, applied together by
:func:`apply_compat_fixes`. Each ``fix_*`` function documents the upstream problem
it works around, is idempotent on its own, and can be called separately.

Call :func:`apply_compat_fixes` before anything resolves configs or loads
checkpoints, in particular **before** ``Config.fromfile``: mmengine resolves
``_base_`` (including ``'mmaction::...'`` paths) before it runs ``custom_imports``,
so a config cannot switch these fixes on for itself.

Checkpoint safety
-----------------
:func:`safe_load_checkpoint` loads with ``torch.load(weights_only=True)`` plus an
allow-list of exactly the globals that mmengine checkpoints contain. After
:func:`fix_mmengine_checkpoint_loading` (part of :func:`apply_compat_fixes`)
mmengine's ``CheckpointLoader`` (and with it ``load_checkpoint``,
``Runner.load_checkpoint``, ``Runner.resume`` and ``init_cfg=Pretrained``) loads
through it too. Full unpickling, which executes arbitrary code from the file, is
only used on explicit opt-in: ``allow_unsafe=True`` or the environment variable
``ADAFUSE_ALLOW_UNSAFE_CHECKPOINTS=1``. ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` is
deliberately *not* honoured by :func:`safe_load_checkpoint` nor by mmengine's
local-file and URL loaders (they pass ``weights_only=True`` explicitly, which that
variable cannot override).
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.metadata
import importlib.util
import logging
import os
import os.path as osp
import pickle
import threading
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import torch

__all__ = [
    "ALLOW_UNSAFE_ENV",
    "UnsafeCheckpointError",
    "apply_compat_fixes",
    "fix_mmengine_checkpoint_loading",
    "fix_mmengine_metafile_config_list",
    "fix_mmengine_pkg_resources",
    "fix_tsm_pretrained2d_without_checkpoint",
    "load_from_local_safe",
    "mmengine_checkpoint_safe_globals",
    "mmengine_safe_globals",
    "safe_load_checkpoint",
    "unsafe_checkpoints_allowed",
]

#: Environment variable that opts in to full (unsafe) unpickling of checkpoints.
ALLOW_UNSAFE_ENV = "ADAFUSE_ALLOW_UNSAFE_CHECKPOINTS"

# Marker set on every function this module installs, so each fix is idempotent.
_MARKER = "_adafuse_compat_fix"
_APPLY_LOCK = threading.Lock()
_TRUE_VALUES = {"1", "true", "yes", "on"}
# The statistics HistoryBuffer registers on itself (``_set_default_statistics``).
# HistoryBuffer pickles them as ``getattr(HistoryBuffer, name)``.
_HISTORY_BUFFER_METHODS = frozenset({"min", "max", "mean", "current"})

logger = logging.getLogger(__name__)


def apply_compat_fixes() -> None:
    """Apply every compatibility fix for mmaction2 1.1.0 / mmengine 0.10.7.

    Idempotent and thread-safe: calling it again (or after some ``fix_*`` were
    applied individually) changes nothing. Imports mmengine and mmaction2, so
    both must be installed. The fixes are:

    * :func:`fix_mmengine_pkg_resources` - mmengine's package lookup without
      ``pkg_resources`` (removed in setuptools >= 82).
    * :func:`fix_mmengine_metafile_config_list` - ``'mmaction::...'`` config
      inheritance despite the list-valued ``Config:`` in mmaction2's bsn metafile.
    * :func:`fix_mmengine_checkpoint_loading` - mmengine checkpoints load with
      ``weights_only=True`` plus an allow-list; unsafe loading is opt-in.
    * :func:`fix_tsm_pretrained2d_without_checkpoint` - ``ResNetTSM`` /
      ``MobileNetV2TSM`` with their default ``pretrained2d=True`` and no
      checkpoint initialise from scratch instead of crashing.
    """
    with _APPLY_LOCK:
        fix_mmengine_pkg_resources()
        fix_mmengine_metafile_config_list()
        fix_mmengine_checkpoint_loading()
        fix_tsm_pretrained2d_without_checkpoint()


def _mark(func: Callable) -> Callable:
    setattr(func, _MARKER, True)
    return func


def _is_marked(obj: Any) -> bool:
    return bool(getattr(obj, _MARKER, False))


# --------------------------------------------------------------------------------------
# (a) pkg_resources
# --------------------------------------------------------------------------------------


def _is_installed(package: str) -> bool:
    """``mmengine.utils.is_installed`` on ``importlib.metadata``."""
    try:
        importlib.metadata.distribution(package)
        return True
    except importlib.metadata.PackageNotFoundError:
        spec = importlib.util.find_spec(package)
        return spec is not None and spec.origin is not None


def _package2module(package: str) -> str:
    """``mmengine.utils.package_utils.package2module`` on ``importlib.metadata``."""
    dist = importlib.metadata.distribution(package)
    top_level = dist.read_text("top_level.txt")
    if top_level and top_level.split():
        return top_level.split()[0]
    # Wheels built without top_level.txt: take the first package in RECORD.
    for file in dist.files or ():
        parts = file.parts
        if len(parts) == 2 and parts[1] == "__init__.py":
            return parts[0]
    raise ValueError(f"can not infer the module name of {package}")


def _get_installed_path(package: str) -> str:
    """``mmengine.utils.get_installed_path`` on ``importlib.metadata``.

    Same lookup order as upstream (distribution location joined with the package
    or its top-level module name, else ``find_spec``), plus a ``find_spec`` fallback
    for editable installs whose code does not live next to the metadata.
    """
    try:
        dist = importlib.metadata.distribution(package)
    except importlib.metadata.PackageNotFoundError:
        spec = importlib.util.find_spec(package)
        if spec is None:
            raise
        if spec.origin is None:
            raise RuntimeError(
                f"{package} is a namespace package, which is invalid for `get_install_path`"
            ) from None
        return osp.dirname(spec.origin)
    location = str(dist.locate_file(""))
    possible_path = osp.join(location, package)
    if osp.exists(possible_path):
        return possible_path
    module = _package2module(package)
    module_path = osp.join(location, module)
    if not osp.exists(module_path):
        spec = importlib.util.find_spec(module)
        if spec is not None and spec.origin is not None:
            return osp.dirname(spec.origin)
    return module_path


def fix_mmengine_pkg_resources() -> None:
    """Make mmengine's package lookups work without ``pkg_resources``.

    Upstream problem: ``mmengine.utils.package_utils`` (``is_installed``,
    ``get_installed_path``, ``package2module``) imports ``pkg_resources`` inside the
    functions. setuptools >= 82 no longer ships ``pkg_resources``, so every
    ``'mmaction::...'`` config path (``_base_``, ``read_base()``), ``mmengine.hub``
    and ``install_package`` fail with ``ModuleNotFoundError: pkg_resources``.

    Fix: re-implement the three functions on ``importlib.metadata`` and rebind them
    wherever mmengine imported them by name. Chosen over a ``pkg_resources`` shim
    in ``sys.modules`` (which would fool every other library probing for it) and
    over pinning ``setuptools<82`` (a build tool pinned for one runtime lookup).
    Applied even where ``pkg_resources`` still exists: the behaviour is the same
    and it avoids its slow import and deprecation warning.
    """
    from mmengine.utils import package_utils

    if _is_marked(package_utils.is_installed):
        return
    replacements = {
        "is_installed": _mark(_is_installed),
        "get_installed_path": _mark(_get_installed_path),
        "package2module": _mark(_package2module),
    }
    originals = {name: getattr(package_utils, name) for name in replacements}
    for module_name in (
        "mmengine.utils.package_utils",
        "mmengine.utils",
        "mmengine.config.config",
        "mmengine.hub.hub",
    ):
        module = importlib.import_module(module_name)
        for name, func in replacements.items():
            if getattr(module, name, None) is originals[name]:
                setattr(module, name, func)


# --------------------------------------------------------------------------------------
# (b) metafile with a list-valued ``Config:``
# --------------------------------------------------------------------------------------


def _get_cfg_metainfo(package_path: str, cfg_path: str) -> dict:
    """``mmengine.config.utils._get_cfg_metainfo`` accepting list-valued ``Config``."""
    from mmengine.fileio import load

    meta_index = load(osp.join(package_path, ".mim", "model-index.yml"))
    cfg_dict: dict[str, dict] = {}
    for meta_path in meta_index["Import"]:
        cfg_meta = load(osp.join(package_path, ".mim", meta_path))
        for model_cfg in cfg_meta["Models"]:
            if "Config" not in model_cfg:
                warnings.warn(f"There is not `Config` define in {model_cfg}", stacklevel=2)
                continue
            configs = model_cfg["Config"]
            for config in [configs] if isinstance(configs, str) else configs:
                # Some configs have several weights: keep the first entry.
                cfg_dict.setdefault(config.partition("/")[-1], {**model_cfg, "Config": config})
    if cfg_path not in cfg_dict:
        raise ValueError(f"Expected configs: {cfg_dict.keys()}, but got {cfg_path}")
    return cfg_dict[cfg_path]


def fix_mmengine_metafile_config_list() -> None:
    """Let ``'mmaction::...'`` configs resolve although a metafile lists configs.

    Upstream problem: to resolve ``_base_ = 'mmaction::<path>'`` mmengine parses
    *every* ``metafile.yml`` of the package and calls ``model_cfg['Config']
    .partition('/')``. mmaction2 1.1.0's ``configs/localization/bsn/metafile.yml``
    has ``Config:`` as a list of three files, so any ``mmaction::`` reference
    (even to an unrelated recognition config) raises ``AttributeError: 'list'
    object has no attribute 'partition'`` (fixed in later mmaction2 releases).

    Fix: replace ``_get_cfg_metainfo`` (in ``mmengine.config.utils`` and where
    ``mmengine.hub.hub`` imported it) by a version that registers each entry of a
    list-valued ``Config`` under its own name; string values behave as before.
    Only matters for configs that inherit from mmaction2's packaged configs;
    self-contained configs never reach this code.
    """
    from mmengine.config import utils as config_utils

    if _is_marked(config_utils._get_cfg_metainfo):
        return
    original = config_utils._get_cfg_metainfo
    replacement = _mark(_get_cfg_metainfo)
    for module_name in ("mmengine.config.utils", "mmengine.hub.hub"):
        module = importlib.import_module(module_name)
        if getattr(module, "_get_cfg_metainfo", None) is original:
            module._get_cfg_metainfo = replacement  # type: ignore[attr-defined]


# --------------------------------------------------------------------------------------
# (c) safe checkpoint loading
# --------------------------------------------------------------------------------------


class UnsafeCheckpointError(pickle.UnpicklingError):
    """A checkpoint needs globals outside the allow-list and unsafe loading is off."""


def unsafe_checkpoints_allowed() -> bool:
    """Whether ``ADAFUSE_ALLOW_UNSAFE_CHECKPOINTS`` opts in to full unpickling."""
    return os.environ.get(ALLOW_UNSAFE_ENV, "").strip().lower() in _TRUE_VALUES


@contextlib.contextmanager
def unsafe_checkpoints(allowed: bool = True) -> Iterator[None]:
    """Opt in to full unpickling for the duration of a block (one command), then restore
    the previous setting: an opt-in never outlives the command that asked for it."""
    previous = os.environ.get(ALLOW_UNSAFE_ENV)
    if allowed:
        os.environ[ALLOW_UNSAFE_ENV] = "1"
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(ALLOW_UNSAFE_ENV, None)
        else:
            os.environ[ALLOW_UNSAFE_ENV] = previous


def _history_buffer_getattr(obj: Any, name: str) -> Any:
    """Stand-in for ``builtins.getattr`` while unpickling mmengine checkpoints.

    ``HistoryBuffer.__getstate__`` stores its statistics methods, which pickle
    (protocol 2) writes as ``getattr(HistoryBuffer, 'mean')``. Allowing the real
    ``getattr`` would let a crafted file reach any attribute of any allowed
    object, so only those four lookups are answered.
    """
    from mmengine.logging import HistoryBuffer

    if obj is HistoryBuffer and name in _HISTORY_BUFFER_METHODS:
        return getattr(HistoryBuffer, name)
    raise pickle.UnpicklingError(
        f"getattr({obj!r}, {name!r}) is not allowed in a weights-only checkpoint"
    )


def mmengine_checkpoint_safe_globals() -> list[Any]:
    """The allow-list for ``weights_only`` loading of mmengine checkpoints.

    Found by saving checkpoints with a real ``Runner`` and listing
    ``torch.serialization.get_unsafe_globals_in_checkpoint``: ``message_hub``
    holds :class:`~mmengine.logging.HistoryBuffer` objects (numpy arrays plus the
    statistics methods, stored via ``getattr``) and numpy scalars such as
    ``runtime_info['eta']``. Entries:

    * ``mmengine.logging.history_buffer.HistoryBuffer``;
    * ``builtins.getattr``, mapped to a restricted stand-in that only resolves
      ``HistoryBuffer.{min,max,mean,current}``;
    * ``numpy.ndarray``, ``numpy.dtype`` and the numeric/bool dtype classes
      (``ndarray``/``dtype`` state is applied with ``BUILD``, which torch only
      permits on allow-listed types);
    * ``multiarray._reconstruct`` and ``multiarray.scalar`` under both their
      numpy 2 (``numpy._core``) and numpy 1 (``numpy.core``) names, so
      checkpoints written with either numpy load.
    """
    import numpy as np
    from mmengine.logging import HistoryBuffer

    core = getattr(np, "_core", None) or np.core
    entries: list[Any] = [
        HistoryBuffer,
        (_history_buffer_getattr, "builtins.getattr"),
        np.ndarray,
        np.dtype,
    ]
    for module_name in ("numpy._core.multiarray", "numpy.core.multiarray"):
        entries.append((core.multiarray._reconstruct, f"{module_name}._reconstruct"))
        entries.append((core.multiarray.scalar, f"{module_name}.scalar"))
    # bool, signed/unsigned ints, floats and complex; no object/str/void dtypes.
    dtype_classes = {type(np.dtype(code)) for code in "?bBhHiIlLqQefdgFDG"}
    entries.extend(sorted(dtype_classes - {np.dtype}, key=lambda cls: cls.__qualname__))
    return entries


_SAFE_GLOBALS_LOCK = threading.Lock()
_safe_globals_depth = 0
_safe_globals_ctx: Any = None


@contextlib.contextmanager
def mmengine_safe_globals() -> Iterator[None]:
    """Allow-list :func:`mmengine_checkpoint_safe_globals` for the enclosed loads.

    Re-entrant and thread-safe (reference counted); entries that were already
    allow-listed by someone else are neither added nor removed.
    """
    global _safe_globals_depth, _safe_globals_ctx
    with _SAFE_GLOBALS_LOCK:
        if _safe_globals_depth == 0:
            present = torch.serialization.get_safe_globals()
            missing = [e for e in mmengine_checkpoint_safe_globals() if e not in present]
            _safe_globals_ctx = torch.serialization.safe_globals(missing)
            _safe_globals_ctx.__enter__()
        _safe_globals_depth += 1
    try:
        yield
    finally:
        with _SAFE_GLOBALS_LOCK:
            _safe_globals_depth -= 1
            if _safe_globals_depth == 0:
                _safe_globals_ctx.__exit__(None, None, None)
                _safe_globals_ctx = None


def _load_with_policy(load: Callable[[bool], Any], source: Any, allow_unsafe: bool) -> Any:
    """Run ``load(weights_only)`` safely; fall back to unsafe only on opt-in."""
    try:
        with mmengine_safe_globals():
            return load(True)
    except pickle.UnpicklingError as err:
        if not (allow_unsafe or unsafe_checkpoints_allowed()):
            raise UnsafeCheckpointError(
                f"Refusing to unpickle {source!r}: it needs globals outside the "
                "weights-only allow-list (details above). Only if you trust the file, "
                f"pass allow_unsafe=True or set {ALLOW_UNSAFE_ENV}=1."
            ) from err
    warnings.warn(
        f"Loading {source!r} with full unpickling (weights_only=False): this can "
        "execute arbitrary code from the file.",
        stacklevel=3,
    )
    return load(False)


def safe_load_checkpoint(
    path: str | os.PathLike | Any,
    map_location: Any = "cpu",
    allow_unsafe: bool = False,
) -> Any:
    """Load a checkpoint without executing code from it.

    Uses ``torch.load(weights_only=True)`` with
    :func:`mmengine_checkpoint_safe_globals` allow-listed, so plain state dicts and
    full mmengine checkpoints (``meta``, ``message_hub``, optimizer and scheduler
    states) load. Anything else is rejected with :class:`UnsafeCheckpointError`
    unless ``allow_unsafe=True`` or ``ADAFUSE_ALLOW_UNSAFE_CHECKPOINTS=1``, in which
    case the file is fully unpickled (with a warning).

    Args:
        path: File path or binary file-like object.
        map_location: As in :func:`torch.load`. Defaults to ``'cpu'``.
        allow_unsafe: Fall back to full unpickling for files outside the
            allow-list. Only for files from a trusted source.
    """

    def load(weights_only: bool) -> Any:
        if hasattr(path, "seek"):
            path.seek(0)
        return torch.load(path, map_location=map_location, weights_only=weights_only)

    return _load_with_policy(load, path, allow_unsafe)


def _safe_load_url(
    url: str,
    model_dir: str | None = None,
    map_location: Any = None,
    progress: bool = True,
    check_hash: bool = False,
    file_name: str | None = None,
) -> Any:
    """``mmengine``'s ``load_url`` with the :func:`safe_load_checkpoint` policy."""

    def load(weights_only: bool) -> Any:
        return torch.hub.load_state_dict_from_url(
            url,
            model_dir=model_dir,
            map_location=map_location,
            progress=progress,
            check_hash=check_hash,
            file_name=file_name,
            weights_only=weights_only,
        )

    return _load_with_policy(load, url, allow_unsafe=False)


def load_from_local_safe(filename: str, map_location: Any = None) -> Any:
    """mmengine local-file checkpoint loader using :func:`safe_load_checkpoint`.

    (The name must start with ``load_from_``: mmengine logs ``__name__[10:]`` as
    the backend name.)
    """
    filename = osp.expanduser(filename)
    if not osp.isfile(filename):
        raise FileNotFoundError(f"{filename} can not be found.")
    return safe_load_checkpoint(filename, map_location=map_location)


def fix_mmengine_checkpoint_loading() -> None:
    """Make mmengine load checkpoints with ``weights_only=True`` plus an allow-list.

    Upstream problem: since torch 2.6 ``torch.load`` defaults to
    ``weights_only=True``. mmengine 0.10.7 calls ``torch.load(file,
    map_location)``, and its checkpoints contain ``HistoryBuffer`` objects and
    numpy arrays/scalars, so ``load_checkpoint`` / ``Runner.resume`` fail with
    ``UnpicklingError: Weights only load failed``. The common workaround
    ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1`` unpickles arbitrary code. Separately,
    mmengine's ``http(s)://`` / ``torchvision://`` / ``open-mmlab://`` loaders go
    through ``torch.hub.load_state_dict_from_url``, whose default is still
    ``weights_only=False``, i.e. downloaded files are fully unpickled.

    Fix (all in ``mmengine.runner.checkpoint``):

    * the local-file scheme (prefix ``''``) is re-registered to
      :func:`load_from_local_safe`;
    * ``load_url`` (used by the URL schemes) is replaced with one that passes
      ``weights_only=True`` under the same allow-list and opt-in policy;
    * ``CheckpointLoader.load_checkpoint`` runs every loader inside
      :func:`mmengine_safe_globals`, so the remaining schemes (``s3://``,
      ``pavi://``, user-registered ones), which rely on torch's
      ``weights_only=True`` default, accept mmengine checkpoints as well.
    """
    from mmengine.runner import checkpoint as ckpt

    loader_cls = ckpt.CheckpointLoader
    if _is_marked(loader_cls.__dict__["load_checkpoint"].__func__):
        return

    loader_cls.register_scheme(prefixes="", loader=_mark(load_from_local_safe), force=True)
    ckpt.load_url = _mark(_safe_load_url)

    original = loader_cls.__dict__["load_checkpoint"].__func__

    def load_checkpoint(cls, filename, map_location=None, logger="current"):
        with mmengine_safe_globals():
            return original(cls, filename, map_location, logger)

    load_checkpoint.__doc__ = original.__doc__
    loader_cls.load_checkpoint = classmethod(_mark(load_checkpoint))


# --------------------------------------------------------------------------------------
# (d) TSM backbones with pretrained2d=True and no checkpoint
# --------------------------------------------------------------------------------------


def fix_tsm_pretrained2d_without_checkpoint() -> None:
    """Initialise ``ResNetTSM`` / ``MobileNetV2TSM`` from scratch without a checkpoint.

    Upstream problem: both default to ``pretrained2d=True`` and then call
    ``_load_checkpoint(self.pretrained)`` in ``init_weights`` even when
    ``pretrained`` is ``None``, which crashes with ``TypeError: expected string or
    bytes-like object, got 'NoneType'``. Explicitly passing
    ``pretrained2d=False`` avoids it; this fix makes the default work too.

    Fix: wrap ``init_weights`` so that with ``pretrained2d=True`` and
    ``pretrained=None`` the backbone takes its from-scratch branch (the parent class's
    ``init_weights``, i.e. the ``init_cfg`` initialisers), with a log message.
    Every case that worked before is unchanged.
    """
    from mmaction.models.backbones import MobileNetV2TSM, ResNetTSM

    for cls in (ResNetTSM, MobileNetV2TSM):
        original = cls.__dict__["init_weights"]
        if _is_marked(original):
            continue
        cls.init_weights = _mark(_make_tsm_init_weights(cls, original))


def _make_tsm_init_weights(cls: type, original: Callable) -> Callable:
    def init_weights(self) -> None:
        if self.pretrained2d and self.pretrained is None:
            logger.info(
                "%s: pretrained2d=True but no pretrained checkpoint; initialising from scratch",
                cls.__name__,
            )
            super(cls, self).init_weights()  # type: ignore[arg-type]
            return
        original(self)

    init_weights.__doc__ = original.__doc__
    init_weights.__qualname__ = f"{cls.__qualname__}.init_weights"
    return init_weights
