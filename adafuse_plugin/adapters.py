"""Block adapters: where, inside a residual block class, the AdaFuse block goes.

An adapter names three submodules of a block by attribute path:

- ``first_stage``: the module whose output is the first conv stage's feature map
  ``y = act(norm(conv1(x)))``; AdaFuse replaces that output with the fused map
  through a forward hook. Where a block reuses one activation module several times
  (torchvision), hook the norm instead: act(0) = 0, so fusing before the
  activation equals fusing after it.
- ``first_conv`` and ``second_conv``: the convolutions whose FLOPs Eq. 5 of the
  paper saves (m_x and m_y).

Adapters are keyed by the block's fully qualified class name, so adapters for
optional libraries (mmaction2) register without importing them. Hooks keep every
original parameter and buffer name, which is why adapters never wrap or replace
modules.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING

from torch import nn

from .errors import AdaFusePatchError

if TYPE_CHECKING:
    from .streaming.plans import StreamingPlan

#: Builds the `StreamingPlan` of one block (see `adafuse_plugin.streaming.plans`).
StreamingPlanner = Callable[[nn.Module], "StreamingPlan"]


def _resolve(module: nn.Module, path: str) -> nn.Module:
    """``module.get_submodule(path)`` with an error that names the block and the path."""
    try:
        return module.get_submodule(path)
    except AttributeError as err:
        raise AdaFusePatchError(
            f"{type(module).__qualname__} has no submodule {path!r}; the registered "
            "block adapter does not fit this class (re-register it with "
            "register_block_adapter)."
        ) from err


def _channels(module: nn.Module) -> tuple[int, int]:
    """(in, out) channels of a conv-like module: its own attributes (ConvNormAct,
    MixedConv2d, SelectiveKernel, ConvModule...) or those of its first Conv2d."""
    cin, cout = getattr(module, "in_channels", None), getattr(module, "out_channels", None)
    if isinstance(cin, int) and isinstance(cout, int):
        return cin, cout
    for child in module.modules():
        if isinstance(child, nn.Conv2d):
            return child.in_channels, child.out_channels
    raise AdaFusePatchError(f"no nn.Conv2d found inside {type(module).__qualname__}")


@dataclasses.dataclass(frozen=True)
class BlockAdapter:
    """Where AdaFuse goes inside one block class.

    Args:
        first_stage: path of the module whose output is act(norm(conv1 x)).
        first_conv: path of the first conv; its FLOPs are m_x of Eq. 5. Point it at the
            conv itself (``conv1.conv`` in a ConvNormAct), not at conv + norm.
        second_conv: path of the second conv (m_y of Eq. 5).
        applies: optional predicate; blocks for which it returns False are left alone
            (e.g. an inverted residual without an expansion conv).
        streaming: optional; builds the block's `StreamingPlan`, which lets
            `StreamingRunner` run the class causally and channel-sparsely.
    """

    first_stage: str
    first_conv: str
    second_conv: str
    applies: Callable[[nn.Module], bool] | None = None
    streaming: StreamingPlanner | None = None

    def is_applicable(self, block: nn.Module) -> bool:
        """True when this block has the structure the adapter describes."""
        return self.applies is None or bool(self.applies(block))

    def first_stage_module(self, block: nn.Module) -> nn.Module:
        return _resolve(block, self.first_stage)

    def first_conv_module(self, block: nn.Module) -> nn.Module:
        """The first conv (a Conv2d or a composite conv such as MixedConv2d)."""
        return _resolve(block, self.first_conv)

    def second_conv_module(self, block: nn.Module) -> nn.Module:
        return _resolve(block, self.second_conv)

    def channels(self, block: nn.Module) -> tuple[int, int]:
        """(c, c'): block input channels and first-conv output channels."""
        return _channels(self.first_conv_module(block))


_REGISTRY: dict[str, BlockAdapter] = {}


def qualified_name(cls: type) -> str:
    """``module.QualName`` of a class: the registry key."""
    return f"{cls.__module__}.{cls.__qualname__}"


def register_block_adapter(
    block_class: type | str,
    adapter: BlockAdapter | None = None,
    *,
    first_stage: str | None = None,
    first_conv: str | None = None,
    second_conv: str | None = None,
    applies: Callable[[nn.Module], bool] | None = None,
    streaming: StreamingPlanner | None = None,
    overwrite: bool = False,
) -> BlockAdapter:
    """Teach `patch_model` (and, with ``streaming``, `StreamingRunner`) a block class.

    Either pass a ready `BlockAdapter` or the three attribute paths::

        register_block_adapter(MyBlock, first_stage="act1", first_conv="conv1",
                               second_conv="conv2",
                               streaming=lambda b: StreamingPlan(b.conv1, b.bn1, b.act1,
                                                                 b.conv2, b.bn2, out_act=b.act2))

    Args:
        block_class: the class, or its fully qualified name (``pkg.module.Class``).
        streaming: builds a block's `StreamingPlan` (its convs, norms and activations);
            without one the class is patched and audited, but not streamed.
        overwrite: replace an existing adapter for the same class instead of failing (the
            whole adapter: pass ``streaming`` again to keep the class streamable).
    """
    if adapter is None:
        if first_stage is None or first_conv is None or second_conv is None:
            raise AdaFusePatchError(
                "register_block_adapter needs an adapter or all of first_stage, "
                "first_conv and second_conv"
            )
        adapter = BlockAdapter(first_stage, first_conv, second_conv, applies, streaming)
    elif streaming is not None:
        adapter = dataclasses.replace(adapter, streaming=streaming)
    key = block_class if isinstance(block_class, str) else qualified_name(block_class)
    if key in _REGISTRY and not overwrite and _REGISTRY[key] != adapter:
        raise AdaFusePatchError(
            f"an adapter for {key} is already registered; pass overwrite=True to replace it"
        )
    _REGISTRY[key] = adapter
    return adapter


def find_adapter(module: nn.Module) -> BlockAdapter | None:
    """The adapter registered for the module's class or its nearest registered base."""
    for cls in type(module).__mro__:
        adapter = _REGISTRY.get(qualified_name(cls))
        if adapter is not None:
            return adapter
    return None


def registered_block_classes() -> list[str]:
    """Qualified names of every block class with an adapter, sorted."""
    return sorted(_REGISTRY)


def streaming_block_classes() -> list[str]:
    """Qualified names of the block classes `StreamingRunner` can run (their adapter has a
    streaming plan), sorted."""
    return sorted(key for key, adapter in _REGISTRY.items() if adapter.streaming is not None)


def _builtin_plan(name: str) -> StreamingPlanner:
    """The built-in plan ``adafuse_plugin.streaming.plans.<name>``, imported on first use
    (the streaming package imports this module)."""

    def plan(block: nn.Module) -> StreamingPlan:
        from .streaming import plans

        return getattr(plans, name)(block)

    plan.__qualname__ = plan.__name__ = name
    return plan


def _has_expansion(attr: str) -> Callable[[nn.Module], bool]:
    """Predicate: the block's expansion conv ``attr`` exists and is a real conv."""

    def applies(block: nn.Module) -> bool:
        return not isinstance(getattr(block, attr, None), (nn.Identity, type(None)))

    return applies


def _mm_inverted_residual_expands(block: nn.Module) -> bool:
    """mmaction2's InvertedResidual has an expansion conv iff ``conv`` has 3 stages."""
    return len(list(block.get_submodule("conv").children())) == 3


def _register_builtin_adapters() -> None:
    timm_resnet = BlockAdapter("act1", "conv1", "conv2")
    for name, plan in (("BasicBlock", "timm_basic"), ("Bottleneck", "timm_bottleneck")):
        register_block_adapter(
            f"timm.models.resnet.{name}", timm_resnet, streaming=_builtin_plan(plan)
        )
    # ConvNormAct stages: the stage module itself outputs act(norm(conv x)).
    for key, first, second in (
        ("timm.models.regnet.Bottleneck", "conv1", "conv2"),
        ("timm.models.byobnet.BasicBlock", "conv1_kxk", "conv2_kxk"),
        ("timm.models.byobnet.BottleneckBlock", "conv1_1x1", "conv2_kxk"),
        ("timm.models.byobnet.DarkBlock", "conv1_1x1", "conv2_kxk"),
        ("timm.models.byobnet.EdgeBlock", "conv1_kxk", "conv2_1x1"),
        ("timm.models.cspnet.BottleneckBlock", "conv1", "conv2"),
        ("timm.models.cspnet.DarkBlock", "conv1", "conv2"),
    ):
        register_block_adapter(key, BlockAdapter(first, f"{first}.conv", f"{second}.conv"))
    # A SelectiveKernel conv (dilated paths + attention) counts as one conv.
    register_block_adapter(
        "timm.models.sknet.SelectiveKernelBasic", BlockAdapter("conv1", "conv1", "conv2.conv")
    )
    register_block_adapter(
        "timm.models.sknet.SelectiveKernelBottleneck",
        BlockAdapter("conv1", "conv1.conv", "conv2"),
    )
    # DLA and Res2Net reuse one ReLU per block: hook the norm.
    for name in ("DlaBasic", "DlaBottleneck"):
        register_block_adapter(f"timm.models.dla.{name}", BlockAdapter("bn1", "conv1", "conv2"))
    register_block_adapter("timm.models.res2net.Bottle2neck", BlockAdapter("bn1", "conv1", "convs"))
    blocks = "timm.models._efficientnet_blocks"
    register_block_adapter(
        f"{blocks}.InvertedResidual",
        BlockAdapter("bn1", "conv_pw", "conv_dw", applies=_has_expansion("conv_pw")),
        streaming=_builtin_plan("timm_inverted_residual"),
    )
    register_block_adapter(
        f"{blocks}.DepthwiseSeparableConv", BlockAdapter("bn1", "conv_dw", "conv_pw")
    )
    register_block_adapter(f"{blocks}.EdgeResidual", BlockAdapter("bn1", "conv_exp", "conv_pwl"))
    torchvision_resnet = BlockAdapter("bn1", "conv1", "conv2")
    for name, plan in (
        ("BasicBlock", "torchvision_basic"),
        ("Bottleneck", "torchvision_bottleneck"),
    ):
        register_block_adapter(
            f"torchvision.models.resnet.{name}", torchvision_resnet, streaming=_builtin_plan(plan)
        )
    # A dense layer (mmaction2's TSN with a torchvision DenseNet): norm-act-conv twice, no
    # residual add; its own relu2 sits between the two convs.
    register_block_adapter(
        "torchvision.models.densenet._DenseLayer", BlockAdapter("relu2", "conv1", "conv2")
    )
    # mmaction2: mmcv ConvModule stages; ResNetTSM shares these classes (its
    # TemporalShift wraps conv1.conv, which stays inside the conv1 stage).
    mm_resnet = BlockAdapter("conv1", "conv1.conv", "conv2.conv")
    for name, plan in (("BasicBlock", "mmaction_basic"), ("Bottleneck", "mmaction_bottleneck")):
        register_block_adapter(
            f"mmaction.models.backbones.resnet.{name}", mm_resnet, streaming=_builtin_plan(plan)
        )
    # TANet's TABlock runs block.conv1 -> tam -> block.conv2: fuse what enters conv2. TAM
    # mixes neighbouring frames, so Eq. 5's first-conv saving is optimistic there.
    register_block_adapter(
        "mmaction.models.backbones.tanet.TABlock",
        BlockAdapter("tam", "block.conv1.conv", "block.conv2.conv"),
    )
    register_block_adapter(
        "mmaction.models.backbones.mobilenet_v2.InvertedResidual",
        BlockAdapter("conv.0", "conv.0", "conv.1.conv", applies=_mm_inverted_residual_expands),
    )


_register_builtin_adapters()
