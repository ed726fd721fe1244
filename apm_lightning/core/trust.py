"""What a checkpoint may decide: nothing that runs code.

A ``.ckpt`` that loads with ``weights_only=True`` still carries strings: its hyper-parameters
(``backbone``, ``tokenizer``, ``trust_remote_code``), the LightningModule class it names (the
``apm`` section and Lightning's ``_class_path``) and Lightning's ``_instantiator``. Obeyed, they
would import any module and run a model folder's own Python code. Here they are data: the class
must be one of apm's own (``MODEL_CLASSES``, never an import of a name read from the file),
``trust_remote_code`` and the paths that code could be loaded from come only from the user's
command line or config, and where the checkpoint disagrees with them the run stops with one line.
"""

from __future__ import annotations

import inspect
import re
import sys
from pathlib import Path
from typing import Any

from apm_lightning.core.errors import APMError
from apm_lightning.core.redact import redact

# apm's LightningModules (and any a user registers): the only classes a checkpoint may name.
# Filled by ``register_module`` where each class is defined; nothing is imported by a name read
# from a checkpoint.
_MODULES: dict[str, type] = {}


def register_module(*legacy_names: str):
    """Class decorator: allow checkpoints to name this LightningModule (by its qualified name,
    and by ``legacy_names``, the names earlier versions wrote into checkpoints)."""

    def register(cls: type) -> type:
        for name in (f"{cls.__module__}.{cls.__qualname__}", *legacy_names):
            _MODULES[name] = cls
        return cls

    return register


def model_registry() -> dict[str, type]:
    """Qualified name (current and legacy) -> class, for every registered module."""
    return dict(_MODULES)


def module_name(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


# Model arguments a checkpoint never sets: where a model (and its code) is loaded from, and the
# permission to run that code.
PATH_KEYS = ("backbone", "tokenizer")
CODE_KEY = "trust_remote_code"
# Lightning's bookkeeping in the hyper-parameters: names of things to import, never followed.
LIGHTNING_KEYS = ("_instantiator", "_class_path")
# The one instantiator LightningCLI records (a checkpoint naming another is not Lightning's).
LIGHTNING_INSTANTIATOR = "lightning.pytorch.cli.instantiate_module"


def checkpoint_model_name(checkpoint: dict[str, Any], source: str) -> str | None:
    """The model class a checkpoint names (``apm.module``, else Lightning's ``_class_path``),
    checked against ``MODEL_CLASSES``; None when it names none."""
    info = checkpoint.get("apm") or {}
    hparams = checkpoint.get("hyper_parameters") or {}
    names = [n for n in (info.get("module"), hparams.get("_class_path")) if n is not None]
    for name in names:
        if not isinstance(name, str) or name not in _MODULES:
            known = sorted({cls.__qualname__ for cls in _MODULES.values()})
            raise APMError(
                f"checkpoint {source} names the model class {name!r}, which is not one of apm's "
                f"({', '.join(known)}); apm never imports a class a checkpoint names"
            )
    instantiator = hparams.get("_instantiator")
    if instantiator not in (None, LIGHTNING_INSTANTIATOR):
        raise APMError(
            f"checkpoint {source} names the instantiator {instantiator!r}, not Lightning's; apm never "
            "imports what a checkpoint names"
        )
    if len({_MODULES[n] for n in names}) > 1:
        raise APMError(f"checkpoint {source} names two model classes ({' and '.join(names)}): not apm's")
    return names[0] if names else None


def model_class(checkpoint: dict[str, Any], source: str) -> type:
    """The registered LightningModule class a checkpoint names."""
    name = checkpoint_model_name(checkpoint, source)
    if name is None:
        raise APMError(f"{source} was not written by apm-lightning (no 'apm' section)")
    return _MODULES[name]


def checkpoint_hparams(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """The model's hyper-parameters as stored, without Lightning's import names."""
    hparams = checkpoint.get("hyper_parameters") or {}
    return {k: v for k, v in dict(hparams).items() if k not in LIGHTNING_KEYS}


def refuse_remote_code(hparams: dict[str, Any], given: bool, source: str, hint: str) -> None:
    """Stop when the checkpoint was trained with ``trust_remote_code`` and the user did not allow
    it (``given``): the permission is never inherited."""
    if hparams.get(CODE_KEY) and not given:
        raise APMError(
            f"checkpoint {source} was trained with model.trust_remote_code true (a model's own "
            f"Python code, from {hparams.get('backbone')!r}); apm never takes that from a checkpoint: {hint}"
        )


def _effective(args: dict[str, Any], key: str) -> Any:
    # A backbone_config means training from scratch: the modules then set backbone to None.
    if key == "backbone" and args.get("backbone_config") is not None:
        return None
    return args.get(key)


def check_model_args(checkpoint_args: dict[str, Any], given: dict[str, Any], source: str) -> None:
    """The checkpoint's code-related arguments against the run's own (``given``, from the
    command line or config): ``trust_remote_code`` only from the user, and a checkpoint's
    backbone or tokenizer path must be the one the user gave."""
    refuse_remote_code(
        checkpoint_args,
        bool(given.get(CODE_KEY)),
        source,
        "pass --model.trust_remote_code true yourself if you trust that code",
    )
    for key in PATH_KEYS:
        stored = _effective(checkpoint_args, key)
        mine = _effective(given, key)
        # Stored values are redacted (secrets in paths): compare them the same way.
        if stored is not None and redact(stored) != redact(mine):
            raise APMError(
                f"the checkpoint's model.{key} is {stored!r} but this run's is {mine!r}; apm takes "
                f"model paths only from the command line or config: pass --model.{key} yourself "
                "(the one the checkpoint was trained from) or use a matching checkpoint"
            )


def merge_model_args(
    checkpoint_args: dict[str, Any], given: dict[str, Any], source: str
) -> tuple[dict[str, Any], list[str]]:
    """The model arguments a run takes from its checkpoint (the trained model's settings, as
    Lightning does), after ``check_model_args``; never the path or code keys, which stay the
    user's. Returns them with the options whose given value they replace (for a warning)."""
    check_model_args(checkpoint_args, given, source)
    merged: dict[str, Any] = {}
    replaced = []
    for key, value in checkpoint_args.items():
        if key in PATH_KEYS or key == CODE_KEY:
            continue
        if key in given and redact(given[key]) == redact(value):
            continue  # the same (or the same once redacted): the user's own value stands
        # None is the module's default, not a choice (the optimisation settings are None until
        # the module resolves them): taking the trained value replaces nothing the user chose.
        if given.get(key) is not None:
            replaced.append(f"model.{key} ({given[key]!r} -> {value!r})")
        merged[key] = value
    return merged, replaced


def warn_replaced(replaced: list[str], rank_zero: bool = True) -> None:
    """One line on stderr naming the options a checkpoint's values replaced."""
    if replaced and rank_zero:
        text = ", ".join(replaced)
        print(
            f"apm: warning: the checkpoint's model settings replace this run's: {redact(text)}",
            file=sys.stderr,
            flush=True,
        )


def init_parameters(cls: type) -> set[str]:
    """The keyword arguments ``cls(...)`` takes, following ``**kwargs`` up the bases (apm's
    modules pass the optimisation settings on to ``APMModule`` that way)."""
    named = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    names: set[str] = set()
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        params = list(inspect.signature(init).parameters.values())
        names |= {p.name for p in params if p.kind in named and p.name != "self"}
        if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
            break
    return names


def load_module(checkpoint: dict[str, Any], source: str) -> Any:
    """The apm LightningModule of a loaded checkpoint, with its weights, built without running
    code the checkpoint names or asks for (Lightning's ``load_from_checkpoint`` would follow its
    ``_instantiator`` and its ``trust_remote_code``)."""
    cls = model_class(checkpoint, source)
    hparams = checkpoint_hparams(checkpoint)
    refuse_remote_code(
        hparams,
        False,
        source,
        "an exported folder never carries a model's own code; export such a model in Python",
    )
    accepted = init_parameters(cls)
    module = cls(**{k: v for k, v in hparams.items() if k in accepted and k != CODE_KEY})
    # What Lightning's loader does after building the module.
    module.on_load_checkpoint(checkpoint)
    module.load_state_dict(checkpoint["state_dict"], strict=module.strict_loading)
    return module


_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def _refused_global(err: Exception) -> str | None:
    """What weights_only loading refused ("Unsupported global: GLOBAL builtins.exec ..."): torch's
    own text is a paragraph with terminal escapes, and its first line names no reason."""
    for line in _ANSI.sub("", str(err)).splitlines():
        if "WeightsUnpickler error:" in line:
            return line.split("WeightsUnpickler error:", 1)[1].strip().split(". ")[0].rstrip(".")
    return None


def verify_checkpoint(path: str, allow_unsafe: bool = False) -> dict:
    """Load a checkpoint file safely, or fail with one clear line."""
    import torch

    file = Path(path)
    if not file.is_file():
        raise APMError(f"checkpoint not found: {file}")
    try:
        checkpoint = torch.load(file, map_location="cpu", weights_only=not allow_unsafe)
    except Exception as err:
        refused = _refused_global(err)
        if refused:
            raise APMError(
                f"checkpoint {file} could not be read safely: it holds pickled objects or code "
                f"({refused}); pass --allow_unsafe_checkpoints true only for a file you trust"
            ) from None
        text = _ANSI.sub("", str(err)).strip()
        first = text.splitlines()[0] if text else type(err).__name__
        raise APMError(
            f"checkpoint {file} could not be read ({first}); it may be truncated or not a "
            f"checkpoint (pass --allow_unsafe_checkpoints true only for a file you trust)"
        ) from None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise APMError(f"checkpoint {file} has no state_dict: not a Lightning checkpoint")
    return checkpoint
