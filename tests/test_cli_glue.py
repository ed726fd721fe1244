"""End-to-end runs of `apm fit | validate | predict | export` on real GLUE files and fixtures."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import GLUE

from apm_lightning.cli import main

REPO = Path(__file__).resolve().parents[1]
TINY = str(REPO / "experiments" / "models" / "tiny_bert.yaml")
BILSTM = str(REPO / "experiments" / "models" / "bilstm.yaml")
LOCAL_TASKS = ("cola", "sst2", "mrpc", "rte", "wnli")


def write_fixture_glue(root: Path) -> Path:
    """STS-B, QQP, MNLI and QNLI in their published layouts (they are not in ../shared)."""
    rows = [
        ("a man is playing a guitar .", "a person plays an instrument ."),
        ("the cat sleeps on the mat .", "a dog runs in the park ."),
        ("stocks fell sharply today .", "markets dropped a lot today ."),
        ("she is reading a book .", "nobody is reading ."),
    ] * 6

    def write(path: Path, header: list[str], body: list[list[str]]) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("\n".join("\t".join(r) for r in [header, *body]) + "\n", encoding="utf-8")

    stsb = ["index", "genre", "filename", "year", "old_index", "source1", "source2", "sentence1", "sentence2"]
    for name in ("train", "dev"):
        write(
            root / "STS-B" / f"{name}.tsv",
            [*stsb, "score"],
            [
                [
                    str(i),
                    "main-captions",
                    "MSRvid",
                    "2012test",
                    str(i),
                    "none",
                    "none",
                    a,
                    b,
                    f"{(i * 0.7) % 5:.3f}",
                ]
                for i, (a, b) in enumerate(rows)
            ],
        )
    write(
        root / "STS-B" / "test.tsv",
        stsb,
        [[str(i), "main-news", "f", "2012", str(i), "none", "none", a, b] for i, (a, b) in enumerate(rows)],
    )
    for name in ("train", "dev"):
        write(
            root / "QQP" / f"{name}.tsv",
            ["id", "qid1", "qid2", "question1", "question2", "is_duplicate"],
            [[str(i), str(2 * i), str(2 * i + 1), a, b, str(i % 2)] for i, (a, b) in enumerate(rows)],
        )
    write(
        root / "QQP" / "test.tsv",
        ["id", "question1", "question2"],
        [[str(i), a, b] for i, (a, b) in enumerate(rows)],
    )
    mnli = [
        "index",
        "promptID",
        "pairID",
        "genre",
        "sentence1_binary_parse",
        "sentence2_binary_parse",
        "sentence1_parse",
        "sentence2_parse",
        "sentence1",
        "sentence2",
    ]
    labels = ["entailment", "neutral", "contradiction"]
    write(
        root / "MNLI" / "train.tsv",
        [*mnli, "label1", "gold_label"],
        [
            [
                str(i),
                str(i),
                f"{i}e",
                "fiction",
                "( a )",
                "( b )",
                "(ROOT a)",
                "(ROOT b)",
                a,
                b,
                labels[i % 3],
                labels[i % 3],
            ]
            for i, (a, b) in enumerate(rows)
        ],
    )
    for name in ("dev_matched", "dev_mismatched"):
        write(
            root / "MNLI" / f"{name}.tsv",
            [*mnli, "label1", "label2", "label3", "label4", "label5", "gold_label"],
            [
                [
                    str(i),
                    str(i),
                    f"{i}e",
                    "slate",
                    "( a )",
                    "( b )",
                    "(ROOT a)",
                    "(ROOT b)",
                    a,
                    b,
                    *[labels[i % 3]] * 6,
                ]
                for i, (a, b) in enumerate(rows)
            ],
        )
    for name in ("test_matched", "test_mismatched"):
        write(
            root / "MNLI" / f"{name}.tsv",
            mnli,
            [
                [str(i), str(i), f"{i}e", "slate", "( a )", "( b )", "(ROOT a)", "(ROOT b)", a, b]
                for i, (a, b) in enumerate(rows)
            ],
        )
    for name in ("train", "dev"):
        write(
            root / "QNLI" / f"{name}.tsv",
            ["index", "question", "sentence", "label"],
            [[str(i), a, b, ["entailment", "not_entailment"][i % 2]] for i, (a, b) in enumerate(rows)],
        )
    write(
        root / "QNLI" / "test.tsv",
        ["index", "question", "sentence"],
        [[str(i), a, b] for i, (a, b) in enumerate(rows)],
    )
    return root


@pytest.fixture(scope="module")
def fixture_glue(tmp_path_factory) -> Path:
    return write_fixture_glue(tmp_path_factory.mktemp("glue-fixtures"))


def apm(*args: str) -> int:
    return main(
        [
            *map(str, args),
            "--wandb_mode",
            "disabled",
            "--trainer.enable_progress_bar",
            "false",
            "--trainer.enable_model_summary",
            "false",
        ]
        if args[0] in ("fit", "validate", "test", "predict")
        else list(map(str, args))
    )


def fit(task: str, run_dir: Path, data_dir: Path, *extra: str, model: str = TINY) -> dict:
    rc = apm(
        "fit",
        "-c",
        REPO / "experiments" / "glue" / f"{task}.yaml",
        "-c",
        model,
        "--data.data_dir",
        data_dir,
        "--data.max_train_samples",
        16,
        "--data.max_eval_samples",
        16,
        "--data.batch_size",
        8,
        "--data.max_seq_length",
        32,
        "--trainer.max_epochs",
        1,
        "--trainer.default_root_dir",
        run_dir,
        *extra,
    )
    assert rc == 0
    return json.loads((run_dir / "results.json").read_text())


EXPECTED_METRICS = {
    "cola": {"mcc"},
    "sst2": {"accuracy"},
    "mrpc": {"f1", "accuracy"},
    "stsb": {"pearson", "spearman"},
    "qqp": {"f1", "accuracy"},
    "mnli": {"accuracy_matched", "accuracy_mismatched"},
    "qnli": {"accuracy"},
    "rte": {"accuracy"},
    "wnli": {"accuracy"},
}


@pytest.mark.parametrize("task", list(EXPECTED_METRICS))
def test_fit_every_task_writes_results(task, tmp_path, fixture_glue, capsys):
    data = GLUE if task in LOCAL_TASKS else fixture_glue
    results = fit(task, tmp_path / "run", data)
    assert results["task"] == task
    assert set(results["metrics"]) == EXPECTED_METRICS[task] | {"main"}
    scores = [v for k, v in results["metrics"].items() if k != "main"]
    assert results["metrics"]["main"] == pytest.approx(sum(scores) / len(scores))
    assert results["train_examples"] == 16 and results["global_step"] == 2
    assert results["train_examples_per_second"] > 0 and results["peak_rss_mb"] > 100
    assert Path(results["best_checkpoint"]).is_file()
    assert results["config"]["data"]["init_args"]["task"] == task
    assert results["versions"]["torch"] and "git_commit" in results
    assert capsys.readouterr().out.strip().splitlines()[-1] == str(
        (tmp_path / "run" / "results.json").resolve()
    )


def test_bilstm_pair_task(tmp_path):
    results = fit("mrpc", tmp_path / "run", GLUE, model=BILSTM)
    assert set(results["metrics"]) == {"f1", "accuracy", "main"}
    assert 0.0 <= results["metrics"]["accuracy"] <= 1.0


def _state(ckpt: Path) -> dict[str, torch.Tensor]:
    return torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]


@pytest.mark.parametrize("model", [TINY, BILSTM])
def test_resume_is_exact(tmp_path, model, monkeypatch):
    """2 epochs straight == stopped after epoch 1, resumed from last.ckpt (bitwise equal)."""
    from apm_lightning.training.callbacks import StepSeeder

    common = [
        "--data.max_train_samples",
        48,
        "--data.max_eval_samples",
        16,
        "--data.batch_size",
        8,
        "--data.max_seq_length",
        32,
        "--trainer.deterministic",
        "true",
    ]
    cfg = ["-c", REPO / "experiments" / "glue" / "rte.yaml", "-c", model, "--data.data_dir", GLUE]
    assert (
        apm("fit", *cfg, *common, "--trainer.max_epochs", 2, "--trainer.default_root_dir", tmp_path / "a")
        == 0
    )
    with monkeypatch.context() as patch:  # the interruption: stop once the first epoch is saved
        patch.setattr(
            StepSeeder,
            "on_train_epoch_end",
            lambda self, trainer, module: setattr(trainer, "should_stop", True),
            raising=False,
        )
        assert (
            apm("fit", *cfg, *common, "--trainer.max_epochs", 2, "--trainer.default_root_dir", tmp_path / "b")
            == 0
        )
    assert json.loads((tmp_path / "b/results.json").read_text())["global_step"] == 6
    assert (
        apm(
            "fit",
            *cfg,
            *common,
            "--trainer.max_epochs",
            2,
            "--trainer.default_root_dir",
            tmp_path / "b",
            "--ckpt_path",
            "last",
        )
        == 0
    )
    a, b = _state(tmp_path / "a/checkpoints/last.ckpt"), _state(tmp_path / "b/checkpoints/last.ckpt")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    ra = json.loads((tmp_path / "a/results.json").read_text())
    rb = json.loads((tmp_path / "b/results.json").read_text())
    assert ra["metrics"] == rb["metrics"] and ra["global_step"] == rb["global_step"] == 12


def test_predict_writes_test_split(tmp_path):
    results = fit("rte", tmp_path / "run", GLUE)
    rc = apm(
        "predict",
        "-c",
        REPO / "experiments/glue/rte.yaml",
        "-c",
        TINY,
        "--data.data_dir",
        GLUE,
        "--data.max_predict_samples",
        40,
        "--trainer.default_root_dir",
        tmp_path / "run",
        "--ckpt_path",
        results["best_checkpoint"],
    )
    assert rc == 0
    lines = (tmp_path / "run/predictions/rte_test.tsv").read_text().splitlines()
    assert lines[0] == "index\tprediction" and len(lines) == 41
    assert [int(x.split("\t")[0]) for x in lines[1:]] == list(range(40))
    assert {x.split("\t")[1] for x in lines[1:]} <= {"entailment", "not_entailment"}


def test_predict_mnli_writes_matched_and_mismatched(tmp_path, fixture_glue):
    results = fit("mnli", tmp_path / "run", fixture_glue)
    rc = apm(
        "predict",
        "-c",
        REPO / "experiments/glue/mnli.yaml",
        "-c",
        TINY,
        "--data.data_dir",
        fixture_glue,
        "--trainer.default_root_dir",
        tmp_path / "run",
        "--ckpt_path",
        results["best_checkpoint"],
    )
    assert rc == 0
    for split in ("test_matched", "test_mismatched"):
        lines = (tmp_path / f"run/predictions/mnli_{split}.tsv").read_text().splitlines()
        assert len(lines) == 25 and {x.split("\t")[1] for x in lines[1:]} <= {
            "entailment",
            "neutral",
            "contradiction",
        }


def test_export_loads_with_auto_class(tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from apm_lightning.modules.hf_export import load_module_from_checkpoint

    results = fit("mrpc", tmp_path / "run", GLUE)
    out = tmp_path / "hf"
    assert apm("export", results["best_checkpoint"], out) == 0
    assert (out / "model.safetensors").is_file() and (out / "tokenizer.json").is_file()
    model = AutoModelForSequenceClassification.from_pretrained(out).eval()
    tokenizer = AutoTokenizer.from_pretrained(out)
    module = load_module_from_checkpoint(results["best_checkpoint"]).eval()
    batch = tokenizer(["a man plays"], ["a person plays music"], return_tensors="pt")
    with torch.no_grad():
        expected = module.net(**batch).logits
        assert torch.allclose(model(**batch).logits, expected, atol=1e-6)
    assert model.config.id2label == {0: "not_equivalent", 1: "equivalent"}
    # A second export into the same folder is refused, and the folder is left as it was.
    before = sorted(p.name for p in out.iterdir())
    assert apm("export", results["best_checkpoint"], out) == 2
    assert sorted(p.name for p in out.iterdir()) == before
    # The model card: task, data, recipe, the run's dev scores, versions; hub metadata on top.
    card = (out / "README.md").read_text()
    assert (
        card.startswith("---\nlibrary_name: transformers\n") and "pipeline_tag: text-classification" in card
    )
    assert "# mrpc (TransformerClassifier" in card and str(GLUE) in card
    assert f"| main | {results['metrics']['main']:.4f} |" in card and "| `learning_rate` |" in card
    assert f"- transformers {results['versions']['transformers']}" in card


def test_export_push_to_hub_offline_is_one_line_and_keeps_the_export(tmp_path, monkeypatch, capsys):
    results = fit("mrpc", tmp_path / "run", GLUE)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "hf"
    assert apm("export", results["best_checkpoint"], out, "--push-to-hub", "someone/mrpc-tiny") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("apm: error: cannot push to someone/mrpc-tiny") and "offline mode" in err[-1]
    assert f"hf upload someone/mrpc-tiny {out}" in err[-1]
    assert (out / "model.safetensors").is_file() and (out / "README.md").is_file()
    assert apm("export", results["best_checkpoint"], tmp_path / "x", "--push-to-hub", "noslash") == 2
    assert "repository id such as user/name" in capsys.readouterr().err


def test_validate_checkpoint(tmp_path, capsys):
    results = fit("sst2", tmp_path / "run", GLUE)
    rc = apm(
        "validate",
        "-c",
        REPO / "experiments/glue/sst2.yaml",
        "-c",
        TINY,
        "--data.data_dir",
        GLUE,
        "--data.max_eval_samples",
        16,
        "--trainer.default_root_dir",
        tmp_path / "val",
        "--ckpt_path",
        results["best_checkpoint"],
    )
    assert rc == 0
    out = capsys.readouterr().out
    assert f"{results['metrics']['accuracy']:.4f}" in out
    assert "results: sst2" in out  # the table names the task (it once said "results: None")
