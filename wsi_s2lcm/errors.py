"""The exception tree of wsi-s2lcm.

Every error a user can cause is a :class:`S2LCMError` and also a builtin exception, so callers may
catch either. The command line maps :class:`UserInputError` subclasses to exit code 2 and prints
only the message, which names the input, what was wrong and what to do.
"""


class S2LCMError(Exception):
    """Base class of all errors raised by wsi-s2lcm."""


class UserInputError(S2LCMError):
    """An error caused by the user's input (exit code 2)."""


class SlideError(UserInputError, OSError):
    """A slide cannot be opened or read, or lacks what is needed (for example its mpp)."""


class MissingMppError(SlideError):
    """A slide records no microns-per-pixel and none was given (pass ``--mpp``)."""


class ConfigError(UserInputError, ValueError):
    """A configuration value or command-line option is invalid."""


class ModelError(UserInputError, ValueError):
    """A model cannot be found or its card or weights are invalid."""


class AnnotationError(UserInputError, ValueError):
    """An annotation (scribble) file cannot be used."""


class OutputExistsError(UserInputError, FileExistsError):
    """An output exists already and ``--overwrite`` was not given."""
