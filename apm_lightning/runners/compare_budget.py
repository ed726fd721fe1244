"""Compute budgets of ``apm compare``: each objective's training FLOPs per token, measured on its
own model, and a budget (training FLOPs or tokens) turned into a number of optimizer steps.

FLOPs follow the ELECTRA paper's convention (training FLOPs, forward and backward pass): the
matrix products of one training step, counted by torch's ``FlopCounterMode`` while the
objective's module, built as ``apm pretrain`` builds it, computes its loss on a batch of real
corpus blocks and back-propagates it. Everything that step runs is counted, so the per-token
cost is measured, not assumed: ELECTRA's generator and discriminator (and the generator's
sampling pass), span corruption's encoder on the corrupted block and its decoder on the shorter
targets, MLM's output head at masked positions only, CLM's and prefix LM's at every position.
Element-wise work (activations, norms, the optimizer's update) is left out, as in the papers'
counts. Attention runs on torch's math kernel while counting: the fused CPU kernel is missing
from ``FlopCounterMode``'s table, and the math kernel computes the same products.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import yaml

from apm_lightning.core.errors import APMError

BUDGET_KINDS = ("flops", "tokens")
# Tokens per measured batch: enough rows that MLM's random mask count is close to its mean, few
# enough that a BERT-base-sized model measures in seconds on a CPU.
MEASURE_TOKENS = 2048


@dataclass(frozen=True)
class Budget:
    """One pretraining budget of a study: ``value`` training FLOPs or tokens per objective.
    ``label`` names its run folders; None for a study written with the single ``budget_tokens``
    (its runs keep the folders they always had: OUT/pretrain/<objective>)."""

    kind: str
    value: float
    label: str | None


def _number(text: Any, where: str) -> float:
    # YAML 1.1 (PyYAML) reads 3e13 as a string; float() takes it.
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise APMError(f"{where}: {text!r} is not a number") from None
    if not value > 0:
        raise APMError(f"{where}: budgets must be positive, not {text!r}")
    return value


def budget_label(kind: str, value: float) -> str:
    """A folder name: flops-3e13, tokens-2048, tokens-1.5e06 -> tokens-1.5e6."""
    return f"{kind}-" + re.sub(r"e\+?0*(\d)", r"e\1", f"{value:g}")


def study_budgets(study: dict[str, Any], where: str = "study") -> list[Budget]:
    """The study's budgets, smallest first: ``budgets`` (with ``budget_kind``: flops, the
    default, or tokens), else the single ``budget_tokens``."""
    if "budgets" not in study:
        if "budget_tokens" not in study:
            raise APMError(f"{where}: the study needs 'budgets' (with budget_kind) or 'budget_tokens'")
        return [Budget("tokens", _number(study["budget_tokens"], f"{where}: budget_tokens"), None)]
    kind = study.get("budget_kind", "flops")
    if kind not in BUDGET_KINDS:
        raise APMError(f"{where}: budget_kind must be one of {', '.join(BUDGET_KINDS)}, not {kind!r}")
    values = study["budgets"]
    if not isinstance(values, list) or not values:
        raise APMError(f"{where}: budgets must be a list of numbers, e.g. [1e12, 3e12, 1e13]")
    numbers = sorted({_number(v, f"{where}: budgets") for v in values})
    return [Budget(kind, v, budget_label(kind, v)) for v in numbers]


def steps_for(budget: Budget, flops_per_token: float, tokens_per_step: int) -> int:
    """Optimizer steps that stay within the budget (at least one): ``tokens_per_step`` tokens
    each, costing ``flops_per_token`` each in training FLOPs."""
    per_step = tokens_per_step * (flops_per_token if budget.kind == "flops" else 1.0)
    return max(1, int(budget.value // per_step))


# ----------------------------------------------------------------------- measuring
def composed_model(args: list[str]) -> dict[str, Any]:
    """The ``model`` section ``apm pretrain fit ARGS`` composes (its ``--print_config``)."""
    from apm_lightning.training.cli import run_lightning_cli

    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        try:
            run_lightning_cli(["fit", *args, "--print_config"])
        except SystemExit as stop:
            if stop.code not in (0, None):
                raise APMError(
                    f"the pretraining options do not compose (the error above): apm fit {' '.join(args)}"
                ) from None
    return yaml.safe_load(printed.getvalue())["model"]


def build_module(model: dict[str, Any]) -> Any:
    """The LightningModule of a composed ``model`` section (class_path and init_args)."""
    path, _, name = model["class_path"].rpartition(".")
    return getattr(importlib.import_module(path), name)(**(model.get("init_args") or {}))


def corpus_blocks(documents: Iterable[str], tokenizer: Any, rows: int, length: int) -> Any:
    """``(rows, length)`` token ids of the corpus's first documents, end to end (repeated if the
    corpus is shorter)."""
    import torch

    ids: list[int] = []
    for text in documents:
        if text.strip():
            ids.extend(tokenizer(text, verbose=False)["input_ids"])
        if len(ids) >= rows * length:
            break
    if not ids:
        raise APMError("the study's corpus has no text to measure training FLOPs on")
    while len(ids) < rows * length:
        ids = ids + ids
    return torch.tensor(ids[: rows * length], dtype=torch.long).view(rows, length)


def count_training_flops(loss: Callable[[], Any]) -> int:
    """FLOPs of ``loss()`` and its backward pass, as FlopCounterMode counts them (matrix
    products; attention on torch's math kernel, whose products the table has)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with sdpa_kernel(SDPBackend.MATH), counter:
        loss().backward()
    return int(counter.get_total_flops())


def training_flops(module: Any, blocks: Any) -> int:
    """FLOPs of one training step of a pretraining module (its objective's loss, forward and
    backward) on ``blocks``."""
    import torch

    module.train()
    torch.manual_seed(0)  # the masks and samples of this one batch
    flops = count_training_flops(lambda: module.compute(blocks)["loss"])
    module.zero_grad(set_to_none=True)
    return flops


def measure_objective(args: list[str], documents: Iterable[str], block_size: int) -> dict[str, Any]:
    """Training FLOPs per token of the model ``apm pretrain fit ARGS`` trains, on real blocks of
    ``block_size`` tokens (on the GPU when there is one), and its trainable parameters."""
    import torch

    module = build_module(composed_model(args))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    module.to(device)
    rows = max(1, MEASURE_TOKENS // block_size)
    blocks = corpus_blocks(documents, module.tokenizer, rows, block_size).to(device)
    flops = training_flops(module, blocks)
    return {
        "train_flops_per_token": flops / blocks.numel(),
        "trainable_parameters": sum(p.numel() for p in module.parameters() if p.requires_grad),
        "measured_tokens": blocks.numel(),
        "block_size": block_size,
        "device": device,
    }
