"""Edge cases of `apm report`, `apm sweep` and the SQuAD v2.0 threshold (issue 10): SQuAD scores
are not scaled twice, synthetic-data runs never pool with real ones, a run without a CSV log or
a folder without runs is one line; a sweep whose every trial fails exits 2 with one line; the
no-answer threshold follows the official script and says when it cannot be tuned."""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

import pytest
from conftest import SQUAD, SQUAD_COUNTS

from apm_lightning.cli import main
from apm_lightning.data.squad import SQuADDataModule
from apm_lightning.metrics.squad import find_best_thresh, raw_scores_v2, squad_v2_scores, squad_v2_tuned

REPO = Path(__file__).resolve().parents[1]
TINY_SWEEP = str(REPO / "experiments" / "sweeps" / "tiny_rte.yaml")
SQUAD_V2 = SQUAD / "v2.0" / "train-v2.0.first11articles.json"
QUIET = ["--wandb_mode", "disabled"]

SQUAD_METRICS = {  # as `apm fit` of a v2.0 model writes them: the official scripts' 0-100 scale
    "exact": 88.2,
    "f1": 91.2,
    "main": 89.7,
    "HasAns_exact": 80.0,
    "HasAns_f1": 86.0,
    "NoAns_exact": 96.0,
    "NoAns_f1": 96.0,
    "best_exact": 88.2,
    "best_exact_thresh": -1.5,
    "best_f1": 91.2,
    "best_f1_thresh": -1.25,
    "null_threshold": -1.25,
}


def write_run(
    root: Path, name: str, task: str, seed: int, metrics: dict[str, float], source: str, csv_log: bool = True
) -> Path:
    """A run directory as `apm fit` leaves it: results.json (with data_source) and the CSV log."""
    run = root / name
    run.mkdir(parents=True)
    results = {
        "task": task,
        "metrics": metrics,
        "train_examples_per_second": 100.0,
        "train_wall_seconds": 5.0,
        "peak_rss_mb": 800.0,
        "data_source": source,
        "config": {
            "seed_everything": seed,
            "model": {"class_path": "x.TransformerClassifier", "init_args": {"backbone": "minilm"}},
        },
        "run_dir": str(run),
    }
    (run / "results.json").write_text(json.dumps(results))
    if csv_log:
        (run / "csv").mkdir()
        lines = ["epoch,step,train/loss,val/main", "0,1,0.9,", "0,2,0.5,", f"0,2,,{metrics['main']}"]
        (run / "csv" / "metrics.csv").write_text("\n".join(lines) + "\n")
    return run


def report(args: list[str], capsys) -> tuple[int, str, str]:
    rc = main(["report", *args, *QUIET])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


# ------------------------------------------------------------------ apm report
def test_report_scales_squad_once_and_keeps_synthetic_runs_apart(tmp_path, capsys):
    runs, out = tmp_path / "runs", tmp_path / "report"
    real = "local GLUE files: /data/glue/SST-2"
    write_run(runs, "sst2-s0", "sst2", 0, {"accuracy": 0.90, "main": 0.90}, real)
    write_run(runs, "sst2-s1", "sst2", 1, {"accuracy": 0.92, "main": 0.92}, "Hugging Face hub: nyu-mll/glue")
    write_run(runs, "demo", "sst2", 0, {"accuracy": 0.55, "main": 0.55}, "synthetic SST-2-style task (x)")
    write_run(runs, "squad", "squad_v2", 0, SQUAD_METRICS, "local SQuAD files: /data/squad/v2.0")
    rc, stdout, stderr = report([str(runs), "--out", str(out)], capsys)
    assert rc == 0 and stderr == ""
    markdown = (out / "report.md").read_text()
    # SQuAD's EM and F1 as results.json has them (not 8820.00 / 9119.00), GLUE's x100.
    assert "| squad_v2 | - | 1 | 89.70 | 89.70 | - | - | 88.20 | 91.20 |" in markdown
    # The two real SST-2 runs pool (hub and local files are the same data); the demo's do not.
    assert "| sst2 | - | 2 | 91.00 | 91.00 | 1.41 | 91.00 | - | - |" in markdown
    assert "| sst2 | synthetic | 1 | 55.00 | 55.00 | - | 55.00 | - | - |" in markdown
    assert "never pooled" in markdown
    with (out / "tasks.csv").open() as f:
        groups = {(r["task"], r["data"]): r for r in csv.DictReader(f)}
    assert set(groups) == {("sst2", ""), ("sst2", "synthetic"), ("squad_v2", "")}
    assert float(groups[("squad_v2", "")]["f1_median"]) == pytest.approx(91.2)  # as results.json
    with (out / "report.csv").open() as f:
        demo = next(r for r in csv.DictReader(f) if r["run"].endswith("demo"))
    assert demo["data"] == "synthetic"
    pngs = sorted(p.name for p in (out / "plots").iterdir())
    assert pngs == ["curves_squad_v2.png", "curves_sst2.png", "curves_sst2_synthetic_data.png", "scores.png"]


def test_report_without_csv_log_warns_and_a_folder_without_runs_is_one_line(tmp_path, capsys):
    runs, out = tmp_path / "runs", tmp_path / "report"
    write_run(runs, "a", "rte", 0, {"accuracy": 0.6, "main": 0.6}, "local GLUE files: x")
    write_run(runs, "b", "rte", 1, {"accuracy": 0.7, "main": 0.7}, "local GLUE files: x", csv_log=False)
    write_run(runs, "c", "mrpc", 0, {"f1": 0.8, "accuracy": 0.7, "main": 0.75}, "x", csv_log=False)
    (runs / "broken").mkdir()
    (runs / "broken" / "results.json").write_text("{not json")
    rc, _, stderr = report([str(runs), "--out", str(out)], capsys)
    assert rc == 0
    lines = stderr.splitlines()
    assert len(lines) == 3 and all(x.startswith("apm report: warning: ") for x in lines), stderr
    assert "b has no csv/metrics.csv" in stderr and "c has no csv/metrics.csv" in stderr
    assert "broken/results.json: unreadable results.json" in stderr
    assert (out / "plots" / "curves_rte.png").is_file()  # the run with a log
    assert not (out / "plots" / "curves_mrpc.png").exists()  # no run with a log: no plot
    assert "| rte | 2 | 65.00 |" in (out / "report.md").read_text()

    empty, out2 = tmp_path / "empty", tmp_path / "report2"
    (empty / "sub").mkdir(parents=True)
    rc, stdout, stderr = report([str(empty), "--out", str(out2)], capsys)
    assert rc == 2 and stdout == "" and len(stderr.splitlines()) == 1
    assert stderr.startswith("apm: error: no finished run in ") and not out2.exists()


# ------------------------------------------------------------------ apm sweep
def test_sweep_help_says_fit_options_can_be_appended(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["sweep", "--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    assert "[fit options" in text.splitlines()[0]
    assert "apm sweep -c experiments/sweeps/tiny_rte.yaml --n-trials 4 --data.data_dir" in text


def test_sweep_whose_trials_all_fail_exits_2_with_the_first_error(tmp_path, monkeypatch, capfd):
    """The README's sweep without --data.data_dir, offline: every trial fails on the data."""
    monkeypatch.delenv("APM_DATA_DIR", raising=False)
    monkeypatch.delenv("APM_DEBUG", raising=False)
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "sweep"
    cmd = ["sweep", "-c", TINY_SWEEP, "--out", str(out), "--launcher", "inprocess", *QUIET]
    no_data = "GLUE task rte: no local copy found and offline mode is set"

    def run(n: int) -> tuple[int, str, str]:
        rc = main([*cmd, "--n-trials", str(n)])
        captured = capfd.readouterr()
        return rc, captured.out, captured.err

    rc, stdout, stderr = run(1)
    assert rc == 2 and "Traceback" not in stdout + stderr
    assert stdout.count("FAILED") == 1 and not (out / "trial-0000" / "results.json").exists()
    error = stderr.splitlines()[-1]
    assert error.startswith("apm: error: sweep tiny_rte: all 1 trial(s) this worker ran failed; trial 0: ")
    assert no_data in error and "--data.data_dir" in error

    # Again: the study has its one (failed) trial, nothing runs, and it still is no result.
    rc, stdout, stderr = run(1)
    assert rc == 2 and "FAILED" not in stdout
    assert "1 trial(s) failed, none completed (failed trials count toward --n-trials" in stderr

    # A larger total: two more trials fail the same way, and the worker stops there.
    rc, stdout, stderr = run(6)
    assert rc == 2 and "Traceback" not in stdout + stderr and stdout.count("FAILED") == 2
    assert "trials 1 and 2 failed the same way and none has completed; trial 1: " in stderr
    summary = json.loads((out / "best.json").read_text())  # the record of the study stays
    assert summary["trials"]["FAIL"] == 3 and summary["best"] is None


# ------------------------------------------------------------------ SQuAD v2.0 threshold
def official_find_best_thresh(preds, scores, na_probs, qid_to_has_ans):
    """``find_best_thresh`` of the official evaluate-v2.0.py, as it is written there (indented by 4)."""
    num_no_ans = sum(1 for k in qid_to_has_ans if not qid_to_has_ans[k])
    cur_score = num_no_ans
    best_score = cur_score
    best_thresh = 0.0
    qid_list = sorted(na_probs, key=lambda k: na_probs[k])
    for _i, qid in enumerate(qid_list):  # (`i` there, unused)
        if qid not in scores:
            continue
        if qid_to_has_ans[qid]:
            diff = scores[qid]
        else:
            if preds[qid]:
                diff = -1
            else:
                diff = 0
        cur_score += diff
        if cur_score > best_score:
            best_score = cur_score
            best_thresh = na_probs[qid]
    return 100.0 * best_score / len(scores), best_thresh


def test_threshold_search_is_the_official_one_on_random_cases():
    rng = random.Random(0)
    words = ["cat", "dog", "the cat", "a dog sat", "eel", ""]
    for _ in range(300):
        n = rng.randint(1, 8)
        golds = {f"q{i}": rng.choice([[], [rng.choice(words[:-1])]]) for i in range(n)}
        preds = {q: rng.choice(words) for q in golds}
        # Null odds in logit units (negative ones too), with ties.
        odds = {q: rng.choice([-3.43, -1.0, 0.0, 0.5, 2.0, rng.uniform(-5, 5)]) for q in golds}
        has_ans = {q: bool(g) for q, g in golds.items()}
        for raw in raw_scores_v2(golds, preds):
            assert find_best_thresh(preds, raw, odds, has_ans) == official_find_best_thresh(
                preds, raw, odds, has_ans
            )
        # The model's tuned threshold is the official best_f1_thresh, whatever the case.
        answers = {q: p or "x" for q, p in preds.items()}  # the best span is never empty
        scores, threshold = squad_v2_tuned(golds, answers, odds)
        official = official_find_best_thresh(answers, raw_scores_v2(golds, answers)[1], odds, has_ans)
        assert (scores["best_f1"], threshold) == official and scores["best_f1_thresh"] == threshold


def test_threshold_where_answering_never_helps_is_the_official_zero():
    """Two unanswerable questions and a wrong answer: answering nothing scores 2/3 and no
    threshold beats it; the official script reports 0.0 (apm used to report -3.43)."""
    golds = {"a": [], "b": [], "c": ["cat"]}
    answers = {"a": "x", "b": "y", "c": "dog"}
    odds = {"a": -3.43, "b": 1.5, "c": -2.0}
    official = squad_v2_scores(golds, answers, odds)
    assert official["best_f1"] == pytest.approx(200 / 3) and official["best_f1_thresh"] == 0.0
    scores, threshold = squad_v2_tuned(golds, answers, odds)
    assert threshold == scores["best_f1_thresh"] == scores["best_exact_thresh"] == 0.0
    # The model's predictions at 0.0: "" above it (b), the answers at or below it (a, c).
    assert scores["exact"] == scores["f1"] == pytest.approx(100 / 3) and scores["NoAns_exact"] == 50.0
    assert scores["best_f1"] == pytest.approx(200 / 3)  # the script's number, as it prints it


def test_threshold_where_answering_helps_is_the_last_rise():
    golds = {"a": [], "b": ["cat"], "c": ["dog"], "d": []}
    answers = {"a": "x", "b": "cat", "c": "big dog", "d": "y"}
    odds = {"b": -2.5, "a": -1.0, "c": 0.25, "d": 4.0}
    # From 2 (a, d right): b +1 -> 3 (t=-2.5); a -1 -> 2; c +2/3 (F1) -> 2.67; d -1.
    scores, threshold = squad_v2_tuned(golds, answers, odds)
    assert threshold == -2.5 and scores["best_f1"] == pytest.approx(75.0)
    assert scores["f1"] == pytest.approx(75.0) and scores["HasAns_f1"] == 50.0


def test_threshold_without_unanswerable_questions_answers_all():
    golds = {"a": ["cat"], "b": ["dog"], "c": ["eel"]}
    answers = {"a": "cat", "b": "cow", "c": "eel"}
    odds = {"a": -2.0, "b": 1.0, "c": 3.0}
    scores, threshold = squad_v2_tuned(golds, answers, odds)
    assert threshold == 3.0 and "NoAns_total" not in scores  # the highest odds: answer everything


def _v2_file(path: Path, unanswerable_in_dev: bool) -> Path:
    def article(title: str, impossible: bool) -> dict:
        context = f"{title} has a red cat."
        qas = [
            {
                "id": f"{title}-1",
                "question": "What colour?",
                "answers": [{"text": "red", "answer_start": len(title) + 7}],
                "is_impossible": False,
            }
        ]
        if impossible:
            qas.append({"id": f"{title}-2", "question": "Who?", "answers": [], "is_impossible": True})
        return {"title": title, "paragraphs": [{"context": context, "qas": qas}]}

    data = [article("Train", True), article("Dev", unanswerable_in_dev)]
    path.write_text(json.dumps({"version": "v2.0", "data": data}))
    return path


def test_validation_without_unanswerable_questions_warns_in_one_line(tmp_path, capsys):
    no_abstain = _v2_file(tmp_path / "a.json", unanswerable_in_dev=False)
    dm = SQuADDataModule(train_file=str(no_abstain), split_by_article=1)
    dm.check("fit")
    assert dm.squad_version == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("apm: warning: none of the 1 SQuAD v2.0 validation questions is unanswerable")
    assert "--data.split_by_article" in line
    dm.check("test")  # the threshold is not tuned on test: no warning
    assert capsys.readouterr().err == ""
    fine = _v2_file(tmp_path / "b.json", unanswerable_in_dev=True)
    SQuADDataModule(train_file=str(fine), split_by_article=1).check("validate")
    assert capsys.readouterr().err == ""


def test_the_real_v2_file_split_after_six_articles_warns(capsys):
    """Articles 7-11 of the offline v2.0 file have no unanswerable question; 5 and 6 have."""
    SQuADDataModule(train_file=str(SQUAD_V2), split_by_article=6).check("fit")
    questions = SQUAD_COUNTS["v2_after_six_articles"]
    assert f"apm: warning: none of the {questions} SQuAD v2.0 validation questions" in capsys.readouterr().err
    SQuADDataModule(train_file=str(SQUAD_V2), split_by_article=4).check("fit")
    assert capsys.readouterr().err == ""
