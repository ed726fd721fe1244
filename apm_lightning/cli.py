"""``apm``: the command line.

``apm fit | validate | test | predict`` are LightningCLI subcommands (YAML configs under
``experiments/``, ``-c a.yaml -c b.yaml`` composition, ``--print_config``, dotted overrides).
``apm export`` writes a Hugging Face folder from a checkpoint; ``apm demo`` is the short
fine-tuning demo of the README. Heavy libraries are imported only once a command needs them,
so ``apm --help`` answers at once.
"""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path

USAGE = """usage: apm <command> [options]

commands:
  fit        train (and validate) a model:   apm fit -c experiments/glue/sst2.yaml
  pretrain   pretrain or keep pretraining; writes results.json and RUN_DIR/hf
             (model.objective: {objectives}):
             apm pretrain -c experiments/pretrain/mlm_tiny.yaml --data.files "corpus/*.txt"
  compare    the objective comparison study (tokenizer, pretraining, GLUE fine-tuning, tables):
             apm compare -c experiments/compare_objectives/cpu.yaml --out DIR
  validate   score a model on the dev split:  apm validate -c CONFIG --ckpt_path CKPT
  test       score on data.test_split (labelled; GLUE test files have no labels)
  predict    write predictions as TSV:        apm predict -c CONFIG --ckpt_path CKPT
  export     checkpoint -> Hugging Face folder:  apm export CKPT OUT_DIR [--overwrite]
  demo       a short fine-tuning demo that prints a results table
  glue       one model over the GLUE tasks and seeds, GLUE score, submission zip:
             apm glue --model minilm --tasks cola,rte --seeds 3 --data-dir DIR --out OUT
  report     tables (Markdown, CSV, W&B) and plots from run dirs:  apm report RUN_DIRS...
  sweep      Optuna search (shared database, pruning) or a W&B sweep file:
             apm sweep -c experiments/sweeps/sst2_minilm.yaml --n-trials 20 [--storage URL]
  tokenizer  learn a WordPiece, byte-level BPE or Unigram tokenizer from text:
             apm tokenizer train --kind wordpiece --vocab-size 30000 --files 'corpus/*.txt' --out DIR
  configs    the recipes shipped with apm:  apm configs list | show NAME | copy NAME DEST
             (-c glue/sst2 names a shipped recipe from any folder)

Every training command takes --help for its options. Errors print one line; set APM_DEBUG=1
(or pass --debug) for the full traceback.
Data: --data.data_dir DIR, or $APM_DATA_DIR (a folder with glue/, squad/, corpus/).
"""


def objectives_declared() -> list[str]:
    """The objectives registered by the files of modules/objectives/, read from their source:
    importing them would import torch, and ``apm --help`` answers without it."""
    import re

    folder = Path(__file__).resolve().parent / "modules" / "objectives"
    pattern = re.compile(r"""^@register_objective\(\s*["']([^"']+)["']""", re.MULTILINE)
    return sorted(name for f in folder.glob("*.py") for name in pattern.findall(f.read_text("utf-8")))


def usage() -> str:
    return USAGE.replace("{objectives}", ", ".join(objectives_declared()))


LIGHTNING_COMMANDS = ("fit", "validate", "test", "predict")
# ``apm pretrain`` is ``apm fit`` with a pretraining config: same CLI, trainer layer and results.
ALIASES = {"pretrain": "fit"}
# The other commands: (module, function taking the remaining arguments). Each is imported only
# when it runs, so ``apm --help`` stays free of torch.
COMMANDS = {
    "export": ("apm_lightning.export", "export_main"),
    "demo": ("apm_lightning.demo", "demo_main"),
    "glue": ("apm_lightning.runners.glue", "glue_main"),
    "compare": ("apm_lightning.runners.compare", "compare_main"),
    "report": ("apm_lightning.reports.report", "report_main"),
    "sweep": ("apm_lightning.runners.sweep", "sweep_main"),
    "configs": ("apm_lightning.core.recipes", "configs_main"),
    "tokenizer": ("apm_lightning.data.tokenizer_training", "tokenizer_main"),
}


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("apm-lightning")
    except PackageNotFoundError:
        return "unknown"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = os.environ.get("APM_DEBUG", "") not in ("", "0") or "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage(), end="")
        return 0
    if argv[0] in ("-V", "--version"):
        print(f"apm-lightning {_version()}")
        return 0
    command, rest = argv[0], argv[1:]
    command = ALIASES.get(command, command)
    from apm_lightning.core.errors import APMError, user_error
    from apm_lightning.core.redact import redact_text

    try:
        if command in LIGHTNING_COMMANDS:
            from apm_lightning.core.recipes import resolve_config_args
            from apm_lightning.training.cli import run_lightning_cli

            run_lightning_cli([command, *resolve_config_args(rest)])
        elif command in COMMANDS:
            module, function = COMMANDS[command]
            getattr(importlib.import_module(module), function)(rest)
        else:
            known = ", ".join([*LIGHTNING_COMMANDS, *ALIASES, *COMMANDS])
            print(
                f"apm: error: unknown command {command!r}: use one of {known} (apm --help)", file=sys.stderr
            )
            return 2
    except Exception as err:
        # jsonargparse wraps errors raised while it instantiates classes; find ours inside.
        cause = user_error(err, APMError)
        if cause is None or debug:
            raise
        # Paths and URLs in a message may hold a token or password.
        print(f"apm: error: {redact_text(str(cause))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as stop:
        # A runner's RunStopped says what became of the run in progress, and which signal it was.
        print(f"apm: {redact_text(str(stop))}" if str(stop) else "apm: interrupted", file=sys.stderr)
        return getattr(stop, "exit_code", 130)
    return 0


def entry_point() -> None:
    if os.environ.get("APM_RUNNER_PID"):  # a run started by apm glue, compare or sweep
        from apm_lightning.runners.launch import follow_runner

        follow_runner()
    sys.exit(main())


if __name__ == "__main__":
    entry_point()


__all__ = ["main", "entry_point", "Path"]
