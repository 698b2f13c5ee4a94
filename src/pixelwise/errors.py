"""Exceptions that pixelwise raises for bad input.

Every message names the offending file or value and says how to fix it, e.g.
``mask 0007.png has label 37 but num_classes is 21; set ignore_index or num_classes``.
They subclass ``ValueError`` so that generic callers still catch them.
"""


class PixelwiseError(ValueError):
    """Base class of all errors pixelwise raises on purpose."""


class DataError(PixelwiseError):
    """A dataset file or folder is missing, unreadable or inconsistent."""


class ConfigError(PixelwiseError):
    """A configuration key or value is unknown or of the wrong type."""


class TrainingError(PixelwiseError):
    """Training cannot go on (e.g. the loss became NaN or infinite)."""


class MissingDependencyError(PixelwiseError, ImportError):
    """An optional package that a feature needs is not installed; the message names the extra."""
