"""Tasks are data: GLUE's tasks, declared in YAML, keep every setting they had as Python entries
(tests/fixtures/glue_task_fields.json was written from the Python registry before the move); a
new task is one YAML file, and docs/extending.md's commands run on the shipped example."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from apm_lightning.cli import main
from apm_lightning.core.errors import APMError
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


# --------------------------------------------------------------------------- the worked example
DOC = REPO / "docs" / "extending.md"
EXAMPLE = REPO / "docs" / "examples" / "my_pairs.yaml"
QUICK = [
    "--data.max_seq_length",
    "32",
    "--data.batch_size",
    "8",
    "--wandb_mode=disabled",
    "--trainer.enable_progress_bar=false",
    "--trainer.enable_model_summary=false",
]


def doc_blocks(language: str) -> list[str]:
    """The ```language blocks of docs/extending.md's task section."""
    section = DOC.read_text(encoding="utf-8").split("## A new classification task", 1)[1].split("\n## ", 1)[0]
    return re.findall(rf"```{language}\n(.*?)```", section, flags=re.S)


def doc_command(word: str) -> list[str]:
    """The doc's ``apm WORD`` command as an argument list (line continuations joined)."""
    for block in doc_blocks("bash"):
        args = shlex.split(block.replace("\\\n", " "))
        if args[:2] == ["apm", word]:
            return args[1:]
    raise AssertionError(f"no 'apm {word}' command in {DOC}")


def with_value(args: list[str], option: str, value: str) -> list[str]:
    args = list(args)
    args[args.index(option) + 1] = value
    return args


def run_apm(args: list[str]) -> subprocess.CompletedProcess:
    """``apm ARGS`` in a child process, from the repository root (the doc's paths are relative)."""
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run(
        [sys.executable, "-m", "apm_lightning", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_the_doc_shows_the_shipped_task_file():
    assert doc_blocks("yaml") == [EXAMPLE.read_text(encoding="utf-8")]
    task = get_task(str(EXAMPLE))
    assert task.name == "my_pairs" and task.is_pair and task.score_metrics == ("f1",)
    assert get_task("my_pairs") is task and get_task(str(EXAMPLE)) is task  # registered once


def test_apm_fit_on_a_task_file(tmp_path):
    args = with_value(doc_command("fit"), "--trainer.default_root_dir", str(tmp_path / "run"))
    done = run_apm([*args, *QUICK])
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["task"] == "my_pairs" and results["data_source"].startswith("task files:")
    assert set(results["metrics"]) == {"f1", "accuracy", "main"}
    assert results["metrics"]["main"] == results["metrics"]["f1"]  # main_metric: f1
    assert 0.0 <= results["metrics"]["accuracy"] <= 1.0 and results["train_examples"] == 32
    # The checkpoint carries the declaration: a fresh process that never saw the task file
    # exports it (the exported config names the task's labels).
    out = tmp_path / "hf"
    exported = run_apm(["export", results["best_checkpoint"], str(out)])
    assert exported.returncode == 0, exported.stderr[-3000:]
    config = json.loads((out / "config.json").read_text())
    assert sorted(config["id2label"].values()) == sorted(get_task(str(EXAMPLE)).label_names)


def test_apm_glue_on_a_task_file(tmp_path, monkeypatch):
    out = tmp_path / "glue"
    args = with_value(doc_command("glue"), "--out", str(out))
    monkeypatch.chdir(REPO)  # the doc's paths are relative to the repository
    assert main([*args, "--launcher", "inprocess", *QUICK]) == 0
    record = json.loads((out / "glue_score.json").read_text())
    assert record["tasks"]["my_pairs"]["status"] == "ok" and record["tasks"]["my_pairs"]["n"] == 1
    assert "my_pairs" not in record["glue"]["tasks_scored"] and record["glue"]["score"] is None
    run = json.loads((out / "runs" / "my_pairs" / "seed0" / "results.json").read_text())
    assert record["tasks"]["my_pairs"]["score_median"] == pytest.approx(run["metrics"]["f1"])
    header, *rows = (out / "results.csv").read_text().splitlines()
    assert {"f1", "accuracy", "main"} <= set(header.split(",")) and [r.split(",")[0] for r in rows] == [
        "my_pairs"
    ]
    assert "| my_pairs | ok | 1 |" in (out / "results.md").read_text()
    assert (out / "tasks.csv").read_text().splitlines()[-1].startswith("my_pairs,ok,1,")


def test_unknown_task_names_fail_with_the_known_ones(tmp_path, capsys):
    out = tmp_path / "glue"
    assert main(["glue", "--tasks", "rte,my_pair", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "'my_pair'" in err[0] and "cola, " in err[0] and "task YAML file" in err[0]
    assert not out.exists()  # refused before anything is written
    with pytest.raises(APMError, match="task file not found"):
        get_task(str(tmp_path / "missing.yaml"))


# --------------------------------------------------------------------------- bad task files
GOOD = {
    "name": "pairs",
    "text_columns": ["a", "b"],
    "label_column": "y",
    "label_names": ["no", "yes"],
    "metrics": ["accuracy"],
    "splits": {"train": {"file": "t.csv"}, "validation": {"file": "d.csv"}},
}


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        ({"module": "os.system"}, "module is not a task key"),
        ({"metrics": ["accuracy", "bleu"]}, "metrics must be a list from accuracy, f1, mcc"),
        ({"metrics": ["pearson"]}, "metrics must be a list from accuracy, f1, mcc"),
        ({"label_names": ["a", "b", "c"], "metrics": ["f1"]}, "needs exactly two label_names"),
        ({"main_metric": "mcc"}, "main_metric must be 'mean' or one of the metrics"),
        ({"text_columns": ["a", "b", "c"]}, "text_columns must hold 1 or 2 names"),
        ({"name": "My Task"}, "name 'My Task' must be lower case"),
        ({"regression": True}, "label_names are required for classification, and absent"),
        ({"splits": {"dev": {"file": "d.csv"}}}, "splits.dev must be named train, validation, test"),
        ({"splits": {"train": {"file": "t.csv", "labeled": True}}}, "splits.train.labeled is not a task key"),
        ({"name": "mrpc"}, "task name 'mrpc' is taken by tasks/mrpc.yaml"),
    ],
)
def test_bad_task_files_fail_with_one_line(tmp_path, change, fragment):
    import yaml

    path = tmp_path / "task.yaml"
    path.write_text(yaml.safe_dump({**GOOD, **change}))
    with pytest.raises(APMError) as err:
        get_task(str(path))
    assert fragment in str(err.value) and str(path) in str(err.value) and "\n" not in str(err.value)


def test_a_regression_task_file_with_tsv_files(tmp_path):
    from apm_lightning.data.classification import ClassificationDataModule

    (tmp_path / "train.tsv").write_text('s\tscore\n"quoted" start\t0.5\nplain\t1.5\n')
    (tmp_path / "task.yaml").write_text(
        "name: scores\ntext_columns: [s]\nlabel_column: score\nregression: true\nscore_range: [0, 1]\n"
        "metrics: [pearson]\nsplits: {train: {file: train.tsv}, validation: {file: train.tsv}}\n"
    )
    dm = ClassificationDataModule(task=str(tmp_path / "task.yaml"))
    with pytest.raises(APMError, match=r"line 3: score 1.5 is outside \[0, 1\]"):
        dm.raw_split("train")


def test_a_task_file_names_the_default_run_dir():
    from jsonargparse import Namespace

    from apm_lightning.training.cli import _run_name

    config = Namespace(
        data=Namespace(class_path="x.ClassificationDataModule", init_args=Namespace(task=str(EXAMPLE)))
    )
    assert _run_name(config).startswith("my_pairs-")
