"""YAML config files (``-c`` of the training commands, ``apm sweep -c``): a file that is not
UTF-8 text, not YAML, or not a mapping of options gets one line naming it and the problem,
before a parser turns it into a traceback or a page of usage."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from apm_lightning.core.checks import not_a_file_reason, shorten
from apm_lightning.core.errors import APMError


def read_config_file(path: str | Path, what: str = "config file") -> dict[str, Any]:
    """The mapping a YAML file holds (``{}`` for an empty file), or one clear :class:`APMError`."""
    path = Path(path).expanduser()
    reason = not_a_file_reason(path)
    if reason:
        raise APMError(f"{what} {path} {reason}")
    data = path.read_bytes()
    if b"\x00" in data[:8192]:
        raise APMError(
            f"{what} {path} is a binary file, not YAML text; pass a .yaml config (see experiments/)"
        )
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise APMError(
            f"{what} {path} is not UTF-8 text ({err.reason}: 0x{data[err.start : err.start + 1].hex()} "
            f"at byte {err.start}); save it as UTF-8 YAML"
        ) from None
    try:
        content = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise APMError(f"{what} {path} is not valid YAML ({shorten(problem)}{where})") from None
    if content is None:
        return {}
    if not isinstance(content, dict):
        raise APMError(
            f"{what} {path} holds a YAML {type(content).__name__}, not a mapping of options "
            f"(e.g. 'trainer: {{max_epochs: 3}}')"
        )
    return content


def config_file_arguments(args: list[str]) -> list[str]:
    """The values given to ``-c`` / ``--config`` in a command line."""
    found = []
    for i, arg in enumerate(args):
        if arg in ("-c", "--config") and i + 1 < len(args):
            found.append(args[i + 1])
        elif arg.startswith("--config="):
            found.append(arg.split("=", 1)[1])
    return found


def check_config_arguments(args: list[str]) -> None:
    """Check every ``-c`` that names an existing path (other values are inline YAML, or a
    missing file, which the parser reports itself in one line)."""
    for value in config_file_arguments(args):
        path = Path(value).expanduser()
        if path.exists() or path.is_symlink():
            read_config_file(path)
