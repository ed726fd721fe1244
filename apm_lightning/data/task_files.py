"""Readers for a task's files on disk: the original GLUE distribution's TSV layout, and any
CSV/TSV/JSON/parquet table with a column mapping (a user's task files among them).

Every reader returns the same columns, so the rest of the pipeline never sees a file format:
``idx`` (the example index: the file's ``index`` column where it has one, else the row number),
``text_a``, ``text_b`` (pair tasks only) and ``label`` (a class id, a float for regression, and
-1 or NaN for unlabelled test splits). Problems are reported as one :class:`APMError` line naming
the file, the line and what is wrong.
"""

from __future__ import annotations

import csv
import logging
import math
import tempfile
from pathlib import Path
from typing import Any

from apm_lightning.core.checks import not_a_file_reason, shorten
from apm_lightning.core.errors import APMError, user_error
from apm_lightning.data.task_spec import TaskSpec
from apm_lightning.data.text_encoding import check_decodes, decode_error, resolve_encoding

log = logging.getLogger(__name__)

# GLUE sentences can be long (MNLI parses are several KB); the csv default limit is 128 KB.
csv.field_size_limit(1 << 24)


def label_converter(task: TaskSpec, where: str):
    """Return a function turning a label as written in a file into an id (or a float score)."""
    if task.is_regression:
        low, high = task.score_range or (None, None)
        bounds = f"[{low:g}, {high:g}]" if low is not None else ""
        range_text = f" ({task.name} scores are floats in {bounds})" if bounds else ""
        outside = f"outside {bounds}" if bounds else "not finite"

        def to_score(value: Any, line: int) -> float:
            try:
                score = float(value)
            except (TypeError, ValueError):
                raise APMError(
                    f"{where}, line {line}: score {shorten(repr(value))} is not a number{range_text}"
                ) from None
            if not math.isfinite(score) or (low is not None and not low <= score <= high):
                raise APMError(f"{where}, line {line}: score {score} is {outside}")
            return score

        return to_score

    names = task.label_names
    lookup = {name: i for i, name in enumerate(names)}
    lookup.update({str(i): i for i in range(len(names))})
    if task.file_label_values:
        lookup.update({v: i for i, v in enumerate(task.file_label_values)})
    accepted = ", ".join(task.file_label_values or names)

    def to_id(value: Any, line: int) -> int:
        key = str(value).strip()
        if isinstance(value, float) and value.is_integer():
            key = str(int(value))
        if key not in lookup:
            raise APMError(
                f"{where}, line {line}: label {shorten(repr(value))} is not a {task.name} label "
                f"(expected one of: {accepted})"
            )
        return lookup[key]

    return to_id


def _empty_columns(task: TaskSpec) -> dict[str, list]:
    columns: dict[str, list] = {"idx": [], "text_a": []}
    if task.is_pair:
        columns["text_b"] = []
    columns["label"] = []
    return columns


def read_glue_tsv(
    task: TaskSpec, path: str | Path, labelled: bool, encoding: str = "auto"
) -> dict[str, list]:
    """Read one split file of the original GLUE layout (quoting disabled: quotes are text);
    ``encoding`` ``auto`` is UTF-8, or what the file's byte-order mark says (UTF-16...)."""
    path = Path(path)
    reason = not_a_file_reason(path)
    if reason == "does not exist":
        raise APMError(
            f"{task.name}: file not found: {path} (point --data.data_dir at a folder in the "
            f"GLUE layout, e.g. {task.folder}/{path.name})"
        )
    if reason:
        raise APMError(f"{task.name}: {path} {reason}; it must be the split's TSV file")
    codec = resolve_encoding(path, encoding)
    try:
        return _read_glue_tsv(task, path, labelled, codec)
    except UnicodeDecodeError:
        raise decode_error(path, codec) from None


def _read_glue_tsv(task: TaskSpec, path: Path, labelled: bool, encoding: str) -> dict[str, list]:
    to_label = label_converter(task, str(path)) if labelled else None
    missing_label = float("nan") if task.is_regression else -1
    columns = _empty_columns(task)
    skipped = 0
    # utf-8-sig (resolve_encoding) drops MRPC's byte-order mark: its first header reads "Quality".
    with path.open(encoding=encoding, newline="") as f:
        reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        headerless = labelled and task.headerless_positions is not None
        if headerless:
            text_pos, label_pos = task.headerless_positions
            positions, width, idx_pos = [text_pos], task.headerless_columns, None
        else:
            header = next(reader, None)
            if header is None:
                raise APMError(f"{path}: the file is empty (expected a header and data rows)")
            wanted = list(task.text_columns) + ([task.label_column] if labelled else [])
            absent = [c for c in wanted if c not in header]
            if absent:
                raise APMError(
                    f"{path}, line 1: header lacks column(s) {', '.join(map(repr, absent))} "
                    f"for {task.name} (found: {shorten(', '.join(header))})"
                )
            positions = [header.index(c) for c in task.text_columns]
            label_pos = header.index(task.label_column) if labelled else None
            # The file's own example ids: ``index`` in most tasks, ``id`` in QQP (whose test ids
            # must survive skipped malformed rows, since submissions are keyed by them).
            idx_name = next((c for c in ("index", "id") if c in header), None)
            idx_pos = header.index(idx_name) if idx_name is not None else None
            width = len(header)
        for row in reader:
            if not row or row == [""]:
                continue  # blank line, e.g. a trailing newline
            line = reader.line_num
            if len(row) != width:
                if task.skip_malformed_rows:
                    skipped += 1
                    continue
                raise APMError(
                    f"{path}, line {line}: expected {width} tab-separated columns, found "
                    f"{len(row)} (is the file in the GLUE layout, read without quoting?)"
                )
            if idx_pos is not None:
                try:
                    columns["idx"].append(int(row[idx_pos]))
                except ValueError:
                    raise APMError(
                        f"{path}, line {line}: index {shorten(repr(row[idx_pos]))} is not an integer"
                    ) from None
            else:
                columns["idx"].append(len(columns["idx"]))
            columns["text_a"].append(row[positions[0]])
            if task.is_pair:
                columns["text_b"].append(row[positions[1]])
            columns["label"].append(to_label(row[label_pos], line) if labelled else missing_label)
    if skipped:
        log.warning("%s: skipped %d malformed rows, as GLUE's reference loader does", path, skipped)
    if not columns["idx"]:
        raise APMError(f"{path}: the split is empty (no data rows after the header)")
    return columns


_TABLE_FORMATS = {".csv": "csv", ".tsv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}


def read_table(
    task: TaskSpec,
    path: str | Path,
    column_map: dict[str, str] | None,
    labelled: bool,
    encoding: str = "auto",
) -> dict[str, list]:
    """Read a CSV/TSV/JSON(L)/parquet file with ``datasets``; ``column_map`` maps our names
    (``text_a``, ``text_b``, ``label``, ``idx``) to the file's column names."""
    import datasets

    path = Path(path)
    reason = not_a_file_reason(path)
    if reason:
        raise APMError(
            f"{task.name}: data file {path} {reason}"
            if reason != "does not exist"
            else f"{task.name}: data file not found: {path}"
        )
    fmt = _TABLE_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise APMError(
            f"{path}: unsupported file type {path.suffix!r} (use one of {', '.join(_TABLE_FORMATS)})"
        )
    kwargs: dict[str, Any] = {}
    codec = None
    if fmt in ("csv", "json"):
        codec = resolve_encoding(path, encoding)
        check_decodes(path, codec)
        kwargs["encoding"] = codec
    if fmt == "csv":
        # pandas would read text such as "NA", "null" or an empty cell as a missing value, which
        # then reaches us as the string "None": keep every cell as written.
        kwargs["keep_default_na"] = False
    if path.suffix.lower() == ".tsv":
        kwargs.update(delimiter="\t", quoting=csv.QUOTE_NONE)
    try:
        # A throw-away cache: datasets keys its own on path and mtime, and would serve stale rows
        # after an edit that keeps both (ours is keyed on content, and skips this on a hit).
        with tempfile.TemporaryDirectory(prefix="apm-table-") as scratch:
            table = datasets.load_dataset(
                fmt, data_files=str(path), split="train", cache_dir=scratch, keep_in_memory=True, **kwargs
            )
    except Exception as err:  # datasets raises many types for unreadable files
        if codec is not None and user_error(err, UnicodeError) is not None:
            raise decode_error(path, codec) from None
        raise APMError(f"{path}: could not be read as {fmt}: {shorten(err)}") from None
    mapping = {"text_a": "sentence1" if task.is_pair else "sentence", "label": "label"}
    if task.is_pair:
        mapping["text_b"] = "sentence2"
    mapping.update(task.column_map or {})  # a task file's own columns
    mapping.update(column_map or {})
    needed = ["text_a"] + (["text_b"] if task.is_pair else []) + (["label"] if labelled else [])
    absent = [f"{ours} -> {mapping[ours]!r}" for ours in needed if mapping[ours] not in table.column_names]
    if absent:
        raise APMError(
            f"{path}: column(s) not found: {', '.join(absent)} (the file has "
            f"{shorten(', '.join(table.column_names))}; set --data.column_map)"
        )
    if len(table) == 0:
        raise APMError(f"{path}: the split is empty (no data rows)")
    columns = _empty_columns(task)
    idx_col = mapping.get("idx", "idx")
    columns["idx"] = (
        [int(v) for v in table[idx_col]] if idx_col in table.column_names else list(range(len(table)))
    )
    columns["text_a"] = [str(v) for v in table[mapping["text_a"]]]
    if task.is_pair:
        columns["text_b"] = [str(v) for v in table[mapping["text_b"]]]
    if labelled:
        to_label = label_converter(task, str(path))
        # Line numbers count a header row for CSV/TSV, so row i is on line i + 2.
        offset = 2 if fmt == "csv" else 1
        columns["label"] = [to_label(v, i + offset) for i, v in enumerate(table[mapping["label"]])]
    else:
        columns["label"] = [float("nan") if task.is_regression else -1] * len(table)
    return columns
