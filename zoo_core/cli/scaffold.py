"""``zoo new-plugin NAME [--dir PATH]``: write a complete, installable model-plugin package.

The package is rendered from ``zoo_core/cli/templates/plugin``: every ``*.tmpl`` file is copied with
``{{model}}``, ``{{package}}``, ``{{dist}}``, ``{{api}}``, ``{{dataset_api}}``, ``{{core_version}}`` and
``{{core_pin}}`` replaced (in file contents and paths), and the ``__package__`` folder becomes the
Python package.
"""
from __future__ import annotations

import argparse
import importlib.util
import re
from importlib import metadata
from pathlib import Path

from zoo_core import HOOK_API_VERSION, __version__
from zoo_core.api.errors import ZooError
from zoo_core.datasets import DATASET_API_VERSION

TEMPLATE_SUFFIX = ".tmpl"
NAME_RE = re.compile(r"^[a-z][a-z0-9_]{1,30}$")
RESERVED = {"none", "core", "test", "tests"}


def template_root() -> Path:
    """The plugin template tree shipped inside zoo-core."""
    return Path(__file__).resolve().parent / "templates" / "plugin"


def core_pin(version: str = __version__) -> str:
    """The zoo-core requirement for a plugin written against ``version``: one major release,
    ``>=X.Y,<X+1`` (``>=0.Y,<0.(Y+1)`` while zoo-core is 0.x, where a minor release may break)."""
    major, minor = (int(v) for v in version.split(".")[:2])
    upper = f"{major + 1}" if major else f"0.{minor + 1}"
    return f"zoo-core>={major}.{minor},<{upper}"


def names_for(model: str) -> dict[str, str]:
    """Placeholder values for model ``model``: distribution ``zoo-<model>``, package ``zoo_<model>``."""
    if model in RESERVED:
        raise ZooError(f"model name {model!r} is reserved ({', '.join(sorted(RESERVED))}): choose another, "
                       f"e.g. {model + '_det'!r}")
    if not NAME_RE.match(model) or model.endswith("_"):
        raise ZooError(f"invalid model name {model!r}: use 2-31 lowercase letters, digits and '_', "
                       f"starting with a letter (e.g. 'yolox_tiny')")
    return {
        "model": model,
        "Model": "".join(part.capitalize() for part in model.split("_")),  # class-name prefix (config.py)
        "package": f"zoo_{model}",
        "dist": "zoo-" + model.replace("_", "-"),
        "api": HOOK_API_VERSION,
        "dataset_api": DATASET_API_VERSION,
        "core_version": __version__,
        "core_pin": core_pin(),
    }


def installed_collision(values: dict[str, str]) -> str | None:
    """Why a new plugin with these names would clash with what is installed, or ``None``.

    A model name an installed plugin already provides, an installed ``zoo-<model>`` distribution or an
    importable ``zoo_<model>`` package: installing the new package would replace or shadow it.
    """
    model, dist, package = values["model"], values["dist"], values["package"]
    for ep in metadata.entry_points(group="zoo.models"):
        if ep.name == model:
            owner = getattr(ep, "dist", None)
            who = f"{owner.metadata['Name']} {owner.version}" if owner is not None else ep.value
            return f"model {model!r} is already provided by the installed {who}"
    try:
        return f"the distribution {dist} {metadata.version(dist)} is already installed"
    except metadata.PackageNotFoundError:
        pass
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        spec = None
    if spec is not None:
        where = spec.origin or ", ".join(spec.submodule_search_locations or [])
        return f"a package {package} is already importable ({where})"
    return None


def render(text: str, values: dict[str, str]) -> str:
    for key, value in values.items():
        text = text.replace("{{" + key + "}}", value)
    leftover = re.search(r"\{\{\w+\}\}", text)
    if leftover:
        raise ValueError(f"unknown template placeholder {leftover.group(0)}")
    return text


def new_plugin(model: str, parent: str | Path = ".") -> Path:
    """Write the package for ``model`` into ``parent/zoo-<model>`` and return that directory.

    Refuses a name that is already installed (see :func:`installed_collision`) and an existing,
    non-empty directory.
    """
    values = names_for(model)
    clash = installed_collision(values)
    if clash:
        raise ZooError(f"cannot create a plugin named {model!r}: {clash}, and installing {values['dist']} would "
                       f"replace or shadow it; choose another name (e.g. {model + '_mine'!r})")
    base = Path(parent).expanduser().resolve()
    if base.exists() and not base.is_dir():
        raise ZooError("--dir is not a directory (it is the parent directory of the new package)", path=base)
    dest = base / values["dist"]
    root = template_root()
    templates = sorted(p for p in root.rglob("*" + TEMPLATE_SUFFIX) if p.is_file())
    if not templates:
        raise ZooError("plugin templates are missing from this zoo-core installation", path=root)
    try:
        if dest.exists() and any(dest.iterdir()):
            raise ZooError("directory exists and is not empty; choose another --dir", path=dest)
        for src in templates:
            rel = src.relative_to(root).as_posix()[: -len(TEMPLATE_SUFFIX)]
            rel = render(rel.replace("__package__", values["package"]), values)
            out = dest / rel
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(render(src.read_text(encoding="utf-8"), values), encoding="utf-8")
    except OSError as exc:  # (a --dir that cannot hold it: /proc/1, read-only, a file in the path, no space)
        raise ZooError(f"cannot write the new plugin package here (--dir {base}): {exc.strerror or exc}",
                       path=exc.filename or dest) from exc
    return dest


def cli_new_plugin(argv: list[str]) -> int:
    """Entry of ``zoo new-plugin``; returns the process exit code."""
    parser = argparse.ArgumentParser(
        prog="zoo new-plugin",
        description="Write a complete model-plugin package (zoo-<NAME>/) that pip installs and passes its tests.")
    parser.add_argument("name", help="model name users will type as model=NAME (lowercase, digits, '_')")
    parser.add_argument("--dir", default=".", help="parent directory of the new package (default: .)")
    args = parser.parse_args(argv)
    dest = new_plugin(args.name, args.dir)
    print(f"wrote {dest}\nnext:\n  pip install -e '{dest}[torch,test]'   (torch builds and exports the network; "
          f"test: pytest)\n  zoo list\n"
          f"  zoo run model={args.name} stage=eval weights=random\n  pytest {dest / 'tests'}")
    return 0
