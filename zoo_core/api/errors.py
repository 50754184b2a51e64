"""Errors the CLI turns into a one-line message and a non-zero exit (never a traceback)."""
from __future__ import annotations


class ZooError(Exception):
    """A user-facing error: what went wrong, with which file, and what to do about it."""

    exit_code = 2

    def __init__(self, message: str, *, path=None, hint: str | None = None):
        self.path = path
        self.hint = hint
        text = f"{path}: {message}" if path is not None else message
        if hint:
            text += f"\n  hint: {hint}"
        super().__init__(text)


class InputError(ZooError):
    """A single input file (image, output .bin) is unusable; ``on_error=skip`` may skip it."""


class ConfigError(ZooError):
    """The configuration is invalid (unknown key, bad value)."""


class PluginError(ZooError):
    """A plugin is missing, broken or does not implement a needed hook."""
