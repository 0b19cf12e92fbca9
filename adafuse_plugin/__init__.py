"""adafuse_plugin: AdaFuse (ICLR 2021) for the 2D video backbones you already use.

::

    import timm, adafuse_plugin as af
    model = af.patch_model(timm.create_model("resnet50"), af.AdaFuseConfig(num_segments=8))
    logits = model(frames)                    # (N*T, 3, H, W), frame index fastest
    decisions = af.collect_decisions(model)   # {block: (N, T, C)} 0 keep / 1 reuse / 2 skip
    report = af.audit_flops(model, input_shape=(8, 3, 224, 224))

Only torch and timm are needed to import this package; mmaction2/mmengine glue lives
in :mod:`adafuse_plugin.mmaction`.
"""

from .adapters import (
    BlockAdapter,
    register_block_adapter,
    registered_block_classes,
    streaming_block_classes,
)
from .checkpoint import adafuse_state_dict, load_adafuse, save_adafuse
from .config import POLICIES, AdaFuseConfig
from .early_exit import ExitPolicy, calibrate_exits, evaluate_exits, exit_curve
from .errors import (
    AdaFuseCheckpointError,
    AdaFuseConfigError,
    AdaFuseError,
    AdaFuseInputError,
    AdaFusePatchError,
    AdaFuseUnpatchedWarning,
)
from .flops import BlockFlops, DecisionCounts, FlopsReport, audit_flops, count_decisions
from .gate import AdaFuseGate, PolicyNet
from .loss import AdaFuseFlopsLoss, consensus, expected_block_flops
from .streaming import (
    AdaFuseStreamingError,
    ExecutedFlops,
    StreamingPlan,
    StreamingRunner,
    StreamingStep,
)
from .summary import PatchSummary, summary
from .surgery import (
    collect_decisions,
    find_blocks,
    find_unsupported_blocks,
    get_config,
    is_patched,
    iter_gates,
    patch_model,
    reset_policy_parameters,
    set_eval_decisions,
    set_temperature,
    unpatch_model,
)

__version__ = "0.1.0"

__all__ = [
    "adafuse_state_dict",
    "AdaFuseCheckpointError",
    "AdaFuseConfig",
    "AdaFuseConfigError",
    "AdaFuseError",
    "AdaFuseFlopsLoss",
    "AdaFuseGate",
    "AdaFuseInputError",
    "AdaFusePatchError",
    "AdaFuseStreamingError",
    "AdaFuseUnpatchedWarning",
    "audit_flops",
    "BlockAdapter",
    "BlockFlops",
    "calibrate_exits",
    "collect_decisions",
    "consensus",
    "count_decisions",
    "DecisionCounts",
    "evaluate_exits",
    "ExecutedFlops",
    "exit_curve",
    "ExitPolicy",
    "expected_block_flops",
    "find_blocks",
    "find_unsupported_blocks",
    "FlopsReport",
    "get_config",
    "is_patched",
    "iter_gates",
    "load_adafuse",
    "patch_model",
    "PatchSummary",
    "POLICIES",
    "PolicyNet",
    "register_block_adapter",
    "registered_block_classes",
    "reset_policy_parameters",
    "save_adafuse",
    "set_eval_decisions",
    "set_temperature",
    "streaming_block_classes",
    "StreamingPlan",
    "StreamingRunner",
    "StreamingStep",
    "summary",
    "unpatch_model",
]
