"""Convert the authors' released AdaFuse checkpoints into mmengine checkpoints for our configs.

The authors' files (``{'state_dict': ...}`` saved from ``nn.DataParallel``) name a
torchvision-style ResNet-50 under ``module.base_model.`` and the classifier under
``module.new_fc.``; each AdaFuse block holds ``policy_net.gate_fc0`` (Linear 2c -> H),
``gate_bn`` (BatchNorm1d H) and ``gate_fc1`` (Linear H -> 3c', three rows per channel in
the order skip, reuse, keep). Shared policy Linear layers are stored again under
``base_model.gate_fc0s`` / ``gate_fc1s.<2c>_<3c'>``. This module maps every key onto
mmaction2's ``ResNet`` / ``ResNetTSM`` names and our gates, reorders the action rows to
keep, reuse, skip, and refuses anything it cannot account for.
"""

from __future__ import annotations

import copy
import dataclasses
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from ..errors import AdaFuseCheckpointError
from ..surgery import iter_gates

Variant = Literal["tsn", "tsm", "tsm-last"]

#: The authors' released Something-V1 models: our config for each, their file name and
#: the top-1 their evaluation script prints (Gumbel-sampled decisions, 8 frames, 1 clip).
RELEASED: dict[str, dict[str, Any]] = {
    "tsn": dict(
        config="adafuse-tsn_r50_8xb8-1x1x8-50e_sthv1-rgb.py",
        file="sthv1_adatsn50.pth.tar",
        top1=41.885,
    ),
    "tsm": dict(
        config="adafuse-tsm_r50_8xb8-1x1x8-50e_sthv1-rgb.py",
        file="sthv1_adatsm50.pth.tar",
        top1=44.897,
    ),
    "tsm-last": dict(
        config="adafuse-tsm-last_r50_8xb8-1x1x8-50e_sthv1-rgb.py",
        file="sthv1_adatsm50last.pth.tar",
        top1=46.754,
    ),
}

_LAYER = r"layer\d+\.\d+"
_RULES: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(pattern), target)
    for pattern, target in (
        (r"^conv1\.weight$", "backbone.conv1.conv.weight"),
        (r"^bn1\.(\w+)$", r"backbone.conv1.bn.\1"),
        (rf"^({_LAYER})\.conv(\d)\.weight$", r"backbone.\1.conv\2.conv.weight"),
        (rf"^({_LAYER})\.bn(\d)\.(\w+)$", r"backbone.\1.conv\2.bn.\3"),
        (rf"^({_LAYER})\.downsample0\.weight$", r"backbone.\1.downsample.conv.weight"),
        (rf"^({_LAYER})\.downsample1\.(\w+)$", r"backbone.\1.downsample.bn.\2"),
        (rf"^({_LAYER})\.policy_net\.gate_fc0\.(\w+)$", r"backbone.\1.adafuse.policy_net.fc1.\2"),
        (rf"^({_LAYER})\.policy_net\.gate_bn\.(\w+)$", r"backbone.\1.adafuse.policy_net.norm.\2"),
        (rf"^({_LAYER})\.policy_net\.gate_fc1\.(\w+)$", r"backbone.\1.adafuse.policy_net.fc2.\2"),
    )
)
_SHARED_COPY = re.compile(r"^gate_fc([01])s\.(\d+_\d+)\.(weight|bias)$")
_HEAD = re.compile(r"^new_fc\.(weight|bias)$")


@dataclasses.dataclass
class Conversion:
    """What `convert_state_dict` did: every source key is in exactly one list."""

    state_dict: dict[str, torch.Tensor]
    mapped: dict[str, str]  # source key -> target key
    shared_copies: list[str]  # base_model.gate_fc*s.* keys, checked equal and dropped
    filled: list[str]  # target buffers absent from the source (num_batches_tracked)


def load_authors_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """The state dict of an authors' checkpoint, loaded weights-only (no code runs).

    ``module.`` (DataParallel) and ``base_model.`` stay; a missing ``module.`` is fine.
    """
    path = Path(path)
    if not path.is_file():
        raise AdaFuseCheckpointError(f"no checkpoint file at {path}")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated, not a torch file, or pickled code
        raise AdaFuseCheckpointError(
            f"{path} cannot be read as a weights-only torch checkpoint ({type(err).__name__}: "
            f"{str(err).splitlines()[0][:200]}); is the download complete?"
        ) from err
    state = data.get("state_dict", data) if isinstance(data, Mapping) else None
    if not isinstance(state, Mapping) or not all(
        isinstance(v, torch.Tensor) for v in state.values()
    ):
        raise AdaFuseCheckpointError(
            f"{path} holds no state dict of tensors (found {type(data).__name__}); the "
            "authors' files are dicts with a 'state_dict' entry"
        )
    state = {k.removeprefix("module."): v for k, v in state.items()}
    if not any(k.startswith("base_model.") for k in state) or not any(
        ".policy_net." in k for k in state
    ):
        sample = sorted(state)[:4]
        raise AdaFuseCheckpointError(
            f"{path} is not an AdaFuse checkpoint in the authors' layout: no "
            f"'base_model.*.policy_net.*' keys (first keys: {sample})"
        )
    return dict(state)


def detect_variant(state: Mapping[str, torch.Tensor], filename: str = "") -> Variant | None:
    """Which released architecture the weights have: ``tsm-last`` (policies in layer4 only),
    ``tsn`` / ``tsm`` (policies everywhere), or None when unknown.

    AdaFuse-TSN and AdaFuse-TSM have identical keys and shapes (the shift has no
    weights); they are told apart by the released file names (``adatsn`` / ``adatsm``),
    else None.
    """
    gated = {k.split(".policy_net.")[0] for k in state if ".policy_net." in k}
    blocks = {".".join(k.split(".")[:3]) for k in state if re.match(r"base_model\.layer", k)}
    if gated and all(name.startswith("base_model.layer4.") for name in gated):
        return "tsm-last"
    if gated != blocks:
        return None
    name = Path(filename).name.lower()
    if "adatsn" in name:
        return "tsn"
    if "adatsm" in name and "last" not in name:
        return "tsm"
    return None


def model_variant(model: nn.Module) -> Variant | None:
    """The released architecture an `AdaFuseRecognizer2D` has, or None."""
    gated = [name for name, _ in iter_gates(model.get_submodule("backbone"))]
    shifted = getattr(model.backbone, "is_shift", False)
    wiring = getattr(model, "settings", {}).get("tsm_wiring")
    if gated and all(name.startswith("layer4.") for name in gated):
        return "tsm-last" if shifted and wiring == "authors" else None
    if not shifted:
        return "tsn"
    return "tsm" if wiring == "authors" else None


def _target_key(source: str, targets: Mapping[str, torch.Tensor]) -> str | None:
    for pattern, replacement in _RULES:
        if pattern.match(source):
            key = pattern.sub(replacement, source)
            # ResNetTSM wraps conv1.conv in a TemporalShift: its weight is conv1.conv.net.
            shifted = key.replace(".conv1.conv.weight", ".conv1.conv.net.weight")
            return key if key in targets or shifted not in targets else shifted
    match = _HEAD.match(source)
    return f"cls_head.fc_cls.{match.group(1)}" if match else None


def _keep_reuse_skip_rows(tensor: torch.Tensor) -> torch.Tensor:
    """Reorder gate_fc1 rows from (skip, reuse, keep) per channel to (keep, reuse, skip)."""
    return tensor.reshape(-1, 3, *tensor.shape[1:]).flip(1).reshape(tensor.shape)


def convert_state_dict(state: Mapping[str, torch.Tensor], model: nn.Module) -> Conversion:
    """Map an authors' state dict (``module.`` stripped) onto ``model``'s keys.

    Raises `AdaFuseCheckpointError` naming every unmapped source key, every target key
    left without a value, every shape mismatch, and shared layers whose copies differ.
    """
    targets = model.state_dict()
    converted: dict[str, torch.Tensor] = {}
    mapped: dict[str, str] = {}
    shared_copies, unmapped, shapes = [], [], []
    for source, value in state.items():
        key = source.removeprefix("base_model.")
        if _SHARED_COPY.match(key):
            shared_copies.append(source)
            continue
        target = _target_key(key, targets)
        if target is None or target not in targets:
            unmapped.append(f"{source} (-> {target})" if target else source)
            continue
        if target.endswith(".policy_net.fc2.weight") or target.endswith(".policy_net.fc2.bias"):
            value = _keep_reuse_skip_rows(value)
        if value.shape != targets[target].shape:
            shapes.append(f"{source}: {tuple(value.shape)} vs {tuple(targets[target].shape)}")
        mapped[source] = target
        converted[target] = value.to(targets[target].dtype)
    filled = [k for k in targets if k not in converted and k.endswith("num_batches_tracked")]
    for key in filled:
        converted[key] = torch.zeros_like(targets[key])
    missing = [k for k in targets if k not in converted]
    if unmapped or missing or shapes:
        raise AdaFuseCheckpointError(
            "the checkpoint does not fit this config: "
            + "; ".join(
                f"{label} ({len(keys)}): {keys[:6]}{' ...' if len(keys) > 6 else ''}"
                for label, keys in (
                    ("source keys with no place in the model", unmapped),
                    ("model keys the checkpoint lacks", missing),
                    ("shape mismatches", shapes),
                )
                if keys
            )
            + ". Choose the config of the same released model (see `adafuse convert --help`)."
        )
    _check_shared(state, shared_copies, model, converted)
    return Conversion(converted, mapped, shared_copies, filled)


def _check_shared(
    state: Mapping[str, torch.Tensor],
    shared_copies: list[str],
    model: nn.Module,
    converted: Mapping[str, torch.Tensor],
) -> None:
    """Blocks whose policy Linear layers the model shares must hold equal values, and the
    checkpoint's extra shared copies must equal them: nothing is silently dropped."""
    groups: dict[int, list[str]] = {}
    for name, gate in iter_gates(model.get_submodule("backbone")):
        if gate.policy_net is not None:
            groups.setdefault(id(gate.policy_net.fc1), []).append(name)
    for names in groups.values():
        for layer in ("fc1", "fc2"):
            for field in ("weight", "bias"):
                keys = [f"backbone.{n}.adafuse.policy_net.{layer}.{field}" for n in names]
                if any(not torch.equal(converted[keys[0]], converted[k]) for k in keys[1:]):
                    raise AdaFuseCheckpointError(
                        f"blocks {names} share their policy {layer} in this config, but the "
                        "checkpoint holds different values for them: it was not trained "
                        "with shared policies; choose a config with share_policy=False"
                    )
    first_of_shape: dict[str, str] = {}  # "<2c>_<3c'>" -> the first block with that shape
    for key in state:
        if key.endswith(".policy_net.gate_fc0.weight"):
            block = key.removesuffix(".gate_fc0.weight")
            shape = f"{state[key].shape[1]}_{state[block + '.gate_fc1.weight'].shape[0]}"
            first_of_shape.setdefault(shape, block)
    for source in shared_copies:
        match = _SHARED_COPY.match(source.removeprefix("base_model."))
        if match is None:  # shared_copies holds only keys this pattern selected
            raise AdaFuseCheckpointError(f"{source!r} is not a shared policy copy")
        layer, shape, field = match.groups()
        found = first_of_shape.get(shape)
        if found is None or not torch.equal(
            state[f"{found}.gate_fc{layer}.{field}"], state[source]
        ):
            raise AdaFuseCheckpointError(
                f"{source}: a shared policy layer that no block uses with equal values; "
                "the checkpoint is inconsistent"
            )


def build_model(config: Any) -> nn.Module:
    """The recognizer of an mmaction2 config, built without loading pretrained weights."""
    from mmaction.registry import MODELS
    from mmengine.registry import init_default_scope

    init_default_scope("mmaction")
    model_cfg = copy.deepcopy(config.model)
    model_cfg.backbone.pretrained = None
    return MODELS.build(model_cfg)


def convert_checkpoint(
    source: str | Path,
    output: str | Path,
    config: str | Path | None = None,
    variant: Variant | None = None,
) -> dict[str, Any]:
    """Convert an authors' checkpoint into an mmengine checkpoint for ``config``.

    Args:
        source: the authors' ``.pth.tar`` file.
        output: where to write the mmengine checkpoint (``{'meta', 'state_dict'}``,
            loadable weights-only).
        config: the mmaction2 config the weights are for; default: the shipped config
            of the detected released model.
        variant: ``tsn``, ``tsm`` or ``tsm-last`` when the file name does not tell
            AdaFuse-TSN from AdaFuse-TSM (their weights have the same keys).

    Returns:
        A summary: variant, config, key counts, parameters, the expected top-1.
    """
    from .runner import load_config

    state = load_authors_checkpoint(source)
    detected = detect_variant(state, str(source))
    if variant is not None and detected is not None and variant != detected:
        raise AdaFuseCheckpointError(
            f"{Path(source).name} looks like AdaFuse-{detected.upper()} (its "
            f"{'policy layout' if detected == 'tsm-last' else 'file name'}), not "
            f"--variant {variant}"
        )
    variant = variant or detected
    if config is None:
        if variant is None:
            raise AdaFuseCheckpointError(
                f"cannot tell which released model {Path(source).name} is: AdaFuse-TSN and "
                "AdaFuse-TSM weights have identical keys. Pass --variant tsn or tsm, or "
                "--config"
            )
        config = shipped_config(RELEASED[variant]["config"])
    model = build_model(load_config(config))
    expected = model_variant(model)
    if variant is not None and expected != variant:
        raise AdaFuseCheckpointError(
            f"{Path(source).name} is AdaFuse-{variant.upper()} but {Path(config).name} builds "
            f"{'AdaFuse-' + expected.upper() if expected else 'another architecture'}; use "
            f"{RELEASED[variant]['config']}"
        )
    conversion = convert_state_dict(state, model)
    model.load_state_dict(conversion.state_dict, strict=True)
    meta = dict(
        adafuse_convert=dict(
            source=Path(source).name, variant=variant or "unknown", config=Path(config).name
        )
    )
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"meta": meta, "state_dict": conversion.state_dict}, output)
    return dict(
        output=str(output),
        config=str(config),
        variant=variant,
        source_keys=len(state),
        mapped=len(conversion.mapped),
        shared_copies_checked=len(conversion.shared_copies),
        filled_buffers=len(conversion.filled),
        parameters=sum(p.numel() for p in model.parameters()),
        expected_top1=RELEASED[variant]["top1"] if variant else None,
    )


def shipped_config(name: str) -> Path:
    """Path of a shipped config (package data: ``adafuse_plugin/configs``)."""
    from ..demo import config_dir

    path = config_dir() / name
    if not path.is_file():
        raise AdaFuseCheckpointError(
            f"the shipped config {name} is not at {path}; pass --config with its path"
        )
    return path
