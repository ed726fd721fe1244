"""Small argument and path checks shared by the data modules, the CLI and the runners: each
fails with one :class:`APMError` line that names the value and what to do."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from apm_lightning.core.errors import APMError

# Values quoted in error messages are cut here: a 1 MB header line must not become a 1 MB error.
MAX_SHOWN = 200


def shorten(value: Any, limit: int = MAX_SHOWN) -> str:
    """``str(value)`` cut to ``limit`` characters, with ``...`` and the full length when cut."""
    text = str(value)
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text)} characters)"


def require_positive(name: str, value: int | None, optional: bool = False) -> None:
    """A batch size and the like: an integer of 1 or more (``None`` too when ``optional``)."""
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise APMError(f"{name} must be a whole number of 1 or more, not {value!r}")


def require_sample_limit(name: str, value: int | None) -> None:
    """``max_*_samples``: unset (all rows) or 1 or more; 0 or a negative count would silently
    keep no rows, or all but a few (Python slicing)."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise APMError(f"{name} must be 1 or more (or unset for every row), not {value!r}")


def check_output_dir(path: str | Path, what: str) -> None:
    """Refuse an output folder that cannot be one: an existing file, a path under a file, or a
    folder (or nearest existing parent) this user cannot write to. Nothing is created."""
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise APMError(f"{what} {path} is a file, not a folder; choose a folder path")
    existing = path
    while not existing.exists():
        if existing.is_symlink():  # a dangling link: mkdir would fail on it
            raise APMError(f"{what} {path}: {existing} is a broken symbolic link; choose another path")
        parent = existing.parent
        if parent == existing:
            break
        existing = parent
    if existing.exists() and not existing.is_dir():
        raise APMError(f"{what} {path} is under {existing}, which is a file; choose a folder path")
    if existing.is_dir() and not os.access(existing, os.W_OK | os.X_OK):
        raise APMError(f"{what} {path}: {existing} is not writable; choose a folder you can write to")


def not_a_file_reason(path: str | Path) -> str | None:
    """Why ``path`` cannot be read as a file (``does not exist``, ``is a folder``, a symbolic
    link loop...), or ``None`` when it is a regular file."""
    path = Path(path)
    try:
        if path.is_file():
            return None
        if path.is_dir():
            return "is a folder, not a file"
        if path.is_symlink():
            try:
                path.resolve(strict=True)
            except RuntimeError:  # Python < 3.13 reports a loop this way
                return "is a symbolic link loop"
            except OSError as err:
                if "loop" in str(err).lower() or getattr(err, "errno", None) == 40:
                    return "is a symbolic link loop"
                return f"is a broken symbolic link (to {os.readlink(path)})"
            return "is a broken symbolic link"
        if path.exists():
            return "is not a regular file"
    except OSError as err:
        return f"cannot be read ({err.strerror or err})"
    return "does not exist"
