"""The argument parser of an ``apm`` command that is not a LightningCLI one (glue, compare,
sweep, report, tokenizer): the module's docstring as its help, kept as written, and no
abbreviated options (``--out`` must never silently match ``--output-dir``)."""

from __future__ import annotations

import argparse


def command_parser(prog: str, description: str | None) -> argparse.ArgumentParser:
    return argparse.ArgumentParser(
        prog=prog,
        description=description,
        allow_abbrev=False,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
