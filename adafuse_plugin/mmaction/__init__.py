"""mmaction2 / mmengine integration for adafuse_plugin.

Needs the ``mmaction`` extra (mmengine, mmaction2 1.1.0, mmcv-lite 2.0.1). Call
:func:`apply_compat_fixes` before building configs, models or runners.
"""

from .compat import apply_compat_fixes

__all__ = ["apply_compat_fixes"]
