"""``apm export CKPT OUT``: a checkpoint becomes a Hugging Face folder (safetensors, config,
tokenizer) that ``AutoModelForSequenceClassification.from_pretrained(OUT)`` loads."""

from __future__ import annotations

import argparse

from apm_lightning.modules.hf_export import export_checkpoint


def _true_or_false(value: str) -> bool:
    if value.lower() in ("true", "yes", "1"):
        return True
    if value.lower() in ("false", "no", "0"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, not {value!r}")


def export_main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="apm export", description=__doc__)
    parser.add_argument("checkpoint", help="a .ckpt written by apm fit")
    parser.add_argument("out", help="output folder (must be new or empty unless --overwrite)")
    parser.add_argument(
        "--overwrite", action="store_true", help="replace a folder that an earlier apm export wrote"
    )
    # The spelling of fit/validate/predict (--allow_unsafe_checkpoints true), which the error
    # hints name; the dashed flag of earlier versions still works.
    parser.add_argument(
        "--allow_unsafe_checkpoints",
        "--allow-unsafe-checkpoints",
        nargs="?",
        const=True,
        default=False,
        type=_true_or_false,
        metavar="true|false",
        help="unpickle arbitrary objects (only for checkpoints you trust)",
    )
    args = parser.parse_args(argv)
    path = export_checkpoint(args.checkpoint, args.out, args.overwrite, args.allow_unsafe_checkpoints)
    print(path.resolve())
