"""The GLUE task registry: one entry per task says where its files are, which columns hold the
text and the label, what the labels are, and how the task is scored.

Adding a task is one :class:`GlueTask` entry here plus one YAML under ``experiments/glue/``.
Label ids follow the Hugging Face hub's ``nyu-mll/glue`` so that local files and the hub give the
same ids.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from apm_lightning.core.errors import APMError


@dataclass(frozen=True)
class SplitFile:
    """One split of a task in the original GLUE distribution layout."""

    filename: str
    labelled: bool = True


@dataclass(frozen=True)
class GlueTask:
    name: str  # our id, also the hub config name
    folder: str  # folder in the GLUE distribution layout
    text_columns: tuple[str, ...]  # header names in the TSV (CoLA has no header: see positions)
    label_column: str | None
    label_names: tuple[str, ...] | None  # None: regression (STS-B)
    metrics: tuple[str, ...]  # torchmetrics-backed names, see apm_lightning.metrics.glue
    splits: dict[str, SplitFile] = field(default_factory=dict)
    # Spelling of the labels in the TSV files when it differs from label_names (e.g. "0"/"1").
    file_label_values: tuple[str, ...] | None = None
    # Column positions for files without a header (CoLA train/dev): (text, label).
    headerless_positions: tuple[int, int] | None = None
    headerless_columns: int | None = None
    hub_text_columns: tuple[str, ...] = ()
    # GLUE's reference processors skip QQP's few rows with missing fields; we do the same.
    skip_malformed_rows: bool = False
    # AX has no training data: it is predicted with an MNLI model.
    model_task: str | None = None

    @property
    def is_regression(self) -> bool:
        return self.label_names is None

    @property
    def num_labels(self) -> int:
        return 1 if self.label_names is None else len(self.label_names)

    @property
    def is_pair(self) -> bool:
        return len(self.text_columns) == 2

    @property
    def validation_splits(self) -> list[str]:
        return [s for s in self.splits if s.startswith("validation")]

    @property
    def test_splits(self) -> list[str]:
        return [s for s in self.splits if s.startswith("test")]


_BINARY = ("0", "1")
_NLI2 = ("entailment", "not_entailment")
_STANDARD = {
    "train": SplitFile("train.tsv"),
    "validation": SplitFile("dev.tsv"),
    "test": SplitFile("test.tsv", labelled=False),
}

GLUE_TASKS: dict[str, GlueTask] = {
    t.name: t
    for t in [
        GlueTask(
            "cola",
            "CoLA",
            ("sentence",),
            "label",
            ("unacceptable", "acceptable"),
            ("mcc",),
            _STANDARD,
            file_label_values=_BINARY,
            headerless_positions=(3, 1),
            headerless_columns=4,
            hub_text_columns=("sentence",),
        ),
        GlueTask(
            "sst2",
            "SST-2",
            ("sentence",),
            "label",
            ("negative", "positive"),
            ("accuracy",),
            _STANDARD,
            file_label_values=_BINARY,
            hub_text_columns=("sentence",),
        ),
        GlueTask(
            "mrpc",
            "MRPC",
            ("#1 String", "#2 String"),
            "Quality",
            ("not_equivalent", "equivalent"),
            ("f1", "accuracy"),
            _STANDARD,
            file_label_values=_BINARY,
            hub_text_columns=("sentence1", "sentence2"),
        ),
        GlueTask(
            "stsb",
            "STS-B",
            ("sentence1", "sentence2"),
            "score",
            None,
            ("pearson", "spearman"),
            _STANDARD,
            hub_text_columns=("sentence1", "sentence2"),
        ),
        GlueTask(
            "qqp",
            "QQP",
            ("question1", "question2"),
            "is_duplicate",
            ("not_duplicate", "duplicate"),
            ("f1", "accuracy"),
            _STANDARD,
            file_label_values=_BINARY,
            hub_text_columns=("question1", "question2"),
            skip_malformed_rows=True,
        ),
        GlueTask(
            "mnli",
            "MNLI",
            ("sentence1", "sentence2"),
            "gold_label",
            ("entailment", "neutral", "contradiction"),
            ("accuracy",),
            {
                "train": SplitFile("train.tsv"),
                "validation_matched": SplitFile("dev_matched.tsv"),
                "validation_mismatched": SplitFile("dev_mismatched.tsv"),
                "test_matched": SplitFile("test_matched.tsv", labelled=False),
                "test_mismatched": SplitFile("test_mismatched.tsv", labelled=False),
            },
            hub_text_columns=("premise", "hypothesis"),
        ),
        GlueTask(
            "qnli",
            "QNLI",
            ("question", "sentence"),
            "label",
            _NLI2,
            ("accuracy",),
            _STANDARD,
            hub_text_columns=("question", "sentence"),
        ),
        GlueTask(
            "rte",
            "RTE",
            ("sentence1", "sentence2"),
            "label",
            _NLI2,
            ("accuracy",),
            _STANDARD,
            hub_text_columns=("sentence1", "sentence2"),
        ),
        GlueTask(
            "wnli",
            "WNLI",
            ("sentence1", "sentence2"),
            "label",
            ("not_entailment", "entailment"),
            ("accuracy",),
            _STANDARD,
            file_label_values=_BINARY,
            hub_text_columns=("sentence1", "sentence2"),
        ),
        GlueTask(
            "ax",
            "diagnostic",
            ("sentence1", "sentence2"),
            None,
            ("entailment", "neutral", "contradiction"),
            ("mcc",),
            {"test": SplitFile("diagnostic.tsv", labelled=False)},
            hub_text_columns=("premise", "hypothesis"),
            model_task="mnli",
        ),
    ]
}

# Spellings people use for the same task.
_ALIASES = {"sst-2": "sst2", "sts-b": "stsb", "sts": "stsb", "diagnostic": "ax", "mnli-m": "mnli"}


def get_task(name: str) -> GlueTask:
    """Look a task up by name (case-insensitive; 'SST-2' and 'sst2' both work)."""
    key = name.strip().lower()
    key = _ALIASES.get(key, key)
    if key not in GLUE_TASKS:
        raise APMError(f"unknown GLUE task {name!r}: choose one of {', '.join(GLUE_TASKS)}")
    return GLUE_TASKS[key]
