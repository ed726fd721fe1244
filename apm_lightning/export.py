"""``apm export CKPT OUT``: a checkpoint becomes a Hugging Face folder (safetensors, config,
tokenizer) that ``AutoModelForSequenceClassification.from_pretrained(OUT)`` loads."""

from __future__ import annotations

import argparse
import importlib
import os
import shutil
from pathlib import Path

from apm_lightning.checks import check_output_dir
from apm_lightning.errors import APMError


def load_module_from_checkpoint(path: str | Path, allow_unsafe: bool = False):
    """The LightningModule a checkpoint was written by, with its weights."""
    from apm_lightning.training.cli import verify_checkpoint

    checkpoint = verify_checkpoint(str(path), allow_unsafe=allow_unsafe)
    info = checkpoint.get("apm")
    if not info:
        raise APMError(f"{path} was not written by apm-lightning (no 'apm' section)")
    module_path, _, name = info["module"].rpartition(".")
    cls = getattr(importlib.import_module(module_path), name)
    return cls.load_from_checkpoint(str(path), map_location="cpu", weights_only=not allow_unsafe)


def export_checkpoint(
    ckpt: str | Path, out: str | Path, overwrite: bool = False, allow_unsafe: bool = False
) -> Path:
    out = Path(out)
    check_output_dir(out, "output folder")  # a file there is never replaced, even with --overwrite
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise APMError(f"{out} exists and is not empty; choose another folder or pass --overwrite")
    return export_module(load_module_from_checkpoint(ckpt, allow_unsafe), out, overwrite)


def export_module(module, out: str | Path, overwrite: bool = False) -> Path:
    """Write ``module``'s Hugging Face folder to ``out`` (new, empty, or replaced on request)."""
    out = Path(out)
    check_output_dir(out, "output folder")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise APMError(f"{out} exists and is not empty; choose another folder or pass --overwrite")
    if not hasattr(module, "export_hf"):
        raise APMError(
            f"{type(module).__name__} has no Hugging Face form to export (only Transformer models do)"
        )
    # Write beside the target and swap in at the end: a failed export leaves OUT as it was.
    tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        module.export_hf(str(tmp))
    except Exception:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    return out


def export_main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="apm export", description=__doc__)
    parser.add_argument("checkpoint", help="a .ckpt written by apm fit")
    parser.add_argument("out", help="output folder (must be new or empty unless --overwrite)")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty folder")
    parser.add_argument(
        "--allow-unsafe-checkpoints",
        action="store_true",
        help="unpickle arbitrary objects (only for checkpoints you trust)",
    )
    args = parser.parse_args(argv)
    path = export_checkpoint(args.checkpoint, args.out, args.overwrite, args.allow_unsafe_checkpoints)
    print(path.resolve())
