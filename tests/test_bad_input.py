"""Every bad input gets one clear line, exit status 2, no traceback, and nothing overwritten."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from conftest import GLUE
from run_options import one_line_error

from apm_lightning.cli import main

REPO = Path(__file__).resolve().parents[1]
TINY = str(REPO / "experiments" / "models" / "tiny_bert.yaml")
BILSTM = str(REPO / "experiments" / "models" / "bilstm.yaml")


def run_fit(task: str, data_dir: Path, run_dir: Path, *extra, model: str = TINY) -> int:
    return main(
        [
            "fit",
            "-c",
            str(REPO / f"experiments/glue/{task}.yaml"),
            "-c",
            model,
            "--data.data_dir",
            str(data_dir),
            "--data.max_train_samples",
            "16",
            "--data.max_eval_samples",
            "16",
            "--data.batch_size",
            "8",
            "--trainer.max_epochs",
            "1",
            "--trainer.default_root_dir",
            str(run_dir),
            "--wandb_mode",
            "disabled",
            "--trainer.enable_progress_bar",
            "false",
            "--trainer.enable_model_summary",
            "false",
            *map(str, extra),
        ]
    )


def sst2_copy(tmp_path: Path, train_lines: list[str] | None = None, dev: str | None = None) -> Path:
    """A GLUE root with an SST-2 folder: real dev/test files, and the given train lines."""
    root = tmp_path / "glue"
    (root / "SST-2").mkdir(parents=True)
    for name in ("dev.tsv", "test.tsv"):
        shutil.copy(GLUE / "SST-2" / name, root / "SST-2" / name)
    real = (GLUE / "SST-2" / "train.tsv").read_text(encoding="utf-8").splitlines()[:41]
    (root / "SST-2" / "train.tsv").write_text("\n".join(train_lines or real) + "\n", encoding="utf-8")
    if dev is not None:
        (root / "SST-2" / "dev.tsv").write_text(dev, encoding="utf-8")
    return root


def real_sst2_lines() -> list[str]:
    return (GLUE / "SST-2" / "train.tsv").read_text(encoding="utf-8").splitlines()[:41]


def test_unknown_task(tmp_path, capsys):
    assert run_fit("sst2", GLUE, tmp_path / "run", "--data.task", "sst3") == 2
    line = one_line_error(capsys)
    assert "unknown GLUE task 'sst3'" in line and "cola" in line
    assert not (tmp_path / "run").exists()


def test_missing_file(tmp_path, capsys):
    root = sst2_copy(tmp_path)
    (root / "SST-2" / "dev.tsv").unlink()
    assert run_fit("sst2", root, tmp_path / "run") == 2
    assert str(root / "SST-2" / "dev.tsv") in one_line_error(capsys)


def test_missing_task_folder(tmp_path, capsys):
    assert run_fit("qqp", GLUE, tmp_path / "run") == 2
    line = one_line_error(capsys)
    assert "QQP" in line and str(GLUE) in line


def test_wrong_column_count(tmp_path, capsys):
    lines = real_sst2_lines()
    lines[7] = lines[7] + "\textra"
    root = sst2_copy(tmp_path, lines)
    assert run_fit("sst2", root, tmp_path / "run") == 2
    line = one_line_error(capsys)
    assert "train.tsv, line 8" in line and "expected 2" in line and "found 3" in line


def test_label_outside_label_set(tmp_path, capsys):
    lines = real_sst2_lines()
    lines[12] = lines[12].rsplit("\t", 1)[0] + "\t2"
    root = sst2_copy(tmp_path, lines)
    assert run_fit("sst2", root, tmp_path / "run") == 2
    line = one_line_error(capsys)
    assert "line 13" in line and "label '2'" in line and "0, 1" in line


def test_non_numeric_stsb_score(tmp_path, capsys):
    header = "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore"
    good = "0\tmain-captions\tMSRvid\t2012test\t0001\tnone\tnone\ta plane takes off .\tan air plane is taking off .\t5.000"
    bad = good.replace("5.000", "five").replace("0\t", "1\t", 1)
    folder = tmp_path / "glue" / "STS-B"
    folder.mkdir(parents=True)
    (folder / "train.tsv").write_text("\n".join([header, good, bad]) + "\n")
    (folder / "dev.tsv").write_text("\n".join([header, good]) + "\n")
    assert run_fit("stsb", tmp_path / "glue", tmp_path / "run") == 2
    line = one_line_error(capsys)
    assert "train.tsv, line 3" in line and "'five' is not a number" in line


def test_empty_split(tmp_path, capsys):
    root = sst2_copy(tmp_path, dev="sentence\tlabel\n")
    assert run_fit("sst2", root, tmp_path / "run") == 2
    line = one_line_error(capsys)
    assert "dev.tsv" in line and "empty" in line


def test_corrupt_checkpoint_and_nothing_overwritten(tmp_path, capsys):
    run = tmp_path / "run"
    assert run_fit("rte", GLUE, run) == 0
    capsys.readouterr()
    ckpt = run / "checkpoints" / "last.ckpt"
    broken = tmp_path / "broken.ckpt"
    broken.write_bytes(ckpt.read_bytes()[:5000])
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    assert run_fit("rte", GLUE, run, "--ckpt_path", broken) == 2
    line = one_line_error(capsys)
    assert "broken.ckpt could not be read" in line
    after = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    assert after == before


def test_checkpoint_from_another_task(tmp_path, capsys):
    assert run_fit("rte", GLUE, tmp_path / "rte") == 0
    capsys.readouterr()
    ckpt = tmp_path / "rte" / "checkpoints" / "last.ckpt"
    assert run_fit("wnli", GLUE, tmp_path / "wnli", "--ckpt_path", ckpt) == 2
    line = one_line_error(capsys)
    assert "trained on task 'rte', not 'wnli'" in line


def test_checkpoint_from_another_model(tmp_path, capsys):
    assert run_fit("rte", GLUE, tmp_path / "lstm", model=BILSTM) == 0
    capsys.readouterr()
    ckpt = tmp_path / "lstm" / "checkpoints" / "last.ckpt"
    rc = main(
        [
            "validate",
            "-c",
            str(REPO / "experiments/glue/rte.yaml"),
            "-c",
            TINY,
            "--data.data_dir",
            str(GLUE),
            "--data.max_eval_samples",
            "8",
            "--ckpt_path",
            str(ckpt),
            "--wandb_mode",
            "disabled",
            "--trainer.default_root_dir",
            str(tmp_path / "v"),
        ]
    )
    assert rc == 2
    assert "holds a BiLSTMClassifier model, not a TransformerClassifier" in one_line_error(capsys)


def test_subprocess_exit_code_and_single_line():
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"}
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "apm_lightning",
            "fit",
            "-c",
            str(REPO / "experiments/glue/sst2.yaml"),
            "--data.task",
            "nope",
            "--data.data_dir",
            str(GLUE),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert out.returncode == 2
    assert out.stderr.strip().splitlines()[-1].startswith("apm: error: unknown GLUE task 'nope'")
    assert "Traceback" not in out.stderr


def test_help_does_not_import_torch():
    code = (
        "import sys; from apm_lightning.cli import main; main(['--help']); assert 'torch' not in sys.modules"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "fit" in out.stdout and "export" in out.stdout
