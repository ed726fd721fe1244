"""The recipes (config YAMLs) that ship inside the package, and ``apm configs``.

They live in ``apm_lightning/configs/``; in a checkout ``experiments/`` is a link to that folder,
so ``-c experiments/glue/sst2.yaml`` keeps working there. After ``pip install`` a short name works
from any folder: ``-c glue/sst2`` (also ``glue/sst2.yaml`` or ``experiments/glue/sst2.yaml``)
names the shipped recipe whenever no file of that name exists where the command runs.

    apm configs list               every shipped recipe, by short name
    apm configs show glue/sst2     print one
    apm configs copy glue/sst2 my_sst2.yaml   copy one out to edit
"""

from __future__ import annotations

import argparse
import shutil
from importlib.resources import files
from pathlib import Path

from apm_lightning.core.errors import APMError

SUFFIXES = (".yaml", ".yml")
# The folder name the recipes have in a checkout; written before a short name, it is dropped.
CHECKOUT_PREFIX = "experiments/"
CONFIG_OPTIONS = ("-c", "--config")


def recipes_root() -> Path:
    """The folder of shipped recipes, wherever the package is installed."""
    return Path(str(files("apm_lightning").joinpath("configs")))


def recipe_names() -> list[str]:
    """Short names (``glue/sst2``) of every shipped recipe, sorted."""
    root = recipes_root()
    return sorted(p.relative_to(root).with_suffix("").as_posix() for p in root.rglob("*.yaml"))


def find_recipe(name: str) -> Path | None:
    """The shipped recipe ``name`` names (``glue/sst2``, ``glue/sst2.yaml``,
    ``experiments/glue/sst2.yaml``), or None."""
    short = name.replace("\\", "/").strip()
    while short.startswith("./"):
        short = short[2:]
    short = short.removeprefix(CHECKOUT_PREFIX)
    if not short or short.startswith("/") or ".." in short.split("/"):
        return None
    stem = short
    for suffix in SUFFIXES:
        stem = stem.removesuffix(suffix)
    path = recipes_root() / f"{stem}.yaml"
    return path if path.is_file() else None


def resolve_config(value: str) -> str:
    """``value`` itself when that file exists (a user's file always wins), else the shipped
    recipe it names, else ``value`` unchanged (the caller reports the missing file)."""
    if Path(value).expanduser().exists():
        return value
    recipe = find_recipe(value)
    return str(recipe) if recipe is not None else value


def resolve_config_args(argv: list[str]) -> list[str]:
    """``argv`` with every ``-c X`` / ``--config X`` / ``--config=X`` resolved by
    :func:`resolve_config`, for LightningCLI, which takes only paths."""
    out: list[str] = []
    take_next = False
    for arg in argv:
        if take_next:
            out.append(resolve_config(arg))
            take_next = False
        elif arg in CONFIG_OPTIONS:
            out.append(arg)
            take_next = True
        elif arg.startswith("--config="):
            out.append("--config=" + resolve_config(arg.split("=", 1)[1]))
        else:
            out.append(arg)
    return out


def require_recipe(name: str) -> Path:
    recipe = find_recipe(name)
    if recipe is None:
        raise APMError(f"no shipped recipe named {name!r}; 'apm configs list' shows them")
    return recipe


def configs_main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(
        prog="apm configs", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="action", required=True)
    sub.add_parser("list", help="the shipped recipes, by short name")
    show = sub.add_parser("show", help="print one recipe")
    show.add_argument("name")
    copy = sub.add_parser("copy", help="copy one recipe out, to edit")
    copy.add_argument("name")
    copy.add_argument("dest", help="a file, or a folder to copy into")
    copy.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)
    if args.action == "list":
        for name in recipe_names():
            print(name)
        return
    recipe = require_recipe(args.name)
    if args.action == "show":
        print(recipe.read_text(encoding="utf-8"), end="")
        return
    dest = Path(args.dest).expanduser()
    if dest.is_dir():
        dest = dest / recipe.name
    if dest.exists() and not args.overwrite:
        raise APMError(f"{dest} exists; pass --overwrite to replace it")
    if not dest.parent.is_dir():
        raise APMError(f"folder {dest.parent} does not exist")
    shutil.copyfile(recipe, dest)
    print(dest)
