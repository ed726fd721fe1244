"""`apm glue`: GLUE score arithmetic on published tables, submission files for every task, and
the runner end to end with the tiny model (missing data, a failed seed, continuing a run)."""

from __future__ import annotations

import json
import random
import zipfile
from pathlib import Path

import pytest
from conftest import GLUE, GLUE_ROWS, REAL_DATA

from apm_lightning.cli import main
from apm_lightning.core.errors import APMError
from apm_lightning.metrics.glue_score import glue_score, glue_score_from_table, summarize, task_score
from apm_lightning.runners import submission
from apm_lightning.runners.glue import glue_main

REPO = Path(__file__).resolve().parents[1]
TINY = str(REPO / "experiments" / "models" / "tiny_bert.yaml")


# Tiny models run fastest on one thread (conftest.one_thread).
pytestmark = pytest.mark.usefixtures("one_thread")


# GLUE test-server results as published on the leaderboard (x100); score 78.3 and 80.5.
BERT_BASE = {
    "cola": {"mcc": 52.1},
    "sst2": {"accuracy": 93.5},
    "mrpc": {"f1": 88.9, "accuracy": 84.8},
    "stsb": {"pearson": 87.1, "spearman": 85.8},
    "qqp": {"f1": 71.2, "accuracy": 89.2},
    "mnli": {"accuracy_matched": 84.6, "accuracy_mismatched": 83.4},
    "qnli": {"accuracy": 90.5},
    "rte": {"accuracy": 66.4},
    "wnli": {"accuracy": 65.1},
}
BERT_LARGE = {
    "cola": {"mcc": 60.5},
    "sst2": {"accuracy": 94.9},
    "mrpc": {"f1": 89.3, "accuracy": 85.4},
    "stsb": {"pearson": 87.6, "spearman": 86.5},
    "qqp": {"f1": 72.1, "accuracy": 89.3},
    "mnli": {"accuracy_matched": 86.7, "accuracy_mismatched": 85.9},
    "qnli": {"accuracy": 92.7},
    "rte": {"accuracy": 70.1},
    "wnli": {"accuracy": 65.1},
}


def test_glue_score_of_published_tables():
    base = glue_score_from_table(BERT_BASE)
    assert round(base["score"], 1) == 78.3 and base["missing"] == []
    # Two-metric tasks count once: 640.0 over the eight tasks other than WNLI.
    assert base["score_without_wnli"] == pytest.approx(80.0)
    assert round(glue_score_from_table(BERT_LARGE)["score"], 1) == 80.5


def test_two_metric_tasks_are_averaged_first():
    assert task_score("mrpc", {"f1": 0.9, "accuracy": 0.8, "main": 0.0}) == pytest.approx(0.85)
    assert task_score("mnli", {"accuracy_matched": 0.8, "accuracy_mismatched": 0.7}) == pytest.approx(0.75)
    assert task_score("stsb", {"pearson": 0.88, "spearman": 0.86}) == pytest.approx(0.87)
    with pytest.raises(KeyError):
        task_score("qqp", {"accuracy": 0.9})  # F1 is missing: never score half a task


def test_missing_task_is_reported_not_averaged_away():
    scores = {t: task_score(t, m) for t, m in BERT_BASE.items() if t != "stsb"}
    result = glue_score(scores)
    assert result["score"] is None and result["score_without_wnli"] is None
    assert result["missing"] == ["stsb"]
    assert result["partial_score"] == pytest.approx((705.1 - 86.45) / 8)
    assert result["partial_score_without_wnli"] == pytest.approx((705.1 - 86.45 - 65.1) / 7)
    assert glue_score({})["missing"] == list(BERT_BASE)


def test_summary_statistics():
    stats = summarize([0.60, 0.70, 0.62, 0.58])
    assert stats["n"] == 4 and stats["median"] == pytest.approx(0.61)
    assert stats["mean"] == pytest.approx(0.625)
    assert stats["std"] == pytest.approx(0.052599, abs=1e-6)  # sample (n-1) standard deviation
    assert summarize([0.5])["std"] is None and summarize([])["median"] is None


def test_runner_options():
    from apm_lightning.core.errors import APMError
    from apm_lightning.runners.glue import model_args, parse_overrides, parse_tasks

    assert parse_tasks("ax,SST-2,mnli,sst2") == ["sst2", "mnli", "ax"]  # AX after its MNLI model
    with pytest.raises(APMError, match="unknown GLUE task 'foo'"):
        parse_tasks("cola,foo")
    assert parse_overrides(["--trainer.max_epochs 2", "sst2:--data.max_train_samples 2000"]) == {
        None: ["--trainer.max_epochs", "2"],
        "sst2": ["--data.max_train_samples", "2000"],
    }
    assert model_args("minilm") == ["--model.backbone", "minilm"]
    assert model_args(TINY) == ["-c", TINY]
    with pytest.raises(APMError, match="model config not found"):
        model_args("missing.yaml")


def test_an_override_may_change_only_for_tasks_without_runs(tmp_path):
    """A grid folder grows task by task: SST-2 at one epoch may be added after CoLA's runs
    finished, but an option that would reach a task with runs is refused (nothing mixed)."""
    from apm_lightning.core.errors import APMError
    from apm_lightning.runners.glue import GlueRunner
    from apm_lightning.runners.glue_args import build_parser

    out = tmp_path / "out"

    def check(*override: str) -> None:
        argv = ["--model", TINY, "--tasks", "cola,sst2", "--out", str(out)]
        argv += [w for o in override for w in ("--override", o)]
        GlueRunner(build_parser(None).parse_args(argv), []).check_settings()

    check()
    (out / "runs" / "cola" / "seed0").mkdir(parents=True)
    check("sst2:--trainer.max_epochs 1")  # SST-2 has no runs yet
    settings = json.loads((out / "settings.json").read_text())
    assert settings["overrides"] == ["sst2:--trainer.max_epochs 1"]
    (out / "runs" / "sst2" / "seed0").mkdir(parents=True)
    for changed, named in [
        (["sst2:--trainer.max_epochs 2"], "sst2"),  # SST-2 has runs now
        (["sst2:--trainer.max_epochs 1", "cola:--data.batch_size 8"], "cola"),
        (["sst2:--trainer.max_epochs 1", "--data.batch_size 8"], "cola, sst2"),  # every task
        ([], "sst2"),
    ]:
        with pytest.raises(
            APMError, match=rf"other overrides \(for {named}\) \(see .*settings.json\); use another --out"
        ):
            check(*changed)
    assert json.loads((out / "settings.json").read_text()) == settings  # refusals write nothing


# --------------------------------------------------------------------------- submissions
VOCAB = {
    "CoLA.tsv": {"0", "1"},
    "SST-2.tsv": {"0", "1"},
    "MRPC.tsv": {"0", "1"},
    "QQP.tsv": {"0", "1"},
    "WNLI.tsv": {"0", "1"},
    "MNLI-m.tsv": {"entailment", "neutral", "contradiction"},
    "MNLI-mm.tsv": {"entailment", "neutral", "contradiction"},
    "AX.tsv": {"entailment", "neutral", "contradiction"},
    "QNLI.tsv": {"entailment", "not_entailment"},
    "RTE.tsv": {"entailment", "not_entailment"},
    "STS-B.tsv": None,
}


def fake_predictions(folder: Path, rows: dict[str, int] | None = None) -> dict[str, Path]:
    """What `apm predict` writes, for every task, with the official row counts."""
    rng = random.Random(0)
    files = {}
    for name, (task, split) in submission.SERVER_FILES.items():
        vocab = sorted(VOCAB[name]) if VOCAB[name] else None
        lines = ["index\tprediction"]
        for i in range((rows or submission.OFFICIAL_ROWS)[name]):
            lines.append(f"{i}\t{rng.uniform(0, 5):.3f}" if vocab is None else f"{i}\t{rng.choice(vocab)}")
        files[name] = folder / submission.prediction_file(task, split)
        files[name].write_text("\n".join(lines) + "\n")
    return files


def test_label_vocabulary_per_server_file():
    assert set(submission.SERVER_FILES) == set(VOCAB)
    for name, vocab in VOCAB.items():
        labels = submission.label_vocabulary(name)
        assert (labels is None) if vocab is None else set(labels) == vocab, name


def test_submission_for_every_task(tmp_path):
    files = fake_predictions(tmp_path)
    report = submission.write_submission(files, tmp_path / "submission.zip")
    assert report["complete"] and report["warnings"] == []
    with zipfile.ZipFile(tmp_path / "submission.zip") as archive:
        assert sorted(archive.namelist()) == sorted(submission.SERVER_FILES)
        for name, rows in submission.OFFICIAL_ROWS.items():
            lines = archive.read(name).decode().splitlines()
            assert lines[0] == "index\tprediction" and len(lines) == rows + 1
            values = {x.split("\t")[1] for x in lines[1:]}
            if VOCAB[name] is None:
                assert all(0.0 <= float(v) <= 5.0 for v in values)
            else:
                assert values <= VOCAB[name]


def test_label_names_are_respelled_for_the_server(tmp_path):
    """apm predict writes label names (negative/positive); the server wants 0/1 for SST-2."""
    files = fake_predictions(tmp_path)
    lines = files["SST-2.tsv"].read_text().splitlines()
    names = {"0": "negative", "1": "positive"}
    files["SST-2.tsv"].write_text(
        "\n".join([lines[0], *(f"{i}\t{names[p]}" for i, p in (x.split("\t") for x in lines[1:]))]) + "\n"
    )
    report = submission.write_submission(files, tmp_path / "submission.zip")
    assert report["complete"]
    with zipfile.ZipFile(tmp_path / "submission.zip") as archive:
        assert archive.read("SST-2.tsv").decode().splitlines() == lines  # back to 0/1, row for row
        assert archive.read("RTE.tsv").decode() == files["RTE.tsv"].read_text()


@pytest.mark.parametrize(
    "name,edit,problem",
    [
        ("CoLA.tsv", lambda ls: ["id\tlabel", *ls[1:]], "header"),
        (
            "CoLA.tsv",
            lambda ls: [*ls[:5], "4\tgood", *ls[6:]],
            "is not one of unacceptable, acceptable, 0, 1",
        ),
        ("RTE.tsv", lambda ls: [*ls[:5], "4\t1", *ls[6:]], "is not one of entailment, not_entailment"),
        ("STS-B.tsv", lambda ls: [*ls[:5], "4\tnan", *ls[6:]], "is not a number"),
        ("WNLI.tsv", lambda ls: ls[:-1], "145 rows, the official test file has 146"),
        ("MRPC.tsv", lambda ls: [*ls[:-1], "7\t1"], "repeated indices"),
    ],
)
def test_bad_submission_files_are_left_out(tmp_path, name, edit, problem):
    files = fake_predictions(tmp_path)
    lines = files[name].read_text().splitlines()
    files[name].write_text("\n".join(edit(lines)) + "\n")
    report = submission.write_submission(files, tmp_path / "submission.zip")
    assert not report["complete"] and report["files"][name]["status"] == "invalid"
    assert problem in " ".join(report["files"][name]["problems"])
    with zipfile.ZipFile(tmp_path / "submission.zip") as archive:
        assert name not in archive.namelist() and len(archive.namelist()) == 10


def test_local_test_files_have_the_official_row_counts():
    from apm_lightning.runners.glue import local_test_ids, task_folder

    for task in ("cola", "sst2", "mrpc", "rte", "wnli", "ax"):
        for name, ids in local_test_ids(task, task_folder(task, str(GLUE))).items():
            # The generated files are not the official size: they hold the rows conftest names.
            rows = submission.OFFICIAL_ROWS[name] if REAL_DATA else GLUE_ROWS[task, "test"]
            assert len(ids) == len(set(ids)) == rows, name


# --------------------------------------------------------------------------- the runner
def test_glue_runner_end_to_end(tmp_path, monkeypatch):
    """RTE and MNLI (fixture files) with two seeds, AX from the MNLI model, CoLA without data;
    one RTE seed crashes and a second invocation runs only that one."""
    from test_cli_glue import write_fixture_glue

    from apm_lightning.runners import glue as runner
    from apm_lightning.runners.launch import RunFailed

    data = write_fixture_glue(tmp_path / "data")
    for folder in ("RTE", "diagnostic"):
        (data / folder).symlink_to(GLUE / folder)
    out = tmp_path / "out"
    args = ["glue", "--model", TINY, "--tasks", "rte,ax,mnli,cola", "--seeds", "2", "--data-dir", str(data)]
    args += ["--out", str(out), "--launcher", "inprocess", "--max-train-samples", "16", "--max-eval-samples"]
    args += ["16", "--epochs", "1", "--data.batch_size", "8", "--data.max_seq_length", "32"]
    args += ["--wandb_mode", "disabled", "--trainer.enable_progress_bar", "false"]
    args += ["--trainer.enable_model_summary", "false", "--trainer.num_sanity_val_steps", "0"]
    real, calls, crash = runner.run_apm, [], [True]

    def crash_rte_seed1(cmd, *rest):
        calls.append(cmd[0] + ":" + cmd[cmd.index("--trainer.default_root_dir") + 1])
        if crash[0] and cmd[cmd.index("--trainer.default_root_dir") + 1].endswith("rte/seed1"):
            raise RunFailed("RuntimeError: CUDA out of memory")
        return real(cmd, *rest)

    monkeypatch.setattr(runner, "run_apm", crash_rte_seed1)
    assert main(args) == 0
    record = json.loads((out / "glue_score.json").read_text())
    glue = record["glue"]
    assert glue["score"] is None and glue["tasks_scored"] == ["mnli", "rte"]
    assert "no data" in glue["missing"]["cola"] and glue["missing"]["sst2"] == "not in --tasks"
    assert record["tasks"]["rte"]["status"] == "partial" and record["tasks"]["rte"]["n"] == 1
    assert record["tasks"]["mnli"]["n"] == 2 and record["tasks"]["ax"]["status"] == "ok"
    rte = json.loads((out / "runs/rte/seed0/results.json").read_text())
    mnli = [json.loads((out / f"runs/mnli/seed{s}/results.json").read_text()) for s in (0, 1)]
    assert record["tasks"]["rte"]["score_median"] == pytest.approx(rte["metrics"]["main"])
    expected = sorted(m["metrics"]["main"] for m in mnli)
    assert record["tasks"]["mnli"]["score_median"] == pytest.approx(sum(expected) / 2)
    assert glue["partial_score"] == pytest.approx((rte["metrics"]["main"] + sum(expected) / 2) / 2)
    rows = (out / "results.csv").read_text().splitlines()
    assert len(rows) == 5 and rows[0].startswith("task,seed,status,score,")
    assert sum(",failed," in r for r in rows) == 1
    markdown = (out / "results.md").read_text()
    assert "GLUE score: n/a" in markdown and "cola (no data" in markdown
    sub = record["submission"]
    assert sorted(sub["included"]) == ["AX.tsv", "MNLI-m.tsv", "MNLI-mm.tsv", "RTE.tsv"]
    assert sub["files"]["RTE.tsv"]["rows"] == GLUE_ROWS["rte", "test"]
    assert sub["files"]["AX.tsv"]["rows"] == GLUE_ROWS["ax", "test"]
    assert any(w.startswith("MNLI-m.tsv: 24 rows") for w in sub["warnings"])  # fixture, not official
    with zipfile.ZipFile(out / "submission.zip") as archive:
        ax = archive.read("AX.tsv").decode().splitlines()
    assert ax[0] == "index\tprediction" and {x.split("\t")[1] for x in ax[1:]} <= VOCAB["AX.tsv"]

    # Again: only the crashed run trains; finished runs and predictions are kept.
    calls.clear()
    crash[0] = False
    assert main(args) == 0
    assert [c for c in calls if c.startswith("fit:")] == [f"fit:{out / 'runs/rte/seed1'}"]
    record = json.loads((out / "glue_score.json").read_text())
    assert record["tasks"]["rte"]["status"] == "ok" and record["tasks"]["rte"]["n"] == 2
    # Other settings in the same folder are refused rather than mixed into its tables.
    changed = list(args)
    changed[changed.index("--epochs") + 1] = "2"
    assert main(changed) == 2


def test_parallel_jobs_share_the_cores_and_take_one_gpu_each(monkeypatch):
    """``--jobs``' per-run environment: the cores split between the jobs unless the thread count
    is set already, one of several visible GPUs per job, and nothing at all for one job."""
    from apm_lightning.runners.launch import slot_environment

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("MKL_NUM_THREADS", raising=False)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,5")
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(8)))
    assert slot_environment(0, 1) == {}
    assert slot_environment(0, 2) == {
        "OMP_NUM_THREADS": "4",
        "MKL_NUM_THREADS": "4",
        "CUDA_VISIBLE_DEVICES": "2",
    }
    assert (
        slot_environment(1, 3)["CUDA_VISIBLE_DEVICES"] == "5"
        and slot_environment(2, 3)["OMP_NUM_THREADS"] == "2"
    )
    assert slot_environment(0, 16)["OMP_NUM_THREADS"] == "1"  # more jobs than cores: one thread each
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")  # one GPU: shared, left as it is
    assert slot_environment(1, 2) == {"MKL_NUM_THREADS": "4"}


def test_jobs_above_one_need_child_processes(tmp_path):
    args = ["--tasks", "rte", "--out", str(tmp_path / "out"), "--jobs", "2", "--launcher", "inprocess"]
    with pytest.raises(APMError, match="--jobs above 1 .* use --launcher subprocess"):
        glue_main(args)
    with pytest.raises(APMError, match="--jobs must be at least 1"):
        glue_main(["--tasks", "rte", "--out", str(tmp_path / "out"), "--jobs", "0"])
    assert not (tmp_path / "out").exists()
