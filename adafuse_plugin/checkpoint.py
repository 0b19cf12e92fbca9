"""Save and load only the AdaFuse weights (like a PEFT adapter), safely.

A saved adapter is a folder with ``adafuse_config.json`` (the `AdaFuseConfig`) and
``adafuse_weights.safetensors`` (the gates' tensors). safetensors holds raw tensors
only, so loading never executes code from the file.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from .config import AdaFuseConfig
from .errors import AdaFuseCheckpointError
from .gate import GATE_ATTR
from .surgery import get_config, is_patched, iter_gates, patch_model, unpatch_model

CONFIG_FILE = "adafuse_config.json"
WEIGHTS_FILE = "adafuse_weights.safetensors"


def adafuse_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The entries of ``model.state_dict()`` that belong to AdaFuse gates."""
    prefixes = tuple(
        f"{name}.{GATE_ATTR}." if name else f"{GATE_ATTR}." for name, _ in iter_gates(model)
    )
    return {k: v for k, v in model.state_dict().items() if k.startswith(prefixes)}


def save_adafuse(model: nn.Module, directory: str | Path) -> Path:
    """Write the config and the AdaFuse weights of a patched model to ``directory``."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config = get_config(model)
    (directory / CONFIG_FILE).write_text(json.dumps(config.to_dict(), indent=2) + "\n")
    # Shared policy nets appear under several keys; safetensors wants distinct storage.
    tensors = {
        k: v.detach().cpu().clone().contiguous() for k, v in adafuse_state_dict(model).items()
    }
    save_file(tensors, directory / WEIGHTS_FILE)
    return directory


def load_adafuse(model: nn.Module, directory: str | Path) -> nn.Module:
    """Patch ``model`` (if needed) with a saved config and load the saved AdaFuse weights.

    Raises `AdaFuseCheckpointError` naming the keys or shapes that do not match.
    """
    from safetensors.torch import load_file

    directory = Path(directory)
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        if not (directory / name).is_file():
            raise AdaFuseCheckpointError(
                f"{directory} has no {name}; was it written by save_adafuse?"
            )
    try:
        config = AdaFuseConfig.from_dict(json.loads((directory / CONFIG_FILE).read_text()))
    except (ValueError, TypeError) as err:  # bad JSON, or not a dict of known fields
        raise AdaFuseCheckpointError(
            f"{directory / CONFIG_FILE} is not a valid AdaFuse config: {err}"
        ) from err
    try:
        saved = load_file(directory / WEIGHTS_FILE)
    except Exception as err:  # safetensors raises its own error types on corrupt files
        raise AdaFuseCheckpointError(
            f"{directory / WEIGHTS_FILE} cannot be read as safetensors ({err}); is the file "
            "complete?"
        ) from err
    patched_here = not is_patched(model)
    if patched_here:
        patch_model(model, config)
    elif get_config(model) != config:
        raise AdaFuseCheckpointError(
            f"the model is patched with {get_config(model)} but the checkpoint was saved with "
            f"{config}; unpatch_model(model) first or load into an unpatched model"
        )
    expected = adafuse_state_dict(model)
    missing = sorted(set(expected) - set(saved))
    unexpected = sorted(set(saved) - set(expected))
    wrong_shape = [
        f"{k}: checkpoint {tuple(saved[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in sorted(set(saved) & set(expected))
        if saved[k].shape != expected[k].shape
    ]
    if missing or unexpected or wrong_shape:
        if patched_here:  # leave the model as it was, not with random policy weights
            unpatch_model(model)
        raise AdaFuseCheckpointError(
            f"AdaFuse checkpoint {directory} does not match the model: "
            f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
            f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}, "
            f"shape mismatches {wrong_shape[:5]}; was it saved from the same backbone?"
        )
    model.load_state_dict(saved, strict=False)
    return model
