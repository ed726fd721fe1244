"""``apm export CKPT OUT``: a checkpoint becomes a Hugging Face folder (safetensors, config,
tokenizer) that ``AutoModelForSequenceClassification.from_pretrained(OUT)`` loads."""

from __future__ import annotations

import argparse
import json
import os
import shutil
from pathlib import Path

from apm_lightning.checks import check_output_dir
from apm_lightning.errors import APMError


def load_module_from_checkpoint(path: str | Path, allow_unsafe: bool = False):
    """The LightningModule a checkpoint was written by, with its weights: one of apm's own
    classes, never code the checkpoint names or asks for (see ``apm_lightning.trust``)."""
    from apm_lightning.training.cli import verify_checkpoint
    from apm_lightning.trust import load_module

    checkpoint = verify_checkpoint(str(path), allow_unsafe=allow_unsafe)
    if not checkpoint.get("apm"):
        raise APMError(f"{path} was not written by apm-lightning (no 'apm' section)")
    return load_module(checkpoint, str(path))


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
        strip_remote_code(tmp)
    except Exception:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    return out


def strip_remote_code(folder: Path) -> None:
    """An exported folder carries no code to run: no ``auto_map`` (which points
    ``trust_remote_code`` loaders at Python files) in its configs, and no Python files."""
    for name in ("config.json", "tokenizer_config.json", "processor_config.json"):
        path = folder / name
        if path.is_file():
            config = json.loads(path.read_text(encoding="utf-8"))
            if isinstance(config, dict) and "auto_map" in config:
                del config["auto_map"]
                path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    for code in folder.glob("*.py"):
        code.unlink()


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
