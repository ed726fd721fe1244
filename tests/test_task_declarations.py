"""Tasks are data: GLUE's tasks, declared in YAML, keep every setting they had as Python entries
(tests/fixtures/glue_task_fields.json was written from the Python registry before the move)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from apm_lightning.data.tasks import get_task
from apm_lightning.runners import submission

REPO = Path(__file__).resolve().parents[1]
SNAPSHOT = json.loads((REPO / "tests" / "fixtures" / "glue_task_fields.json").read_text())


def plain(value):
    """Dataclasses, tuples and dicts as JSON has them."""
    if dataclasses.is_dataclass(value):
        return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return [plain(v) for v in value]
    return value


@pytest.mark.parametrize("name", list(SNAPSHOT["tasks"]))
def test_glue_task_settings_are_unchanged(name):
    task = get_task(name)
    for field, before in SNAPSHOT["tasks"][name].items():
        if field == "split_order":
            assert list(task.splits) == before
        elif field == "splits":
            assert {
                s: {"filename": f.filename, "labelled": f.labelled} for s, f in task.splits.items()
            } == before
        else:
            assert plain(getattr(task, field)) == before, f"{name}.{field}"


def test_aliases_and_server_details_are_unchanged():
    for alias, name in SNAPSHOT["aliases"].items():
        assert get_task(alias).name == name
        assert get_task(alias.upper()) is get_task(name)
    assert {k: list(v) for k, v in submission.SERVER_FILES.items()} == SNAPSHOT["server_files"]
    assert list(submission.SERVER_FILES) == list(SNAPSHOT["server_files"])
    assert submission.OFFICIAL_ROWS == SNAPSHOT["official_rows"]
