"""The argument parser of ``apm fit | validate | test | predict``: a parse error is one line,
the reason first (jsonargparse prints some 60 lines of usage before it), and ``-c`` files are
checked before jsonargparse reads them (a binary file is a UnicodeDecodeError traceback there).
``--help`` and ``--print_config`` are untouched."""

from __future__ import annotations

import re
from typing import Any, NoReturn

from lightning.pytorch.cli import LightningArgumentParser

from apm_lightning.core.checks import shorten
from apm_lightning.core.config_files import check_config_arguments
from apm_lightning.core.errors import APMError

# Lines of jsonargparse's union-type reports that say nothing about what to fix.
_NOISE = (
    "Does not validate against any of",
    "Subtypes:",
    "Errors:",
    "Given value type:",
    "- Expected a <class 'NoneType'>",
    "- Problem with given class_path",
)


def summarize_parse_error(message: str) -> str:
    """jsonargparse's multi-line message as one line: the option's dotted key, then the reason
    (``data.batch_size: Expected a <class 'int'>. Got value: abc``)."""
    keys: list[str] = []
    reasons: list[str] = []
    given = None
    for raw in message.splitlines():
        line = raw.strip()
        if not line or line.startswith(_NOISE):
            continue
        key = re.match(r'Parser key "([^"]+)":\s*(.*)', line)
        if key:
            keys.append(key.group(1))
            if key.group(2):
                reasons.append(key.group(2))
            continue
        if line.startswith("Given value:"):
            value = line.removeprefix("Given value:").strip()
            nested = re.search(r"val=(.*)\)$", value)
            given = nested.group(1) if nested else value
            continue
        reasons.append(line.removeprefix("- ").rstrip(":"))
    reason = "; ".join(reasons) or message.strip()
    if given is not None and reason.startswith("Expected") and "Got value" not in reason:
        reason += f" (given: {given})"
    text = f"{'.'.join(keys)}: {reason}" if keys else reason
    return shorten(text, 300)


class APMArgumentParser(LightningArgumentParser):
    def parse_args(self, args: Any = None, *rest: Any, **kwargs: Any) -> Any:
        if isinstance(args, list):
            check_config_arguments([str(a) for a in args])
        return super().parse_args(args, *rest, **kwargs)

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        # Parsers jsonargparse makes internally (exit_on_error=False) raise, and are caught.
        if not self.exit_on_error:
            super().error(message, ex)
        raise APMError(f"{summarize_parse_error(message)} (see --help for the options)") from None
