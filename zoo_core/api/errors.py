"""Errors the CLI turns into a one-line message and a non-zero exit (never a traceback)."""
from __future__ import annotations

import os
from typing import TypeVar

_E = TypeVar("_E", bound=BaseException)


def in_chain(exc: BaseException | None, kind: type[_E]) -> _E | None:
    """The first exception of type ``kind`` among ``exc`` and its causes and contexts (``__cause__``, else
    ``__context__``; a cycle ends the walk), or None: what a wrapper (``logging.config``'s ValueError, an
    ``ImportError`` raised while a Ctrl-C unwound) was raised because of."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, kind):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


class ZooError(Exception):
    """A user-facing error: what went wrong, with which file, and what to do about it."""

    exit_code = 2

    def __init__(self, message: str, *, path: str | os.PathLike[str] | None = None, hint: str | None = None):
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


class PluginHookError(PluginError):
    """An exception (``SystemExit`` included) escaped a plugin hook, or a hook returned something its spec
    does not allow (a wrong type, ``None``, a wrong count): a bug in the plugin, not bad input.

    The message is one line, ``plugin <distribution> (model <name>), hook <hook>: <Type>: <reason>``;
    the original exception is ``__cause__``. Exit code 1 like any other bug; the CLI writes the
    traceback to the run directory.
    """

    exit_code = 1
