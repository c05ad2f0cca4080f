"""Exceptions of the harness.

Every error the user can cause (a bad file, an unsupported layer) is a ``HarnessError`` whose
message is complete on its own: the command-line front end prints ``str(error)`` without a
traceback, so the message must name the file, the place in it and what is wrong.
"""

from __future__ import annotations

__all__ = ["HarnessError", "ConversionError", "ModelFileError"]


class HarnessError(Exception):
    """Base class of all user-facing errors; the message is meant for the user."""


class ConversionError(HarnessError):
    """A model cannot be read from, or written to, a foreign format (Keras, FKB)."""


class ModelFileError(HarnessError):
    """A colnn model file (or a model spec about to be written) is malformed or inconsistent."""
