"""Model surgery: find residual blocks through the adapter registry and attach AdaFuse gates."""

from __future__ import annotations

import dataclasses
import fnmatch
import warnings
from collections import Counter
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from .adapters import BlockAdapter, find_adapter, registered_block_classes
from .config import LEARNED_POLICIES, AdaFuseConfig, EvalDecisions
from .errors import AdaFuseConfigError, AdaFusePatchError, AdaFuseUnpatchedWarning
from .gate import GATE_ATTR, AdaFuseGate, PolicyNet


@dataclasses.dataclass(frozen=True)
class BlockSite:
    """A block `patch_model` can patch: its name in the model, the module, its adapter."""

    name: str
    block: nn.Module
    adapter: BlockAdapter

    @property
    def stage(self) -> str:
        """The parent module's name: blocks sharing it form one stage."""
        return self.name.rpartition(".")[0]


def find_blocks(model: nn.Module) -> list[BlockSite]:
    """Every block with a registered, applicable adapter, outermost first.

    The children of a matched block are not searched: a wrapper block (e.g.
    mmaction2's TANet TABlock) owns the block inside it.
    """
    sites: list[BlockSite] = []
    matched: list[str] = []
    for name, module in model.named_modules():
        if any(name.startswith(prefix + ".") for prefix in matched):
            continue
        adapter = find_adapter(module)
        if adapter is not None and adapter.is_applicable(module):
            sites.append(BlockSite(name, module, adapter))
            matched.append(name)
    return sites


def _select(sites: list[BlockSite], config: AdaFuseConfig) -> list[BlockSite]:
    stages = list(dict.fromkeys(site.stage for site in sites))
    chosen = sites
    if config.stages is not None:
        try:
            wanted = {stages[index] for index in config.stages}
        except IndexError:
            raise AdaFuseConfigError(
                f"stages={list(config.stages)} is out of range: the model has "
                f"{len(stages)} stages {stages}"
            ) from None
        chosen = [site for site in chosen if site.stage in wanted]
    if config.include:
        chosen = [s for s in chosen if any(fnmatch.fnmatch(s.name, p) for p in config.include)]
    chosen = [s for s in chosen if not any(fnmatch.fnmatch(s.name, p) for p in config.exclude)]
    if not chosen:
        raise AdaFuseConfigError(
            f"the block selection (stages={config.stages}, include={list(config.include)}, "
            f"exclude={list(config.exclude)}) matches none of the {len(sites)} supported "
            f"blocks, e.g. {[s.name for s in sites[:4]]}"
        )
    return chosen


def iter_gates(model: nn.Module) -> Iterator[tuple[str, AdaFuseGate]]:
    """(block name, gate) for every AdaFuse gate in the model, in module order."""
    for name, module in model.named_modules():
        if isinstance(module, AdaFuseGate):
            yield name.rpartition(".")[0], module


def is_patched(model: nn.Module) -> bool:
    """True if the model holds at least one AdaFuse gate."""
    return next(iter_gates(model), None) is not None


def get_config(model: nn.Module) -> AdaFuseConfig:
    """The `AdaFuseConfig` the model was patched with."""
    gate = next(iter_gates(model), (None, None))[1]
    if gate is None:
        raise AdaFusePatchError("the model is not patched; call patch_model first")
    return gate.config


_CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)


def find_unsupported_blocks(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Residual-like blocks `patch_model` cannot patch: the outermost modules holding two or
    more convs, in a stage container, that no adapter covers (neither they, nor a module
    around or inside them, is a supported block)."""
    sites = [site.name for site in find_blocks(model)]

    def related(name: str) -> bool:
        return any(name == s or name.startswith(s + ".") or s.startswith(name + ".") for s in sites)

    parents = {name: module for name, module in model.named_modules()}
    found: list[tuple[str, nn.Module]] = []
    for name, module in model.named_modules():
        if not name or isinstance(module, _CONTAINERS) or related(name):
            continue
        if any(name.startswith(f + ".") for f, _ in found):
            continue
        parent = parents[name.rpartition(".")[0]]
        convs = sum(isinstance(m, nn.Conv2d) for m in module.modules())
        if convs >= 2 and isinstance(parent, _CONTAINERS):
            found.append((name, module))
    return found


def _describe_candidates(model: nn.Module) -> str:
    """Classes of non-container submodules holding two or more convs: likely blocks."""
    names = []
    for module in model.modules():
        if module is model or isinstance(module, (nn.Sequential, nn.ModuleList, nn.ModuleDict)):
            continue
        if sum(isinstance(m, nn.Conv2d) for m in module.modules()) >= 2:
            names.append(f"{type(module).__module__}.{type(module).__qualname__}")
    return ", ".join(list(dict.fromkeys(names))[:8]) or "none"


def patch_model(
    model: nn.Module,
    config: AdaFuseConfig | None = None,
    *,
    strict: bool = False,
    **overrides: Any,
) -> nn.Module:
    """Insert an AdaFuse gate into every selected residual block, in place.

    Residual-like blocks no adapter covers (`find_unsupported_blocks`) are named, by
    class, in an `AdaFuseUnpatchedWarning`; with ``strict=True`` they are an error.

    Args:
        model: a 2D backbone or a whole classifier (timm, torchvision, mmaction2, or a
            model whose blocks have a registered adapter).
        config: the patch configuration; keyword ``overrides`` build or update it
            (``patch_model(m, num_segments=8)``).
        strict: refuse to patch a model with residual-like blocks it would leave alone.

    Returns:
        The same model object, patched. Original parameter and buffer names are kept.
    """
    if config is None:
        config = AdaFuseConfig(**overrides)
    elif overrides:
        config = dataclasses.replace(config, **overrides)
    if is_patched(model):
        names = [name for name, _ in iter_gates(model)][:3]
        raise AdaFusePatchError(
            f"{type(model).__name__} is already patched (AdaFuse blocks at {names}...); "
            "call unpatch_model(model) before patching again"
        )
    sites = find_blocks(model)
    if not sites:
        raise AdaFusePatchError(
            f"no supported residual block found in {type(model).__name__}. Modules with "
            f"convolutions here: {_describe_candidates(model)}. Register your block class "
            "with adafuse_plugin.register_block_adapter(BlockClass, first_stage=..., "
            f"first_conv=..., second_conv=...). Supported: {len(registered_block_classes())} "
            "classes (adafuse_plugin.registered_block_classes())."
        )
    _report_unsupported(model, strict)
    selected = _select(sites, config)
    shared: dict[tuple[int, int], tuple[nn.Linear, nn.Linear]] = {}
    gates = []
    for site in selected:
        if hasattr(site.block, GATE_ATTR):
            raise AdaFusePatchError(
                f"block {site.name!r} already has an attribute {GATE_ATTR!r}; cannot attach "
                "an AdaFuse gate without shadowing it"
            )
        in_channels, out_channels = site.adapter.channels(site.block)
        if out_channels % config.granularity:
            raise AdaFuseConfigError(
                f"block {site.name!r}: granularity={config.granularity} does not divide its "
                f"{out_channels} first-conv channels; choose a divisor of every patched "
                "block's width or exclude this block"
            )
        policy_net = None
        if config.policy in LEARNED_POLICIES:
            key = (in_channels, out_channels)
            policy_net = PolicyNet(
                in_channels,
                out_channels // config.granularity,
                config.hidden_for(out_channels),
                shared=shared.get(key) if config.share_policy else None,
            )
            shared.setdefault(key, (policy_net.fc1, policy_net.fc2))
        gates.append((site, AdaFuseGate(site.name, in_channels, out_channels, config, policy_net)))
    for site, gate in gates:
        weight = next(site.adapter.first_conv_module(site.block).parameters())
        site.block.add_module(GATE_ATTR, gate.to(device=weight.device, dtype=weight.dtype))
        site.adapter.first_conv_module(site.block).register_forward_pre_hook(gate.capture_input)
        site.adapter.first_stage_module(site.block).register_forward_hook(gate.fuse)
    stem = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    stem.register_forward_pre_hook(gates[0][1].check_model_input)
    return model


def _report_unsupported(model: nn.Module, strict: bool) -> None:
    left = find_unsupported_blocks(model)
    if not left:
        return
    classes = Counter(type(m).__qualname__ for _, m in left)
    listed = ", ".join(f"{name} x {count}" for name, count in classes.most_common())
    from .flops import dense_share  # flops builds on this module

    try:
        share = f"{dense_share(model, [name for name, _ in left]):.0%} of dense FLOPs at 224x224"
    except Exception:  # noqa: BLE001 - a model fvcore cannot trace with a plain frame
        share = "FLOPs share: see audit_flops"
    message = (
        f"{len(left)} residual-like block(s) of {type(model).__name__} have no adapter and get "
        f"no AdaFuse gate ({share}): {listed} (e.g. {left[0][0]!r}). Register them with "
        "adafuse_plugin.register_block_adapter(BlockClass, first_stage=..., first_conv=..., "
        "second_conv=...) to patch them too."
    )
    if strict:
        raise AdaFusePatchError(message + " (strict=True)")
    warnings.warn(message, AdaFuseUnpatchedWarning, stacklevel=3)


def _drop_hooks(hooks: dict, gate: AdaFuseGate, module: nn.Module) -> None:
    for key, hook in list(hooks.items()):
        if getattr(hook, "__self__", None) is gate:
            del hooks[key]
            module._forward_hooks_with_kwargs.pop(key, None)
            module._forward_hooks_always_called.pop(key, None)
            module._forward_pre_hooks_with_kwargs.pop(key, None)


def unpatch_model(model: nn.Module) -> nn.Module:
    """Remove every AdaFuse gate and hook, restoring the original module tree in place."""
    if not is_patched(model):
        raise AdaFusePatchError("the model is not patched; nothing to unpatch")
    gates = list(iter_gates(model))
    for module in model.modules():  # blocks and the first conv (input check)
        for _, gate in gates:
            _drop_hooks(module._forward_pre_hooks, gate, module)
            _drop_hooks(module._forward_hooks, gate, module)
    for block_name, _ in gates:
        delattr(model.get_submodule(block_name), GATE_ATTR)
    return model


def collect_decisions(model: nn.Module) -> dict[str, torch.Tensor]:
    """{block name: (N, T, c') long decisions of the last forward}; 0 keep, 1 reuse, 2 skip."""
    gates = list(iter_gates(model))
    if not gates:
        raise AdaFusePatchError("the model is not patched; call patch_model first")
    decisions = {name: g.last_decisions for name, g in gates if g.last_decisions is not None}
    if not decisions:
        raise AdaFusePatchError("no decisions recorded yet: run a forward pass first")
    return decisions


def set_eval_decisions(model: nn.Module, mode: EvalDecisions) -> None:
    """How learned policies decide in eval mode: ``"argmax"`` (deterministic) or
    ``"gumbel"`` (hard Gumbel samples from the torch RNG, as the authors' test script)."""
    config = dataclasses.replace(get_config(model), eval_decisions=mode)
    for _, gate in iter_gates(model):
        gate.config = config


def set_temperature(model: nn.Module, tau: float) -> None:
    """Set the Gumbel-softmax temperature of every gate (used in training only)."""
    dataclasses.replace(get_config(model), tau=tau)  # validates tau
    for _, gate in iter_gates(model):
        gate.tau = float(tau)


def reset_policy_parameters(model: nn.Module) -> None:
    """Re-initialise every policy network (after a backbone's ``init_weights``)."""
    for _, gate in iter_gates(model):
        if gate.policy_net is not None:
            gate.policy_net.reset_parameters()
