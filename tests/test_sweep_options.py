"""The sweep file's sampler and pruner are real Optuna objects with the options written (TPE's
constant liar included), unknown names and options are one line, and a study apm ran opens in
Optuna's own tools: the ``optuna`` CLI and ``optuna-dashboard``."""

from __future__ import annotations

import importlib.util
import json
import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import optuna
import pytest
import yaml

from apm_lightning.cli import main
from apm_lightning.core.errors import APMError
from apm_lightning.core.library_compat import tpe_settings
from apm_lightning.runners.sweep_samplers import build_pruner, build_sampler, check_pruner, check_sampler
from apm_lightning.runners.sweep_spec import load_spec
from apm_lightning.runners.sweep_wandb import wandb_sweep_config

REPO = Path(__file__).resolve().parents[1]
TINY_RTE = REPO / "experiments" / "sweeps" / "tiny_rte.yaml"


def sweep_file(tmp_path: Path, **keys) -> Path:
    data = yaml.safe_load(TINY_RTE.read_text())
    data["base_configs"] = [str(REPO / "experiments" / c) for c in ("glue/rte.yaml", "models/tiny_bert.yaml")]
    data["name"] = "opts"
    data.update(keys)
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_tpe_gets_constant_liar_and_multivariate_by_default():
    settings = tpe_settings(build_sampler({"name": "tpe", "n_startup_trials": 3}, seed=1))
    assert settings == {"constant_liar": True, "multivariate": True, "n_startup_trials": 3}
    off = tpe_settings(build_sampler({"name": "tpe", "constant_liar": False, "multivariate": False}))
    assert off["constant_liar"] is False and off["multivariate"] is False
    # The shipped sweep files say so, and the spec carries it to the study.
    for path in sorted(TINY_RTE.parent.glob("*.yaml")):
        assert tpe_settings(build_sampler(load_spec(path).sampler))["constant_liar"] is True


@pytest.mark.parametrize(
    "sampler, cls",
    [
        ({"name": "random", "seed": 3}, optuna.samplers.RandomSampler),
        ({"type": "tpe"}, optuna.samplers.TPESampler),  # the older spelling still reads
        ({"name": "qmc", "qmc_type": "halton", "scramble": True}, optuna.samplers.QMCSampler),
        ({"name": "gp", "n_startup_trials": 2}, optuna.samplers.GPSampler),
    ],
)
def test_each_sampler_builds_its_optuna_class(sampler, cls):
    assert type(build_sampler(sampler, seed=0)) is cls


@pytest.mark.parametrize(
    "pruner, cls",
    [
        ({"name": "median", "n_warmup_steps": 1}, optuna.pruners.MedianPruner),
        ({"name": "successive_halving", "reduction_factor": 2}, optuna.pruners.SuccessiveHalvingPruner),
        ({"name": "hyperband", "min_resource": 1, "max_resource": 4}, optuna.pruners.HyperbandPruner),
        ({"name": "percentile", "percentile": 25.0}, optuna.pruners.PercentilePruner),
        ({"name": "none"}, optuna.pruners.NopPruner),
        (None, optuna.pruners.NopPruner),
    ],
)
def test_each_pruner_builds_its_optuna_class(pruner, cls):
    assert type(build_pruner(pruner)) is cls


def test_seeded_samplers_repeat_their_proposals():
    def proposals(settings, seed):
        study = optuna.create_study(sampler=build_sampler(settings, seed=seed))
        study.optimize(lambda t: t.suggest_float("x", 0, 1) + t.suggest_int("n", 1, 9), n_trials=4)
        return [t.params for t in study.trials]

    for settings in ({"name": "random"}, {"name": "tpe", "n_startup_trials": 2}):
        assert proposals(settings, 7) == proposals(settings, 7) != proposals(settings, 8)
    # --sampler-seed over the file's seed.
    assert proposals({"name": "random", "seed": 1}, 7) == proposals({"name": "random"}, 7)


@pytest.mark.parametrize(
    "check, raw, message",
    [
        (check_sampler, {"name": "annealing"}, "unknown sampler 'annealing' (choose one of tpe, random, gp"),
        (check_sampler, {"name": "tpe", "startup": 3}, "sampler tpe has no option startup (options: "),
        (check_sampler, {"name": "tpe", "gamma": "x"}, "sampler tpe has no option gamma"),  # a callable
        (check_sampler, {"name": "tpe", "type": "tpe"}, "give 'name' only"),
        (check_sampler, "tpe", "sampler must be a mapping such as {name: tpe}"),
        (check_sampler, {"name": "tpe", "group": True, "multivariate": False}, "sampler tpe: "),
        (check_pruner, {"name": "asha"}, "unknown pruner 'asha' (choose one of median, percentile"),
        (check_pruner, {"name": "median", "patience": 2}, "pruner median has no option patience"),
        (check_pruner, {"name": "none", "x": 1}, "pruner none has no option x (options: none)"),
        (check_pruner, {"name": "median", "n_warmup_steps": -1}, "pruner median: "),
    ],
)
def test_bad_sampler_or_pruner_is_one_line(check, raw, message):
    with pytest.raises(APMError) as err:
        check(raw)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_a_bad_sampler_refuses_the_sweep_before_anything_is_written(tmp_path, capsys):
    path = sweep_file(tmp_path, sampler={"name": "tpe", "n_startup": 2})
    out = tmp_path / "out"
    assert main(["sweep", "-c", str(path), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("apm: error: ") and f"{path}: sampler tpe has no option n_startup" in err
    assert len(err.splitlines()) == 1 and not out.exists()


@pytest.mark.skipif(importlib.util.find_spec("cmaes") is not None, reason="cmaes is installed")
def test_a_sampler_whose_package_is_missing_names_it(tmp_path, capsys):
    assert check_sampler({"name": "cmaes", "popsize": 4})["popsize"] == 4  # the file itself is fine
    with pytest.raises(APMError, match=r"^sampler cmaes needs the cmaes package: pip install cmaes$"):
        build_sampler({"name": "cmaes"})
    path = sweep_file(tmp_path, sampler={"name": "cmaes"})
    assert main(["sweep", "-c", str(path), "--out", str(tmp_path / "out"), "--n-trials", "1"]) == 2
    assert "pip install cmaes" in capsys.readouterr().err
    assert not (tmp_path / "out" / "trial-0000").exists()


def test_wandb_sweep_method_follows_the_sampler(tmp_path):
    spec = load_spec(sweep_file(tmp_path, sampler={"name": "random"}, pruner={"name": "hyperband"}))
    config = wandb_sweep_config(spec, tmp_path, [], "p")
    assert config["method"] == "random" and config["early_terminate"] == {"type": "hyperband", "min_iter": 1}
    spec = load_spec(sweep_file(tmp_path, sampler={"name": "gp"}, pruner=None))
    config = wandb_sweep_config(spec, tmp_path, [], "p")
    assert config["method"] == "bayes" and "early_terminate" not in config


def _optuna_cli(*args: str) -> subprocess.Popen:
    """The ``optuna`` command (JSON output), started; ``_read`` waits for it."""
    exe = shutil.which("optuna") or pytest.skip("the optuna command is not on PATH")
    return subprocess.Popen(
        [exe, *args, "-f", "json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def _read(command: subprocess.Popen) -> object:
    out, err = command.communicate(timeout=120)
    assert command.returncode == 0, err
    return json.loads(out)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _dashboard_studies(url: str) -> dict:
    """Start ``optuna-dashboard`` on the storage, read its study list over HTTP, stop it."""
    exe = shutil.which("optuna-dashboard") or pytest.skip("optuna-dashboard is not installed")
    port = _free_port()
    server = subprocess.Popen(
        [exe, url, "--port", str(port), "--host", "127.0.0.1", "--quiet"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=5) as reply:
                    return json.load(reply)
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"optuna-dashboard did not serve: {server.stderr.read()}") from None
                time.sleep(0.3)
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_a_gp_hyperband_sweep_opens_in_the_optuna_cli_and_dashboard(tmp_path, glue_dir):
    """A real tiny sweep with a non-default sampler and pruner (GP after one random trial,
    Hyperband over each trial's 2 validations); then Optuna's own tools read the study from
    apm's database and agree with best.json."""
    torch = pytest.importorskip("torch")
    path = sweep_file(
        tmp_path,
        sampler={"name": "gp", "n_startup_trials": 1, "seed": 0},
        pruner={"name": "hyperband", "min_resource": 1, "max_resource": 2, "reduction_factor": 2},
    )
    out = tmp_path / "out"
    args = ["sweep", "-c", str(path), "--n-trials", "2", "--out", str(out), "--launcher", "inprocess"]
    args += ["--data.data_dir", str(glue_dir), "--data.max_train_samples", "16", "--wandb_mode", "disabled"]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: more threads on a shared CPU only spin
    try:
        assert main(args) == 0
    finally:
        torch.set_num_threads(threads)
    best = json.loads((out / "best.json").read_text())
    url = f"sqlite:///{out / 'study.db'}"
    # The pruning callback reported each validation to the Hyperband pruner.
    study = optuna.load_study(study_name="opts", storage=url)
    for t in study.trials:
        assert sorted(t.intermediate_values) == ([1, 2] if t.state.name == "COMPLETE" else [1])

    # Optuna's CLI and the dashboard at once (each imports Optuna: seconds on a busy CPU).
    studies = _optuna_cli("studies", "--storage", url)
    top = _optuna_cli("best-trial", "--study-name", "opts", "--storage", url) if best["best"] else None
    summaries = _dashboard_studies(url)["study_summaries"]
    (listed,) = _read(studies)
    assert listed["name"] == "opts" and listed["direction"] == ["MAXIMIZE"]
    assert listed["n_trials"] == sum(best["trials"].values()) == 2
    if top is not None:  # two pruned trials: no best trial (both tools say so)
        found = _read(top)
        assert (found["number"], found["value"]) == (best["best"]["trial"], best["best"]["value"])
        assert found["params"] == best["best"]["params"]
    assert [(s["study_name"], s["directions"]) for s in summaries] == [("opts", ["maximize"])]
