"""Exceptions raised by adafuse_plugin; all are `ValueError`s so callers can catch broadly."""


class AdaFuseError(ValueError):
    """Base class of every error this package raises on bad input."""


class AdaFuseConfigError(AdaFuseError):
    """An `AdaFuseConfig` value is invalid."""


class AdaFusePatchError(AdaFuseError):
    """Surgery cannot proceed: no supported block, double patching, unknown block class."""


class AdaFuseInputError(AdaFuseError):
    """A patched model received an input it cannot handle (rank, batch layout)."""


class AdaFuseCheckpointError(AdaFuseError):
    """A checkpoint does not match the patched model."""


class AdaFuseStreamingError(AdaFuseError):
    """The model, a block, a policy or a frame cannot be run by `StreamingRunner`."""


class AdaFuseEarlyExitError(AdaFuseError):
    """Bad input to an early-exit rule or its evaluation (shapes, budgets)."""


class AdaFuseUnpatchedWarning(UserWarning):
    """`patch_model` left residual-like blocks without a gate (no adapter for their class)."""
