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
import sys
from typing import Any

from apm_lightning.errors import APMError
from apm_lightning.redact import redact

# apm's LightningModules: the only classes a checkpoint may name.
MODEL_CLASSES = (
    "apm_lightning.tasks.classification.TransformerClassifier",
    "apm_lightning.tasks.classification.BiLSTMClassifier",
    "apm_lightning.tasks.question_answering.QuestionAnsweringModule",
    "apm_lightning.tasks.pretraining.PretrainingModule",
)
# Model arguments a checkpoint never sets: where a model (and its code) is loaded from, and the
# permission to run that code.
PATH_KEYS = ("backbone", "tokenizer")
CODE_KEY = "trust_remote_code"
# Lightning's bookkeeping in the hyper-parameters: names of things to import, never followed.
LIGHTNING_KEYS = ("_instantiator", "_class_path")
# The one instantiator LightningCLI records (a checkpoint naming another is not Lightning's).
LIGHTNING_INSTANTIATOR = "lightning.pytorch.cli.instantiate_module"


def model_registry() -> dict[str, type]:
    """Qualified name -> class, for the names in ``MODEL_CLASSES`` (imported here, by name in
    the source, not from a string)."""
    from apm_lightning.tasks.classification import BiLSTMClassifier, TransformerClassifier
    from apm_lightning.tasks.pretraining import PretrainingModule
    from apm_lightning.tasks.question_answering import QuestionAnsweringModule

    classes = (TransformerClassifier, BiLSTMClassifier, QuestionAnsweringModule, PretrainingModule)
    return {f"{cls.__module__}.{cls.__qualname__}": cls for cls in classes}


def checkpoint_model_name(checkpoint: dict[str, Any], source: str) -> str | None:
    """The model class a checkpoint names (``apm.module``, else Lightning's ``_class_path``),
    checked against ``MODEL_CLASSES``; None when it names none."""
    info = checkpoint.get("apm") or {}
    hparams = checkpoint.get("hyper_parameters") or {}
    names = [n for n in (info.get("module"), hparams.get("_class_path")) if n is not None]
    for name in names:
        if not isinstance(name, str) or name not in MODEL_CLASSES:
            raise APMError(
                f"checkpoint {source} names the model class {name!r}, which is not one of apm's "
                f"({', '.join(n.rsplit('.', 1)[-1] for n in MODEL_CLASSES)}); apm never imports a class "
                "a checkpoint names"
            )
    instantiator = hparams.get("_instantiator")
    if instantiator not in (None, LIGHTNING_INSTANTIATOR):
        raise APMError(
            f"checkpoint {source} names the instantiator {instantiator!r}, not Lightning's; apm never "
            "imports what a checkpoint names"
        )
    if len(set(names)) > 1:
        raise APMError(f"checkpoint {source} names two model classes ({' and '.join(names)}): not apm's")
    return names[0] if names else None


def model_class(checkpoint: dict[str, Any], source: str) -> type:
    """The apm LightningModule class of a checkpoint (one of ``MODEL_CLASSES``)."""
    name = checkpoint_model_name(checkpoint, source)
    if name is None:
        raise APMError(f"{source} was not written by apm-lightning (no 'apm' section)")
    return model_registry()[name]


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
        if key in given:
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
    accepted = inspect.signature(cls.__init__).parameters
    module = cls(**{k: v for k, v in hparams.items() if k in accepted and k != CODE_KEY})
    # What Lightning's loader does after building the module.
    module.on_load_checkpoint(checkpoint)
    module.load_state_dict(checkpoint["state_dict"], strict=module.strict_loading)
    return module
