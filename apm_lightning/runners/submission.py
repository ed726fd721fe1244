"""GLUE test-server submissions: one TSV per task under the name the server expects, checked
(header, label vocabulary, row count, example ids), then zipped at the top level of the archive.

``apm predict`` writes ``index<TAB>prediction`` with the task's label names (``negative``/
``positive``, ``entailment``, ...; a float for STS-B), as the exported config names them. The
server wants 0/1 for CoLA, SST-2, MRPC, QQP and WNLI, so a submission file is the prediction
file with each name spelled as the server spells it (names for MNLI, QNLI, RTE and AX), under the
server's file name; refused when anything does not match. Files that already use the server's
spelling are accepted as they are.
"""

from __future__ import annotations

import math
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path

from apm_lightning.data.tasks import get_task
from apm_lightning.metrics.glue_score import GLUE_SCORE_TASKS

# The benchmark's tasks in the server's order: GLUE's nine, then the diagnostic set.
GLUE_SERVER_TASKS = (*GLUE_SCORE_TASKS, "ax")
# Server file name -> (task, prediction split), and the rows of the official test files (the
# server rejects a file with any other count): declared in the tasks' files (glue.server_files,
# glue.official_rows). ``apm predict`` names its files <task>_<split>.tsv.
SERVER_FILES: dict[str, tuple[str, str]] = {
    name: (task, split) for task in GLUE_SERVER_TASKS for split, name in get_task(task).server_files.items()
}
OFFICIAL_ROWS: dict[str, int] = {
    get_task(task).server_files[split]: rows
    for task in GLUE_SERVER_TASKS
    for split, rows in get_task(task).official_rows.items()
}

HEADER = "index\tprediction"


def server_names(task: str) -> list[str]:
    """The server files a task contributes (MNLI two, the others one; a task outside GLUE none)."""
    return [name for name, (t, _) in SERVER_FILES.items() if t == get_task(task).name]


def prediction_file(task: str, split: str) -> str:
    """The file ``apm predict`` writes for a task's split, under RUN_DIR/predictions/."""
    return f"{task}_{split}.tsv"


def label_vocabulary(server_name: str) -> tuple[str, ...] | None:
    """The labels the server accepts in a file (None: a float, STS-B)."""
    spec = get_task(SERVER_FILES[server_name][0])
    if spec.is_regression:
        return None
    return spec.file_label_values or spec.label_names


def server_spelling(server_name: str) -> dict[str, str]:
    """Label name or server spelling -> the server's spelling (empty for STS-B)."""
    spec = get_task(SERVER_FILES[server_name][0])
    if spec.is_regression:
        return {}
    server = label_vocabulary(server_name)
    return {**dict(zip(spec.label_names, server, strict=True)), **{v: v for v in server}}


def check_file(path: str | Path, server_name: str, test_ids: Sequence[int] | None = None) -> list[str]:
    """Problems with one submission file (empty when it is fine).

    ``test_ids`` are the ids of the test file that was predicted; without them the row count
    is checked against the official test file.
    """
    path = Path(path)
    if not path.is_file():
        return [f"{path}: not found"]
    lines = path.read_text(encoding="utf-8").splitlines()
    if not lines or lines[0] != HEADER:
        return [f"{path}: the header must be {HEADER!r}, found {lines[0] if lines else ''!r}"]
    spelling = server_spelling(server_name)
    vocab = list(spelling) or None  # names, then the server spellings not already among them
    problems: list[str] = []
    ids: list[int] = []
    for number, line in enumerate(lines[1:], start=2):
        fields = line.split("\t")
        if len(fields) != 2:
            problems.append(f"{path}, line {number}: expected 2 tab-separated fields")
            continue
        index, prediction = fields
        try:
            ids.append(int(index))
        except ValueError:
            problems.append(f"{path}, line {number}: index {index!r} is not an integer")
        if vocab is None:
            try:
                ok = math.isfinite(float(prediction))
            except ValueError:
                ok = False
            if not ok:
                problems.append(f"{path}, line {number}: {prediction!r} is not a number")
        elif prediction not in vocab:
            problems.append(f"{path}, line {number}: {prediction!r} is not one of {', '.join(vocab)}")
        if len(problems) >= 5:  # enough to see what is wrong
            return problems
    if len(set(ids)) != len(ids):
        problems.append(f"{path}: repeated indices")
    if test_ids is not None:
        if sorted(ids) != sorted(test_ids):
            problems.append(
                f"{path}: {len(ids)} rows whose indices do not match the {len(test_ids)} rows of the test file"
            )
    elif len(ids) != OFFICIAL_ROWS[server_name]:
        problems.append(f"{path}: {len(ids)} rows, the official test file has {OFFICIAL_ROWS[server_name]}")
    return problems


def server_text(path: Path, server_name: str) -> str:
    """A checked prediction file's text with its labels spelled as the server spells them."""
    lines = path.read_text(encoding="utf-8").splitlines()
    spelling = server_spelling(server_name)
    if spelling:
        lines = [lines[0], *(f"{i}\t{spelling[p]}" for i, p in (line.split("\t") for line in lines[1:]))]
    return "\n".join(lines) + "\n"


def write_submission(
    files: Mapping[str, str | Path],
    out_zip: str | Path,
    test_ids: Mapping[str, Sequence[int]] | None = None,
) -> dict[str, object]:
    """Check ``files`` (server name -> prediction TSV) and zip the good ones as the server names
    them. Returns a report: per file its status (ok / invalid / missing), rows and problems;
    ``complete`` (all eleven files ok) and ``warnings`` (row counts that are not the official
    ones, e.g. predictions of a cut-down test file, which the server would reject)."""
    test_ids = test_ids or {}
    report: dict[str, dict] = {}
    warnings: list[str] = []
    good: dict[str, Path] = {}
    for name in SERVER_FILES:
        if name not in files:
            report[name] = {"status": "missing", "rows": 0, "problems": []}
            continue
        path = Path(files[name])
        problems = check_file(path, name, test_ids.get(name))
        rows = max(0, len(path.read_text(encoding="utf-8").splitlines()) - 1) if path.is_file() else 0
        report[name] = {"status": "invalid" if problems else "ok", "rows": rows, "problems": problems}
        if not problems:
            good[name] = path
            if rows != OFFICIAL_ROWS[name]:
                warnings.append(f"{name}: {rows} rows, the official test file has {OFFICIAL_ROWS[name]}")
    out_zip = Path(out_zip)
    out_zip.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_zip.with_name(f".{out_zip.name}.tmp")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, path in good.items():
            # At the top level (the server looks for the names there), in the server's spelling.
            archive.writestr(name, server_text(path, name))
    tmp.replace(out_zip)
    return {
        "zip": str(out_zip),
        "complete": len(good) == len(SERVER_FILES),
        "included": list(good),
        "files": report,
        "warnings": warnings,
    }
