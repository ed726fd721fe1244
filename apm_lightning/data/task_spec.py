"""A dataset task, declared as data: one YAML file says which columns hold the text and the label,
what the labels are, how the task is scored and where its splits are. GLUE's nine tasks and AX
ship as such files (``apm_lightning/tasks/*.yaml``); a new task is one more file.

The schema (every key but ``name``, ``text_columns``, ``metrics`` and ``splits`` is optional)::

    name: my_pairs                  # lower case, digits, '_' or '-': names run dirs and files
    aliases: [my-pairs]             # other spellings that name the task
    text_columns: [first, second]   # one column (a single sentence) or two (a pair)
    label_column: same              # null: no split has labels (GLUE's AX)
    id_column: id                   # example ids (default: the row number)
    label_names: [different, same]  # class names, in id order ...
    regression: false               # ... or true: one float label (no label_names)
    score_range: [0, 5]             # regression: the range a label must be in
    file_label_values: ["0", "1"]   # how the files spell each class, when not by name or id
    metrics: [f1, accuracy]         # from: accuracy, f1 (two classes), mcc, pearson, spearman
    main_metric: mean               # the task's score: 'mean' of the metrics (GLUE's rule) or one
    splits:                         # train, validation[_x], test[_x]; each with ...
      train: {file: train.csv}      #   file: relative to this YAML (a GLUE task: to its folder);
      validation: {file: dev.csv}   #     CSV, TSV, JSON(L) or parquet, by its suffix
      test: {file: test.csv, labelled: false}
    hub:                            # a Hugging Face dataset instead of (or besides) the files
      dataset: nyu-mll/glue
      config: mrpc
      text_columns: [sentence1, sentence2]
      label_column: label
      id_column: idx
    glue:                           # GLUE tasks only: the distribution layout and test server
      folder: MRPC                  #   DATA_DIR/MRPC/<file> (TSV read without quoting)
      headerless: {text: 3, label: 1, columns: 4}   # CoLA's train/dev have no header
      skip_malformed_rows: false    #   QQP: skip rows with missing fields, as GLUE's loader does
      model_task: null              #   AX: predicted with a model of this task
      server_files: {test: MRPC.tsv}
      official_rows: {test: 1725}

Nothing read here decides what code runs: names, columns, file names and numbers only, and
metrics from the fixed list above. A file is checked whole when it is read; a problem is one
:class:`APMError` line naming the file and the key.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from apm_lightning.core.errors import APMError

# The metrics apm computes (apm_lightning.metrics.classification builds them).
CLASSIFICATION_METRICS = ("accuracy", "f1", "mcc")
REGRESSION_METRICS = ("pearson", "spearman")
METRIC_NAMES = CLASSIFICATION_METRICS + REGRESSION_METRICS
NAME_PATTERN = re.compile(r"[a-z0-9][a-z0-9_-]*")
SPLIT_PATTERN = re.compile(r"(train|validation|test)(_[a-z0-9]+)?")
TASK_FILE_SUFFIXES = (".yaml", ".yml")


@dataclass(frozen=True)
class SplitFile:
    """One split of a task: its file (in the task's folder) and whether it has labels."""

    filename: str | None
    labelled: bool = True


@dataclass(frozen=True)
class TaskSpec:
    """A dataset task (see the module docstring for the YAML that declares one)."""

    name: str  # our id (a GLUE task's is also its hub config name)
    folder: str | None  # GLUE tasks: the folder in the GLUE distribution layout
    text_columns: tuple[str, ...]  # column names in the task's files (GLUE: the TSV header)
    label_column: str | None
    label_names: tuple[str, ...] | None  # None: regression (STS-B)
    metrics: tuple[str, ...]  # names from METRIC_NAMES
    splits: dict[str, SplitFile] = field(default_factory=dict)
    # Spelling of the labels in the files when it differs from label_names (e.g. "0"/"1").
    file_label_values: tuple[str, ...] | None = None
    # Column positions for files without a header (CoLA train/dev): (text, label).
    headerless_positions: tuple[int, int] | None = None
    headerless_columns: int | None = None
    hub_text_columns: tuple[str, ...] = ()
    # GLUE's reference processors skip QQP's few rows with missing fields; we do the same.
    skip_malformed_rows: bool = False
    # AX has no training data: it is predicted with an MNLI model.
    model_task: str | None = None
    main_metric: str | None = None  # None: the mean of the metrics
    aliases: tuple[str, ...] = ()
    hub_dataset: str | None = None
    hub_config: str | None = None
    hub_label_column: str = "label"
    hub_id_column: str = "idx"
    # Tasks with their own files: the folder split files are relative to, and our column ->
    # the files' column (text_a, text_b, label, idx).
    files_dir: str | None = None
    column_map: dict[str, str] | None = None
    server_files: dict[str, str] = field(default_factory=dict)  # split -> GLUE server file name
    official_rows: dict[str, int] = field(default_factory=dict)  # split -> rows the server expects
    score_range: tuple[float, float] | None = None  # regression labels must lie in it
    declared_in: str | None = None  # the YAML file, for messages

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

    @property
    def score_metrics(self) -> tuple[str, ...]:
        """The metrics whose mean is the task's score (one, when ``main_metric`` names it)."""
        return (self.main_metric,) if self.main_metric else self.metrics

    @property
    def fingerprint(self) -> str:
        """A hash of everything that decides how files are read (for cache keys)."""
        data = {k: v for k, v in asdict(self).items() if k not in ("declared_in", "aliases")}
        return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:12]


_TOP_KEYS = {
    "name",
    "aliases",
    "text_columns",
    "label_column",
    "id_column",
    "label_names",
    "regression",
    "score_range",
    "file_label_values",
    "metrics",
    "main_metric",
    "splits",
    "hub",
    "glue",
}
_HUB_KEYS = {"dataset", "config", "text_columns", "label_column", "id_column"}
_GLUE_KEYS = {"folder", "headerless", "skip_malformed_rows", "model_task", "server_files", "official_rows"}


class _Reader:
    """Typed access to one mapping of a task file; every error names the file and the key."""

    def __init__(self, data: Any, where: str, prefix: str, allowed: set[str]) -> None:
        self.where, self.prefix = where, prefix
        if not isinstance(data, dict):
            self.fail(prefix.rstrip(".") or "the file", "must be a mapping (key: value lines)")
        unknown = sorted(str(k) for k in data if k not in allowed)
        if unknown:
            self.fail(unknown[0], f"is not a task key (known: {', '.join(sorted(allowed))})")
        self.data = data

    def fail(self, key: str, problem: str) -> None:
        raise APMError(f"{self.where}: {self.prefix}{key} {problem}")

    def text(self, key: str, default: str | None = None, required: bool = False) -> str | None:
        value = self.data.get(key, default)
        if value is None and required:
            self.fail(key, "is required")
        if value is not None and (not isinstance(value, str) or not value.strip()):
            self.fail(key, f"must be a non-empty string, not {value!r}")
        return value

    def texts(self, key: str, lengths: tuple[int, ...] | None = None) -> tuple[str, ...] | None:
        value = self.data.get(key)
        if value is None:
            return None
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            self.fail(key, f"must be a list of strings, not {value!r}")
        if lengths and len(value) not in lengths:
            self.fail(key, f"must hold {' or '.join(map(str, lengths))} names, not {len(value)}")
        if len(set(value)) != len(value):
            self.fail(key, f"repeats a name: {value!r}")
        return tuple(value)

    def flag(self, key: str, default: bool = False) -> bool:
        value = self.data.get(key, default)
        if not isinstance(value, bool):
            self.fail(key, f"must be true or false, not {value!r}")
        return value

    def count(self, key: str) -> int:
        value = self.data.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            self.fail(key, f"must be a whole number >= 0, not {value!r}")
        return value


def parse_task(data: Any, where: str, folder: Path | None = None) -> TaskSpec:
    """The task ``data`` (a task file's content) declares; ``folder`` is the file's folder, which
    split files of a task outside the GLUE layout are relative to."""
    top = _Reader(data, where, "", _TOP_KEYS)
    name = top.text("name", required=True)
    if not NAME_PATTERN.fullmatch(name):
        top.fail("name", f"{name!r} must be lower case letters, digits, '_' or '-'")
    aliases = top.texts("aliases") or ()
    if not all(NAME_PATTERN.fullmatch(a) for a in aliases):
        top.fail("aliases", f"{list(aliases)!r} must be lower case letters, digits, '_' or '-'")
    text_columns = top.texts("text_columns", lengths=(1, 2))
    if text_columns is None:
        top.fail("text_columns", "is required (one column, or two for sentence pairs)")
    regression = top.flag("regression")
    label_names = top.texts("label_names")
    if regression == (label_names is not None):
        top.fail("label_names", "are required for classification, and absent with 'regression: true'")
    if label_names is not None and len(label_names) < 2:
        top.fail("label_names", "must name at least two classes")
    file_labels = top.texts("file_label_values")
    if file_labels is not None and len(file_labels) != len(label_names or ()):
        top.fail("file_label_values", "must spell each of label_names once, in the same order")
    score_range = data.get("score_range")
    if score_range is not None:
        numbers = isinstance(score_range, list) and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in score_range
        )
        if not regression or not numbers or len(score_range) != 2 or score_range[0] >= score_range[1]:
            top.fail("score_range", f"must be [low, high] of a regression task, not {score_range!r}")
        score_range = (float(score_range[0]), float(score_range[1]))
    metrics = top.texts("metrics")
    allowed = REGRESSION_METRICS if regression else CLASSIFICATION_METRICS
    if not metrics or any(m not in allowed for m in metrics):
        top.fail("metrics", f"must be a list from {', '.join(allowed)} (got {metrics!r})")
    if "f1" in metrics and len(label_names) != 2:
        top.fail("metrics", "f1 is the positive class's F1: it needs exactly two label_names")
    main = top.text("main_metric", "mean")
    if main != "mean" and main not in metrics:
        top.fail("main_metric", f"must be 'mean' or one of the metrics ({', '.join(metrics)})")
    label_column = top.text("label_column")
    id_column = top.text("id_column")

    split_data = data.get("splits")
    if not isinstance(split_data, dict) or not split_data:
        top.fail("splits", "is required: a mapping split -> {file: ..., labelled: ...}")
    splits: dict[str, SplitFile] = {}
    for split, spec in split_data.items():
        if not isinstance(split, str) or not SPLIT_PATTERN.fullmatch(split):
            top.fail(f"splits.{split}", "must be named train, validation, test or validation_x/test_x")
        entry = _Reader(spec or {}, where, f"splits.{split}.", {"file", "labelled"})
        filename = entry.text("file")
        labelled = entry.flag("labelled", True)
        if labelled and label_column is None:
            entry.fail("labelled", "is true but the task has no label_column")
        splits[split] = SplitFile(filename, labelled)
    if "train" in splits and not splits["train"].labelled:
        top.fail("splits.train", "must be labelled")

    hub = _Reader(data.get("hub") or {}, where, "hub.", _HUB_KEYS)
    hub_dataset = hub.text("dataset")
    hub_text = hub.texts("text_columns", lengths=(len(text_columns),)) or (
        text_columns if hub_dataset else ()
    )
    glue = _Reader(data.get("glue") or {}, where, "glue.", _GLUE_KEYS)
    glue_folder = glue.text("folder")
    headerless = None
    headerless_columns = None
    if glue.data.get("headerless") is not None:
        cols = _Reader(glue.data["headerless"], where, "glue.headerless.", {"text", "label", "columns"})
        headerless, headerless_columns = (cols.count("text"), cols.count("label")), cols.count("columns")
    server = glue.data.get("server_files") or {}
    rows = glue.data.get("official_rows") or {}
    server_reader = _Reader(server, where, "glue.server_files.", set(splits))
    rows_reader = _Reader(rows, where, "glue.official_rows.", set(server))

    has_files = any(s.filename for s in splits.values())
    if not has_files and hub_dataset is None:
        top.fail("splits", "give each split a file, or declare a hub dataset")
    own_files = has_files and glue_folder is None
    column_map = None
    if own_files:
        column_map = {"text_a": text_columns[0]}
        if len(text_columns) == 2:
            column_map["text_b"] = text_columns[1]
        if label_column:
            column_map["label"] = label_column
        if id_column:
            column_map["idx"] = id_column
    return TaskSpec(
        name=name,
        folder=glue_folder,
        text_columns=text_columns,
        label_column=label_column,
        label_names=label_names,
        metrics=metrics,
        splits=splits,
        file_label_values=file_labels,
        headerless_positions=headerless,
        headerless_columns=headerless_columns,
        hub_text_columns=hub_text,
        skip_malformed_rows=glue.flag("skip_malformed_rows"),
        model_task=glue.text("model_task"),
        main_metric=None if main == "mean" else main,
        score_range=score_range,
        aliases=aliases,
        hub_dataset=hub_dataset,
        hub_config=hub.text("config"),
        hub_label_column=hub.text("label_column", "label"),
        hub_id_column=hub.text("id_column", "idx"),
        files_dir=str(folder.resolve()) if own_files and folder is not None else None,
        column_map=column_map,
        server_files={s: server_reader.text(s) for s in server},
        official_rows={s: rows_reader.count(s) for s in rows},
        declared_in=where,
    )


def load_task_file(path: str | Path) -> TaskSpec:
    """The task a YAML file declares (read with ``yaml.safe_load``: plain data, no tags)."""
    import yaml

    path = Path(path).expanduser()
    if not path.is_file():
        raise APMError(f"task file not found: {path} (a task is a registered name or a YAML file)")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise APMError(f"{path}: not a readable YAML task file ({first})") from None
    return parse_task(data, str(path), path.parent)
