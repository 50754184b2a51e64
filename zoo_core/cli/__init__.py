"""The ``zoo`` command: ``run`` (a Hydra app), ``list``, ``info``, ``new-plugin``, ``--version``.

``zoo list`` and ``zoo --version`` import neither Hydra nor torch, so they start fast. Output into a
closed pipe (``zoo list | head -1``, ``zoo run ... | head``) is dropped without a traceback; the command
still finishes (a run keeps its artifacts whole) and exits with its own status.
"""
from __future__ import annotations

import errno
import os
import sys

USAGE = """usage: zoo <command> [args]

commands:
  run  <overrides>     run a stage: zoo run model=centerface stage=eval [key=value ...]
                       multirun:    zoo run -m model=centerface stage=perf batch_size=1,4,8
                       Hydra flags work after `run` (--cfg job, --help, --info, -m ...)
  list [--json]        installed models (distribution, version, hooks), plugins, backends, datasets,
                       broken plugins; --json: the same as one JSON object
  info model=<name>    print the resolved configuration for these overrides
  new-plugin NAME [--dir PATH]
                       write a complete, installable model-plugin package
  --version            versions of zoo-core and of each installed plugin distribution

shell completion (bash, zsh):  eval "$(zoo run -sc install=bash)"
"""


def _gone(exc: OSError) -> bool:
    """The reader of the stream is gone: a closed pipe (EPIPE), or a terminal hung up (EIO: the window or ssh
    session closed, the run ending on its SIGHUP)."""
    return exc.errno in (errno.EPIPE, errno.EIO)


class ClosedPipeTolerant:
    """A text stream whose writes go nowhere, quietly, once its pipe is closed (``BrokenPipeError``) or its
    terminal hung up.

    The file descriptor is then pointed at ``/dev/null``, so buffered text and the interpreter's final
    flush cannot fail either. Everything else is the wrapped stream's.
    """

    def __init__(self, stream):
        self.stream = stream
        self.closed_pipe = False

    def write(self, text: str) -> int:
        try:
            return self.stream.write(text)
        except OSError as exc:
            if not _gone(exc):
                raise
            self._redirect()
            return len(text)

    def flush(self) -> None:
        try:
            self.stream.flush()
        except OSError as exc:
            if not _gone(exc):
                raise
            self._redirect()

    def _redirect(self) -> None:
        self.closed_pipe = True
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, self.stream.fileno())
            os.close(devnull)
        except (AttributeError, OSError, ValueError):
            pass

    def __getattr__(self, name):
        return getattr(self.stream, name)


def main(argv: list[str] | None = None) -> int:
    argv_given = argv
    argv = list(sys.argv[1:] if argv is None else argv)
    cmd, rest = (argv[0], argv[1:]) if argv else ("--help", [])
    from zoo_core.blas import single_thread_by_default
    from zoo_core.runs import interrupts

    single_thread_by_default()
    _standard_fds_open()
    handlers = interrupts.install()
    import logging

    logging.raiseExceptions = False  # a log file on a full disk must not print tracebacks over the one error line
    saved = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = ClosedPipeTolerant(sys.stdout), ClosedPipeTolerant(sys.stderr)
    try:
        code = _dispatch(cmd, rest)
        sys.stdout.flush()
        return code
    finally:
        sys.stdout, sys.stderr = saved
        if argv_given is None:  # the program itself (not a caller of main): its exit status is decided
            _settled()
        else:
            interrupts.restore(handlers)


def _standard_fds_open() -> None:
    """Point a closed fd 0, 1 or 2 (``zoo run ... 2>&-``, a daemon) at ``/dev/null``: else the next file zoo opens
    gets that number, and what libjpeg, OpenCV or a library writes to "stderr" lands in it (the run lock's pid record
    overwritten, an image's descriptor taken for stderr)."""
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            null = os.open(os.devnull, os.O_RDWR)
            if null != fd:
                os.dup2(null, fd)
                os.close(null)


def _dispatch(cmd: str, rest: list[str]) -> int:
    try:
        if cmd in ("-h", "--help", "help"):
            print(USAGE)
            return 0
        if cmd in ("--version", "-V", "version"):
            from zoo_core.cli.listing import print_versions

            return print_versions()
        if cmd == "list":
            from zoo_core.cli.listing import cli_list

            return cli_list(rest)
        if cmd == "info":
            return cmd_info(rest)
        if cmd == "run":
            return cmd_run(rest)
        if cmd == "new-plugin":
            from zoo_core.cli.scaffold import cli_new_plugin

            return cli_new_plugin(rest)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        from zoo_core.api.errors import ZooError
        from zoo_core.cli.app import storage_error
        from zoo_core.runs.run_stage import interrupted

        if interrupted(exc):  # an error a Ctrl-C caused (an import cut short) is the Ctrl-C
            print("interrupted", file=sys.stderr)
            return 130
        exc = storage_error(exc) or exc  # a read-only or full disk before the run's own handler (the lock)
        if isinstance(exc, ZooError):
            from zoo_core.printable import printable

            print(f"error: {printable(exc)}", file=sys.stderr)
            return exc.exit_code
        raise
    print(f"error: unknown command {cmd!r}\n\n{USAGE}", file=sys.stderr)
    return 2


def _settled() -> None:
    """The command is done and its exit status decided (a run's ``run.json`` says ``ok`` or ``failed``): a Ctrl-C,
    SIGTERM or SIGHUP during the interpreter's shutdown is ignored. Before, one could kill the process by SIGINT (the
    shell's 130) once Python had restored the default handler, or print an ``atexit`` traceback before that,
    while the finished run's records said ``ok``."""
    import signal

    for sig in (signal.SIGINT, signal.SIGTERM, *([signal.SIGHUP] if hasattr(signal, "SIGHUP") else [])):
        signal.signal(sig, signal.SIG_IGN)


def _has_model(overrides: list[str]) -> bool:
    return any(o.split("=", 1)[0].lstrip("+~") == "model" for o in overrides if "=" in o)


def info_help() -> str:
    """``zoo info --help``."""
    from zoo_core.config.validate import example_model

    model = example_model() or "<name>"
    return (f"usage: zoo info [--config-dir DIR] [--config-name NAME] model=<name> [key=value ...]\n\n"
            f"Print the configuration `zoo run` would use for these overrides, resolved and typed (nothing runs).\n"
            f"Example: zoo info model={model} batch_size=4")


def cmd_info(overrides: list[str]) -> int:
    from omegaconf import OmegaConf

    from zoo_core.api.errors import ConfigError
    from zoo_core.config.validate import compose, no_model_message

    if any(a in ("-h", "--help") for a in overrides):
        print(info_help())
        return 0
    config_dir, config_dir_at = _flag_value(overrides, "--config-dir", "-cd")
    config_name, config_name_at = _flag_value(overrides, "--config-name", "-cn")
    flags = [a for i, a in enumerate(overrides) if i not in (config_dir_at, config_name_at) and a.startswith("-")
             and a.partition("=")[0] not in ("--config-dir", "-cd", "--config-name", "-cn")]
    if flags:
        raise ConfigError(f"zoo info takes --config-dir and --config-name, not {flags[0]!r}", hint=info_help())
    overrides = [a for i, a in enumerate(overrides)
                 if not a.startswith("-") and i not in (config_dir_at, config_name_at)]
    if not _has_model(overrides):
        raise ConfigError(no_model_message("info"))
    cfg = compose(overrides, config_dir, config_name or "config")
    try:
        text = OmegaConf.to_yaml(cfg, resolve=True)
    except Exception:
        text = OmegaConf.to_yaml(cfg)
    print(text, end="")
    return 0


def cmd_run(args: list[str]) -> int:
    from zoo_core.api.errors import ConfigError
    from zoo_core.cli.completion import handle as shell_completion
    from zoo_core.config.validate import HYDRA_FLAGS_WITHOUT_VALIDATION, check_launcher, compose, no_model_message

    code = shell_completion(args)
    if code is not None:
        return code
    flags = {a.split("=", 1)[0] for a in args if a.startswith("-")}
    if flags & {"--config-path", "-cp"}:
        raise ConfigError("--config-path replaces zoo's primary config (zoo-core's conf/, which every run "
                          "composes); add your directory instead",
                          hint="zoo run --config-dir <dir> [--config-name <file in dir>] model=...: your files "
                               "join the search path, a primary config of yours starts with "
                               "`defaults: [config, _self_]`")
    config_dir, config_dir_at = _flag_value(args, "--config-dir", "-cd")
    config_name, config_name_at = _flag_value(args, "--config-name", "-cn")
    overrides = [a for i, a in enumerate(args)
                 if not a.startswith("-") and "=" in a and i not in (config_dir_at, config_name_at)]
    if any(o.split("=", 1)[0].lstrip("+~") == "hydra.run.dir" for o in overrides):
        raise ConfigError("hydra.run.dir is set by zoo (<work_dir>/<stage>): pass work_dir=<dir> instead, "
                          "which moves the stage records and model_dir together")
    skip_validation = bool(flags & HYDRA_FLAGS_WITHOUT_VALIDATION)
    if flags & {"--help", "-h"} and not _has_model(overrides):
        print(run_help())
        return 0
    if not skip_validation:
        if not _has_model(overrides):
            raise ConfigError(no_model_message())
        from zoo_core.cli.app import run_single, single_run

        if single_run(args):
            return run_single(overrides)
        check_launcher(overrides)
        cfg = compose(overrides, config_dir, config_name or "config")  # what Hydra will read, with zoo's messages
        if not flags & {"-m", "--multirun"}:  # Hydra makes <work_dir>/<stage> before zoo's code runs
            check_run_dirs(cfg)
            if not flags & {"--cfg", "-c"}:  # a run: locked before Hydra writes its records, as run_single does
                return _run_hydra_locked(args, cfg)
    from zoo_core.cli.app import run_hydra

    return run_hydra(args)


def _run_hydra_locked(args: list[str], cfg) -> int:
    """One run through Hydra's entry point (a ``hydra.*`` override, a Hydra flag) with its run root locked
    first: a run refused because another holds it writes nothing into that run's records."""
    from pathlib import Path

    from zoo_core.cli.app import refuse_links, run_hydra
    from zoo_core.runs.lock import held_for_stage

    root = Path(str(cfg.work_dir)).expanduser()
    with held_for_stage(root, str(cfg.stage.name)):
        refuse_links(root / str(cfg.stage.name))
        return run_hydra(args)


def _flag_value(args: list[str], *names: str) -> tuple[str | None, int | None]:
    """The value of a Hydra flag of ``zoo run`` (``--config-dir X``, ``-cd=X``; the last one wins) and
    the index of that value when it is a separate argument."""
    value: str | None = None
    at: int | None = None
    for i, a in enumerate(args):
        flag, sep, rest = a.partition("=")
        if flag in names:
            if sep:
                value, at = rest, None
            elif i + 1 < len(args):
                value, at = args[i + 1], i + 1
    return value, at


def check_run_dirs(cfg) -> None:
    """``work_dir`` and ``model_dir`` can be directories: neither they nor a parent is a file."""
    from pathlib import Path

    from zoo_core.api.errors import ZooError

    for key, what in (("work_dir", "run directory"), ("model_dir", "model directory")):
        path = Path(str(cfg[key])).expanduser()
        first = path
        while not first.exists() and first != first.parent:
            first = first.parent
        if first.exists() and not first.is_dir():
            if first == path:
                raise ZooError(f"the {what} is a file, not a directory", path=path, hint=f"pass {key}=<a directory>")
            raise ZooError(f"the {what} {path} cannot be made: {first} is a file", path=first,
                           hint=f"pass {key}=<a directory>")


def run_help() -> str:
    """``zoo run --help`` without a model: what can be run (Hydra's own help needs a model to compose)."""
    from zoo_core.config.schema import STAGES
    from zoo_core.plugins import get_manager

    pm = get_manager()
    models = ", ".join(pm.model_names()) or "(none installed)"
    return (f"usage: zoo run model=<name> [stage=<stage>] [backend=<backend>] [key=value ...]\n"
            f"       zoo run -m model=<name> stage=perf batch_size=1,4,8   (multirun sweep)\n\n"
            f"models:   {models}\n"
            f"stages:   {', '.join(STAGES)}\n"
            f"backends: {', '.join(sorted(pm.backends))}\n\n"
            f"`zoo run model=<name> --help` shows the full composed config and Hydra's flags;\n"
            f"`zoo info model=<name>` prints the resolved config.")


if __name__ == "__main__":
    sys.exit(main())
