"""A readable summary of what `patch_model` did: which blocks, how many parameters."""

from __future__ import annotations

import dataclasses
from collections import Counter

from torch import nn

from .errors import AdaFusePatchError
from .surgery import find_blocks, find_unsupported_blocks, get_config, is_patched, iter_gates


@dataclasses.dataclass
class PatchSummary:
    """Patched blocks (name, class, channels, hidden width, policy parameters) and totals."""

    policy: str
    num_segments: int
    rows: list[tuple[str, str, str, int, int]]
    supported_blocks: int
    base_parameters: int
    added_parameters: int
    #: Residual-like blocks left without a gate (no adapter), counted by class.
    unsupported: dict[str, int] = dataclasses.field(default_factory=dict)

    def __str__(self) -> str:
        from tabulate import tabulate

        header = ("block", "class", "c -> c'", "hidden", "params")
        body = [(n, c, ch, str(h) if h else "-", f"{p:,}") for n, c, ch, h, p in self.rows]
        lines = [tabulate(body, header, disable_numparse=True)]
        share = self.added_parameters / max(self.base_parameters, 1)
        lines += [
            "",
            f"AdaFuse policy '{self.policy}', num_segments={self.num_segments}: patched "
            f"{len(self.rows)} of {self.supported_blocks} supported blocks",
            f"parameters: {self.base_parameters:,} base + {self.added_parameters:,} AdaFuse "
            f"(+{share:.1%}; shared policy layers counted once)",
        ]
        if self.unsupported:
            listed = ", ".join(f"{name} x {count}" for name, count in self.unsupported.items())
            lines.append(
                f"left alone: {sum(self.unsupported.values())} residual-like blocks with no "
                f"adapter ({listed}); audit_flops gives their FLOPs share"
            )
        return "\n".join(lines)


def summary(model: nn.Module) -> PatchSummary:
    """Summarise a patched model; ``print(summary(model))`` shows a table."""
    gates = list(iter_gates(model))
    if not gates:
        raise AdaFusePatchError("the model is not patched; call patch_model first")
    config = get_config(model)
    gate_params = {id(p) for _, g in gates for p in g.parameters()}
    all_params = {id(p): p.numel() for p in model.parameters()}
    added = sum(n for key, n in all_params.items() if key in gate_params)
    seen: set[int] = set()
    rows = []
    for name, gate in gates:
        block = model.get_submodule(name)
        net = gate.policy_net
        params = 0
        for param in net.parameters() if net is not None else ():
            if id(param) not in seen:  # shared Linear layers count at their first block
                seen.add(id(param))
                params += param.numel()
        hidden = net.fc1.out_features if net is not None else 0
        rows.append(
            (
                name,
                type(block).__name__,
                f"{gate.in_channels} -> {gate.out_channels}",
                hidden,
                params,
            )
        )
    return PatchSummary(
        policy=config.policy,
        num_segments=config.num_segments,
        rows=rows,
        supported_blocks=len(find_blocks(model)),
        base_parameters=sum(all_params.values()) - added,
        added_parameters=added,
        unsupported=dict(Counter(type(m).__qualname__ for _, m in find_unsupported_blocks(model))),
    )


def parameter_counts(model: nn.Module) -> dict[str, int]:
    """``total`` parameters of a model (patched or not) and ``adafuse``, the gates' share
    (layers shared between blocks counted once)."""
    if not is_patched(model):
        return {"total": sum(p.numel() for p in model.parameters()), "adafuse": 0}
    patched = summary(model)
    return {
        "total": patched.base_parameters + patched.added_parameters,
        "adafuse": patched.added_parameters,
    }
