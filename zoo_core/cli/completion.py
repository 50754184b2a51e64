"""Shell completion for ``zoo``: ``eval "$(zoo run -sc install=bash)"`` (bash, or zsh through bashcompinit).

The installed function completes the sub-command (``zoo <TAB>``) itself and asks Hydra for the overrides
of ``zoo run`` / ``zoo info`` (``model=<TAB>``, ``stage=ev<TAB>``, ``backend.<TAB>``) by calling
``zoo run -sc query=bash`` with the command line. Hydra's own script cannot be used as is: it would
register the completion for the two commands ``zoo`` and ``run`` and query ``zoo -sc``.
"""
from __future__ import annotations

import os
import shlex

from zoo_core.api.errors import ConfigError

SHELLS = ("bash", "zsh")
COMMANDS = ("run", "list", "info", "new-plugin", "--version", "--help")
FUNCTION = "_zoo_complete"

_BASH = r"""# zoo shell completion (from `zoo run -sc install=bash`)
_zoo_complete()
{
    local word="${COMP_WORDS[COMP_CWORD]}"
    if (( COMP_CWORD == 1 )); then
        compopt +o nospace 2>/dev/null || true
        COMPREPLY=($(compgen -W "%(commands)s" -- "$word"))
        return
    fi
    case "${COMP_WORDS[1]}" in
        run|info)
            local choices
            choices=$(COMP_LINE="$COMP_LINE" COMP_POINT="$COMP_POINT" %(exe)s run -sc query=bash 2>/dev/null)
            COMPREPLY=($(compgen -W "$choices" -- "$word"))
            ;;
        list)
            compopt +o nospace 2>/dev/null || true
            COMPREPLY=($(compgen -W "--json" -- "$word"))
            ;;
        *)
            COMPREPLY=()
            ;;
    esac
}
COMP_WORDBREAKS=${COMP_WORDBREAKS//=}
complete -o nospace -o default -F _zoo_complete zoo
"""


def _shell_of(request: str) -> str:
    shell = request.split("=", 1)[1]
    if shell not in SHELLS:
        raise ConfigError(f"shell completion is available for {' and '.join(SHELLS)}, not {shell!r}: "
                          f"eval \"$(zoo run -sc install=bash)\"")
    return shell


def install_script(shell: str, exe: str = "zoo") -> str:
    """The script that ``eval`` installs: the ``_zoo_complete`` function registered for ``zoo``.

    ``exe`` is the command the function runs for queries (``zoo``, found on PATH when completing).
    """
    script = _BASH % {"commands": " ".join(COMMANDS), "exe": shlex.quote(exe)}
    if shell == "zsh":
        script = "autoload -Uz bashcompinit && bashcompinit\n" + script
    return script


def uninstall_script() -> str:
    return f"complete -r zoo 2>/dev/null; unset -f {FUNCTION}\n"


def hydra_comp_line(comp_line: str) -> str:
    """``zoo run model=cen`` -> ``zoo model=cen``: Hydra strips one word (the app name) from the line."""
    words = comp_line.lstrip().split(None, 2)  # the rest keeps its trailing space (a new, empty word)
    if len(words) >= 2 and words[1] in ("run", "info"):
        return f"{words[0]} {words[2] if len(words) == 3 else ''}"
    return comp_line


def handle(args: list[str]) -> int | None:
    """``zoo run -sc <request>``: install / uninstall print a script, query answers through Hydra.

    Returns the exit code, or ``None`` when ``args`` ask for no shell completion.
    """
    if not any(a in ("-sc", "--shell-completion") for a in args):
        return None
    requests = [a for a in args if a.split("=", 1)[0] in ("install", "uninstall", "query")]
    if len(requests) != 1:
        raise ConfigError("shell completion: zoo run -sc install=bash (or uninstall=bash); "
                          "add eval \"$(zoo run -sc install=bash)\" to ~/.bashrc")
    action = requests[0].split("=", 1)[0]
    shell = _shell_of(requests[0])
    if action == "install":
        print(install_script(shell), end="")
        return 0
    if action == "uninstall":
        print(uninstall_script(), end="")
        return 0
    from zoo_core.cli.app import run_hydra

    os.environ["COMP_LINE"] = hydra_comp_line(os.environ.get("COMP_LINE", "zoo run "))
    return run_hydra(["-sc", "query=bash"])
