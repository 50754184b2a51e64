"""The ``zoo`` command: ``run`` (a Hydra app), ``list``, ``info``, ``new-plugin``.

``zoo list`` imports neither Hydra nor torch, so it starts fast.
"""
from __future__ import annotations

import sys

USAGE = """usage: zoo <command> [args]

commands:
  run  <overrides>     run a stage: zoo run model=centerface stage=eval [key=value ...]
                       multirun:    zoo run -m model=centerface stage=perf batch_size=1,4,8
                       Hydra flags work after `run` (--cfg job, --help, --info, -m ...)
  list                 installed models (distribution, version, hooks), backends, broken plugins
  info model=<name>    print the resolved configuration for these overrides
  new-plugin NAME [--dir PATH]
                       write a complete, installable model-plugin package
"""


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0
    cmd, rest = argv[0], argv[1:]
    _terminate_like_interrupt()
    try:
        if cmd == "list":
            from zoo_core.cli.listing import print_listing

            return print_listing()
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

        if isinstance(exc, ZooError):
            print(f"error: {exc}", file=sys.stderr)
            return exc.exit_code
        raise
    print(f"error: unknown command {cmd!r}\n\n{USAGE}", file=sys.stderr)
    return 2


def _terminate_like_interrupt() -> None:
    """SIGTERM (``kill``, Slurm ``scancel``/timeouts) unwinds like Ctrl-C, so workers and temp files are cleaned up."""
    import signal

    def handler(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)


def _has_model(overrides: list[str]) -> bool:
    return any(o.split("=", 1)[0].lstrip("+~") == "model" for o in overrides if "=" in o)


def cmd_info(overrides: list[str]) -> int:
    from omegaconf import OmegaConf

    from zoo_core.config.validate import compose, no_model_message

    if not _has_model(overrides):
        from zoo_core.api.errors import ConfigError

        raise ConfigError(no_model_message())
    cfg = compose(overrides)
    try:
        text = OmegaConf.to_yaml(cfg, resolve=True)
    except Exception:
        text = OmegaConf.to_yaml(cfg)
    print(text, end="")
    return 0


def cmd_run(args: list[str]) -> int:
    from zoo_core.api.errors import ConfigError
    from zoo_core.config.validate import HYDRA_FLAGS_WITHOUT_VALIDATION, compose, no_model_message

    flags = {a.split("=", 1)[0] for a in args if a.startswith("-")}
    overrides = [a for a in args if not a.startswith("-") and "=" in a]
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
        cfg = compose(overrides)
        if not flags & {"-m", "--multirun"}:  # Hydra makes <work_dir>/<stage> before zoo's code runs
            check_run_dirs(cfg)
    from zoo_core.cli.app import run_hydra

    return run_hydra(args)


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
