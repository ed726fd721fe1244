"""Every config in experiments/ runs a few steps; W&B auto mode; the tokenization cache; demo."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import pytest
from conftest import GLUE, GLUE_ROWS, SQUAD

from apm_lightning.cli import main

REPO = Path(__file__).resolve().parents[1]
FIXTURE_TASKS = {"stsb", "qqp", "mnli", "qnli"}
# Recipes of a hub model (offline here): their tests run them with a local model in its place.
HUB_RECIPES = {"squad/generative_t5.yaml"}  # tests/test_generative_qa.py, with a span-corruption export


@pytest.fixture(scope="module")
def fixture_glue(tmp_path_factory) -> Path:
    from test_cli_glue import write_fixture_glue

    return write_fixture_glue(tmp_path_factory.mktemp("glue-fixtures"))


QUICK = [
    "--data.max_train_samples",
    "8",
    "--data.max_eval_samples",
    "8",
    "--data.batch_size",
    "4",
    "--data.max_seq_length",
    "32",
    "--trainer.max_steps",
    "2",
    "--trainer.num_sanity_val_steps",
    "0",
    "--wandb_mode",
    "disabled",
    "--trainer.enable_progress_bar",
    "false",
    "--trainer.enable_model_summary",
    "false",
]


def experiment_runs() -> list[tuple[str, ...]]:
    """Each task config as it is (MiniLM), and each model config composed with a task: SST-2,
    or SQuAD v1.1 for question-answering models (``*_qa.yaml``)."""
    # Sweep files are not fit configs: tests/test_sweep.py runs each for one trial. Trainer
    # configs (GPU strategies) are checked by tests/test_multi_device.py.
    runs = [
        (str(p),)
        for p in sorted((REPO / "experiments").glob("[!m]*/*.yaml"))
        if p.parent.name not in ("sweeps", "trainer", "pretrain", "compare_objectives", "glue_protocols")
        and p.relative_to(REPO / "experiments").as_posix() not in HUB_RECIPES
    ]
    for model in sorted((REPO / "experiments" / "models").glob("*.yaml")):
        task = "squad/v1.yaml" if model.stem.endswith("_qa") else "glue/sst2.yaml"
        runs.append((str(REPO / "experiments" / task), str(model)))
    return runs


def data_args(config: Path, fixture_glue: Path) -> list[str]:
    if config.parent.name == "squad":
        train = SQUAD / (
            "v1.1/dev-v1.1.json" if config.stem == "v1" else "v2.0/train-v2.0.first11articles.json"
        )
        return [
            "--data.train_file",
            str(train),
            "--data.split_by_article",
            "2",
            "--data.max_seq_length",
            "128",
            "--data.doc_stride",
            "32",
        ]
    return ["--data.data_dir", str(fixture_glue if config.stem in FIXTURE_TASKS else GLUE)]


def test_every_experiment_config_is_covered():
    covered = {Path(c) for run in experiment_runs() for c in run}
    covered |= set((REPO / "experiments" / "sweeps").glob("*.yaml"))  # see tests/test_sweep.py
    covered |= set((REPO / "experiments" / "trainer").glob("*.yaml"))  # see tests/test_multi_device.py
    covered |= set((REPO / "experiments" / "pretrain").glob("*.yaml"))  # see tests/test_pretraining.py
    covered |= set((REPO / "experiments" / "compare_objectives").glob("*.yaml"))  # tests/test_compare.py
    covered |= set((REPO / "experiments" / "glue_protocols").glob("*.yaml"))  # tests/test_glue_grid.py
    covered |= {REPO / "experiments" / name for name in HUB_RECIPES}
    assert covered == set((REPO / "experiments").rglob("*.yaml"))


@pytest.mark.parametrize("configs", experiment_runs(), ids=lambda c: "+".join(Path(x).stem for x in c))
def test_experiment_config_runs(configs, tmp_path, fixture_glue):
    args = [a for c in configs for a in ("-c", c)]
    quick = [a for a in QUICK if a != "32"] if Path(configs[0]).parent.name == "squad" else QUICK
    if quick is not QUICK:
        quick.remove("--data.max_seq_length")
    rc = main(
        [
            "fit",
            *args,
            *data_args(Path(configs[0]), fixture_glue),
            "--trainer.default_root_dir",
            str(tmp_path),
            *quick,
        ]
    )
    assert rc == 0
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["global_step"] == 2 and "main" in results["metrics"]


def test_print_config(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "-c", str(REPO / "experiments/glue/cola.yaml"), "--print_config"])
    assert exit_info.value.code == 0
    printed = capsys.readouterr().out
    assert "task: cola" in printed and "backbone: minilm" in printed


def silent_server() -> tuple[socket.socket, list[socket.socket]]:
    """A local address that never answers: a listener whose accept queue is full, so Linux
    drops further connection attempts and they time out. (An unroutable IP such as 10.255.255.1
    is no such address on networks with a transparent proxy, which accept any connection.)"""
    server = socket.create_server(("127.0.0.1", 0), backlog=0)
    fillers = []
    for _ in range(4):
        filler = socket.socket()
        filler.setblocking(False)
        filler.connect_ex(server.getsockname())
        fillers.append(filler)
    time.sleep(0.2)
    return server, fillers


def test_wandb_auto_mode_goes_offline_fast(monkeypatch):
    """With a key set, ``auto`` really probes the server: one that never answers means offline
    once the probe's 2 s are up, one that accepts the connection means online."""
    from apm_lightning.training.loggers import resolve_wandb_mode

    monkeypatch.delenv("WANDB_MODE", raising=False)
    for proxy in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy"):
        monkeypatch.delenv(proxy, raising=False)  # the probe goes straight to the address
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)  # credentials present: the probe decides
    server, fillers = silent_server()
    with server:
        monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{server.getsockname()[1]}")
        start = time.perf_counter()
        assert resolve_wandb_mode("auto") == "offline"
        assert 1.5 < time.perf_counter() - start < 3.0  # the probe waited, and no longer than its limit
        for filler in fillers:
            filler.close()
    with socket.create_server(("127.0.0.1", 0)) as server:
        monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{server.getsockname()[1]}")
        assert resolve_wandb_mode("auto") == "online"
    monkeypatch.delenv("WANDB_API_KEY")
    monkeypatch.setenv("NETRC", "/nonexistent")
    assert resolve_wandb_mode("auto") == "offline"  # no credentials: no probe at all
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert resolve_wandb_mode("auto") == "disabled"


def test_wandb_offline_run_is_written_to_disk(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    args = [
        "fit",
        "-c",
        str(REPO / "experiments/glue/rte.yaml"),
        "-c",
        str(REPO / "experiments/models/tiny_bert.yaml"),
        "--data.data_dir",
        str(GLUE),
        "--trainer.default_root_dir",
        str(tmp_path),
        *QUICK,
    ]
    args[args.index("disabled")] = "offline"
    assert main(args) == 0
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    assert list(runs[0].glob("*.wandb")), "the offline run holds no data for `wandb sync`"
    assert (tmp_path / "csv" / "metrics.csv").is_file()


def test_tokenization_is_cached(tmp_path, monkeypatch):
    from transformers import AutoTokenizer

    from apm_lightning.core.model_paths import minilm_path
    from apm_lightning.data.classification import ClassificationDataModule
    from apm_lightning.data.encoders import JointPairEncoder

    monkeypatch.setenv("APM_CACHE_DIR", str(tmp_path / "cache"))
    calls = []

    class CountingEncoder(JointPairEncoder):
        def encode(self, *args, **kwargs):
            calls.append(1)
            return super().encode(*args, **kwargs)

    tokenizer = AutoTokenizer.from_pretrained(minilm_path())
    first = ClassificationDataModule(task="rte", data_dir=str(GLUE), max_train_samples=200)
    first.encoder = CountingEncoder(tokenizer)
    first.setup("fit")
    assert len(calls) == 2  # train and validation
    second = ClassificationDataModule(task="rte", data_dir=str(GLUE), max_train_samples=200)
    second.encoder = CountingEncoder(tokenizer)
    second.setup("fit")
    assert len(calls) == 2  # nothing tokenized again
    assert second.datasets["train"]["input_ids"] == first.datasets["train"]["input_ids"]
    assert (
        len(second.datasets["train"]) == 200
        and len(second.datasets["validation"]) == GLUE_ROWS["rte", "validation"]
    )
    # Another truncation length is another cache entry.
    third = ClassificationDataModule(task="rte", data_dir=str(GLUE), max_train_samples=200, max_seq_length=64)
    third.encoder = CountingEncoder(tokenizer)
    third.setup("fit")
    assert len(calls) == 4
    assert max(len(x) for x in third.datasets["train"]["input_ids"]) == 64


def test_ax_is_predicted_with_an_mnli_model(tmp_path, fixture_glue):
    common = [
        "-c",
        str(REPO / "experiments/glue/mnli.yaml"),
        "-c",
        str(REPO / "experiments/models/tiny_bert.yaml"),
        "--trainer.default_root_dir",
        str(tmp_path),
        *QUICK,
    ]
    assert main(["fit", *common, "--data.data_dir", str(fixture_glue)]) == 0
    ckpt = json.loads((tmp_path / "results.json").read_text())["best_checkpoint"]
    assert (
        main(["predict", *common, "--data.task", "ax", "--data.data_dir", str(GLUE), "--ckpt_path", ckpt])
        == 0
    )
    lines = (tmp_path / "predictions" / "ax_test.tsv").read_text().splitlines()
    assert len(lines) == GLUE_ROWS["ax", "test"] + 1 and lines[0] == "index\tprediction"
    assert {x.split("\t")[1] for x in lines[1:]} <= {"entailment", "neutral", "contradiction"}


def test_bilstm_export_is_refused_clearly(tmp_path, capsys):
    args = [
        "fit",
        "-c",
        str(REPO / "experiments/glue/rte.yaml"),
        "-c",
        str(REPO / "experiments/models/bilstm.yaml"),
        "--data.data_dir",
        str(GLUE),
        "--trainer.default_root_dir",
        str(tmp_path / "run"),
        *QUICK,
    ]
    assert main(args) == 0
    assert main(["export", str(tmp_path / "run/checkpoints/last.ckpt"), str(tmp_path / "hf")]) == 2
    assert "no Hugging Face form" in capsys.readouterr().err
    assert not (tmp_path / "hf").exists()


def test_demo_runs_offline_on_synthetic_data(tmp_path, capsys):
    assert (
        main(
            [
                "demo",
                "--out",
                str(tmp_path / "demo"),
                "--train-rows",
                "64",
                "--eval-rows",
                "32",
                "--backbone",
                "minilm",
                "--source",
                "synthetic",  # offline, the demo trains on the shipped SST-2 sample (test_packaging.py)
                "--wandb_mode",
                "disabled",
                "--trainer.enable_progress_bar",
                "false",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "synthetic SST-2-style task" in out
    results = json.loads((tmp_path / "demo" / "results.json").read_text())
    assert results["task"] == "sst2" and results["train_examples"] == 64
    assert out.strip().splitlines()[-1] == str((tmp_path / "demo" / "results.json").resolve())


def test_default_run_dir_is_named_after_the_task():
    from jsonargparse import Namespace

    from apm_lightning.training.cli import _run_name

    glue = Namespace(
        data=Namespace(
            class_path="apm_lightning.data.classification.ClassificationDataModule",
            init_args=Namespace(task="rte"),
        )
    )
    squad = Namespace(
        data=Namespace(class_path="apm_lightning.data.squad.SQuADDataModule", init_args=Namespace())
    )
    assert _run_name(glue).startswith("rte-") and _run_name(squad).startswith("squad-")


def test_a_warm_cache_reads_no_text_and_a_changed_file_is_checked_again(tmp_path, monkeypatch):
    """The profile of a warm start showed the TSV parse as its largest part: a cached split is
    neither parsed to check it nor to tokenize it, until its file changes."""
    import shutil

    from transformers import AutoTokenizer

    from apm_lightning.core.errors import APMError
    from apm_lightning.core.model_paths import minilm_path
    from apm_lightning.data import classification as glue_module
    from apm_lightning.data.encoders import JointPairEncoder

    monkeypatch.setenv("APM_CACHE_DIR", str(tmp_path / "cache"))
    data = tmp_path / "glue" / "RTE"
    shutil.copytree(GLUE / "RTE", data)
    tokenizer = AutoTokenizer.from_pretrained(minilm_path())

    def prepared() -> glue_module.ClassificationDataModule:
        dm = glue_module.ClassificationDataModule(
            task="rte", data_dir=str(tmp_path / "glue"), max_train_samples=50
        )
        dm.encoder = JointPairEncoder(tokenizer)
        dm.check("fit")
        dm.setup("fit")
        return dm

    first = prepared()
    reads = []
    real = glue_module.read_glue_tsv
    monkeypatch.setattr(glue_module, "read_glue_tsv", lambda *a, **k: reads.append(a[1]) or real(*a, **k))
    warm = prepared()
    assert reads == [] and warm.datasets["train"]["input_ids"] == first.datasets["train"]["input_ids"]
    # An edited file is checked again: a broken row fails the check before any training.
    with open(data / "dev.tsv", "a", encoding="utf-8") as f:
        f.write("9999\tonly two columns\n")
    with pytest.raises(APMError, match="dev.tsv"):
        prepared()
    assert [Path(p).name for p in reads] == ["dev.tsv"]
