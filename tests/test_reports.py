"""`apm report`: tables from results.json files (Markdown, CSV), plots, and the W&B table."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from apm_lightning.cli import main
from apm_lightning.reports.tables import aggregate, markdown_table, metric_columns, run_row


def fake_run(root: Path, task: str, seed: int, metrics: dict[str, float]) -> Path:
    """A run directory as `apm fit` leaves it: results.json and the CSV log."""
    run = root / task / f"seed{seed}"
    (run / "csv").mkdir(parents=True)
    results = {
        "task": task,
        "metrics": metrics,
        "train_examples_per_second": 123.4,
        "train_wall_seconds": 10.0,
        "peak_rss_mb": 900.0,
        "config": {
            "seed_everything": seed,
            "model": {"class_path": "x.TransformerClassifier", "init_args": {"backbone": "minilm"}},
        },
        "run_dir": "/elsewhere/moved",
    }
    (run / "results.json").write_text(json.dumps(results))
    lines = ["epoch,step,train/loss,val/main"]
    for step in range(1, 7):
        lines.append(f"0,{step},{1.0 / step:.3f},")
        if step % 3 == 0:
            lines.append(f"0,{step},,{metrics['main'] * step / 6:.4f}")
    (run / "csv" / "metrics.csv").write_text("\n".join(lines) + "\n")
    return run


def test_tables_from_results():
    rows = [
        run_row({"task": "rte", "metrics": {"accuracy": a, "main": a}, "config": {"seed_everything": s}})
        for s, a in enumerate([0.6, 0.7, 0.65])
    ]
    rows.append(run_row({"task": "mrpc", "metrics": {"f1": 0.9, "accuracy": 0.8, "main": 0.85}}))
    assert metric_columns(rows) == ["accuracy", "f1", "main"]
    by_task = {r["task"]: r for r in aggregate(rows)}
    assert by_task["rte"]["n"] == 3 and by_task["rte"]["main_median"] == pytest.approx(0.65)
    assert by_task["rte"]["main_std"] == pytest.approx(0.05) and by_task["mrpc"]["main_std"] is None
    table = markdown_table(aggregate(rows), ["task", "n", "main_median", "main_std"]).splitlines()
    assert table[0] == "| task | n | main_median | main_std |" and table[1] == "|---|---:|---:|---:|"
    assert table[2] == "| rte | 3 | 65.00 | 5.00 |" and table[3] == "| mrpc | 1 | 85.00 | - |"


def test_report_command(tmp_path, monkeypatch):
    runs = tmp_path / "runs"
    for seed, acc in enumerate([0.6, 0.7, 0.66]):
        fake_run(runs, "rte", seed, {"accuracy": acc, "main": acc})
    mrpc = fake_run(runs, "mrpc", 0, {"f1": 0.9, "accuracy": 0.8, "main": 0.85})
    out = tmp_path / "report"
    monkeypatch.delenv("WANDB_MODE", raising=False)  # the suite's default would turn W&B off
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    assert main(["report", str(runs / "rte"), str(mrpc), "--out", str(out), "--wandb_mode", "offline"]) == 0
    with (out / "report.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4 and {r["task"] for r in rows} == {"rte", "mrpc"}
    assert rows[0]["run_dir"] == str((runs / "rte" / "seed0").resolve())  # where it is, not was
    markdown = (out / "report.md").read_text()
    assert "| rte | 3 | 66.00 | 65.33 |" in markdown  # median, mean x100
    for png in ("scores.png", "curves_rte.png", "curves_mrpc.png"):
        data = (out / "plots" / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000, png
    offline = list((out / "wandb").glob("offline-run-*"))
    assert len(offline) == 1 and list(offline[0].glob("*.wandb"))
    assert main(["report", str(tmp_path / "nothing-here"), "--out", str(out)]) == 2
