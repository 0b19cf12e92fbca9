"""mmaction2 / mmengine integration for adafuse_plugin.

Needs the ``mmaction`` extra (mmengine, mmaction2 1.1.0, mmcv-lite 2.0.1). Call
:func:`apply_compat_fixes` before building configs, models or runners. Importing this
package (``custom_imports=dict(imports=['adafuse_plugin.mmaction'])``) registers
``AdaFuseRecognizer2D`` (MODELS), ``AdaFuseHook`` (HOOKS) and ``AdaFuseMetric`` (METRICS)
into mmaction2's registries.
"""

from .compat import apply_compat_fixes

apply_compat_fixes()

from .hook import AdaFuseHook  # noqa: E402  (registration needs the compat fixes first)
from .metric import AdaFuseMetric  # noqa: E402
from .recognizer import AdaFuseRecognizer2D  # noqa: E402
from .runner import build_runner, load_config, validate_config  # noqa: E402

__all__ = [
    "AdaFuseHook",
    "AdaFuseMetric",
    "AdaFuseRecognizer2D",
    "apply_compat_fixes",
    "build_runner",
    "load_config",
    "validate_config",
]
