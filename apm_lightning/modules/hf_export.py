"""A LightningModule (or an apm checkpoint) as a Hugging Face folder: safetensors, config and
tokenizer, with no code to run (no ``auto_map``, no ``*.py``), written atomically and marked so
that ``--overwrite`` only ever replaces an earlier export.

An apm ``.ckpt`` also works wherever a backbone is named (``resolve_backbone``): it is exported
once into the cache and reused while the file is unchanged.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

from apm_lightning.core import model_paths
from apm_lightning.core.cache import default_cache_dir
from apm_lightning.core.checks import check_output_dir
from apm_lightning.core.errors import APMError
from apm_lightning.core.trust import load_module, verify_checkpoint


def load_module_from_checkpoint(path: str | Path, allow_unsafe: bool = False):
    """The LightningModule a checkpoint was written by, with its weights: one of apm's own
    classes, never code the checkpoint names or asks for (see ``apm_lightning.core.trust``)."""
    import apm_lightning.modules  # noqa: F401  (registers apm's modules: the classes allowed)

    checkpoint = verify_checkpoint(str(path), allow_unsafe=allow_unsafe)
    if not checkpoint.get("apm"):
        raise APMError(f"{path} was not written by apm-lightning (no 'apm' section)")
    return load_module(checkpoint, str(path))


# Written in every exported folder, listing its files: --overwrite replaces only such a folder.
MARKER = ".apm-export"


def check_export_target(out: str | Path, overwrite: bool = False, source: str | Path | None = None) -> None:
    """Refuse an ``out`` that cannot be a folder (a file, a path under one: never replaced, even
    with ``--overwrite``), that holds anything but an earlier export (``--overwrite``), or that
    holds ``source``, the checkpoint being exported."""
    out = Path(out)
    check_output_dir(out, "output folder")
    if source is not None:
        src, target = Path(source).resolve(), out.resolve()
        if target == src or target in src.parents:
            raise APMError(f"{out} holds the checkpoint being exported ({source}); choose another folder")
    if not out.exists():
        return
    present = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if not p.is_dir())
    if not present and not any(out.iterdir()):
        return
    if not overwrite:
        raise APMError(f"{out} exists and is not empty; choose another folder or pass --overwrite")
    try:
        listed = json.loads((out / MARKER).read_text(encoding="utf-8"))["files"]
        # Exports record each file's SHA-256 (older ones only the names): a file edited since,
        # such as the model card, is the user's now and is never replaced.
        digests = listed if isinstance(listed, dict) else dict.fromkeys(listed)
    except (OSError, ValueError, KeyError, TypeError):
        raise APMError(
            f"--overwrite only replaces a folder written by apm export, and {out} has no {MARKER} "
            "marker; choose another folder"
        ) from None
    other = [
        p for p in present if p != MARKER and (p not in digests or digests[p] not in (None, _sha256(out / p)))
    ]
    if other:
        raise APMError(
            f"--overwrite only replaces a folder written by apm export, and {out} also holds "
            f"{other[0]}"
            + (f" and {len(other) - 1} more files" if len(other) > 1 else "")
            + "; choose another folder"
        )


def export_checkpoint(
    ckpt: str | Path, out: str | Path, overwrite: bool = False, allow_unsafe: bool = False
) -> Path:
    check_export_target(out, overwrite, source=ckpt)  # before the checkpoint is loaded
    return export_module(load_module_from_checkpoint(ckpt, allow_unsafe), out, overwrite)


def export_module(
    module, out: str | Path, overwrite: bool = False, extra_files: dict[str, str] | None = None
) -> Path:
    """Write ``module``'s Hugging Face folder to ``out`` (new, empty, or an earlier export
    replaced on request), plus ``extra_files`` (name -> text, e.g. the model card)."""
    out = Path(out)
    check_export_target(out, overwrite)
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
        for name, text in (extra_files or {}).items():
            (tmp / name).write_text(text, encoding="utf-8")
        files = {p.relative_to(tmp).as_posix(): _sha256(p) for p in sorted(tmp.rglob("*")) if not p.is_dir()}
        (tmp / MARKER).write_text(json.dumps({"files": files}, indent=1) + "\n", encoding="utf-8")
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


def exported_checkpoint(ckpt: Path) -> Path:
    """The Hugging Face folder of an apm checkpoint (e.g. a pretraining run's), exported once
    into the cache and reused while the file is unchanged."""
    stat = ckpt.stat()
    # 'v2': folders exported before exports dropped auto_map are not reused.
    identity = f"v2|{ckpt.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
    key = hashlib.sha256(identity.encode()).hexdigest()[:16]
    folder = default_cache_dir() / "exported" / f"{ckpt.stem}-{key}"
    if not (folder / "config.json").is_file():
        export_checkpoint(ckpt, folder, overwrite=True)
    return folder


def resolve_backbone(name: str) -> str:
    """``core.model_paths.resolve_backbone``, plus an apm ``.ckpt`` (exported on first use)."""
    path = Path(name).expanduser()
    if path.is_file() and path.suffix == ".ckpt":
        return str(exported_checkpoint(path))
    return model_paths.resolve_backbone(name)


def resolve_tokenizer(name: str) -> str:
    """``core.model_paths.resolve_tokenizer``, plus an apm ``.ckpt`` (its exported tokenizer)."""
    path = Path(name).expanduser()
    if path.is_file() and path.suffix == ".ckpt":
        return str(exported_checkpoint(path))
    return model_paths.resolve_tokenizer(name)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
