"""Generative SQuAD (``GenerativeQAModule``): the answer written by an encoder-decoder, scored by
the official EM/F1. Features on the real files, v2.0 abstentions scored as the official script,
and tiny end-to-end runs: `apm fit|validate|predict`, a tiny T5 learning its questions, the
study's span-corruption export fine-tuned through the shipped T5 recipe, and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import SQUAD
from run_options import CORPUS

from apm_lightning.cli import main
from apm_lightning.core.errors import APMError
from apm_lightning.data.squad_files import read_squad_file
from apm_lightning.data.squad_generative import GenerativeQAEncoder, answer_in_context
from apm_lightning.metrics.squad import squad_v2_scores
from apm_lightning.modules.generative_qa import GenerativeQAModule, score_predictions

REPO = Path(__file__).resolve().parents[1]
V1 = SQUAD / "v1.1" / "dev-v1.1.json"
V2 = SQUAD / "v2.0" / "train-v2.0.first11articles.json"
TINY = REPO / "experiments" / "squad" / "generative_tiny.yaml"
T5 = {"model_type": "t5", "d_model": 32, "d_kv": 16, "d_ff": 64, "num_layers": 2, "num_heads": 2}
QUIET = ["--wandb_mode", "disabled", "--trainer.enable_progress_bar", "false"]
QUIET += ["--trainer.enable_model_summary", "false"]


def apm(*args) -> int:
    return main([*map(str, args), *QUIET])


@pytest.fixture(scope="module")
def module() -> GenerativeQAModule:
    torch.manual_seed(0)
    return GenerativeQAModule(backbone_config=T5, tokenizer="minilm")


# ------------------------------------------------------------------ features and scoring
def test_features_are_t5s_format_and_count_lost_answers(module):
    examples = [q for article in read_squad_file(V1).articles[:1] for q in article][:24]
    encoder = module.build_encoder(None)
    tokenizer = encoder.tokenizer
    out = encoder.squad_features(examples, 96, 32, 64, labels=True, offsets=True)
    assert out["example_index"] == list(range(24))
    first = tokenizer.decode(out["input_ids"][0], skip_special_tokens=True).replace(" ", "")
    assert first.startswith("question:whichnflteamrepresentedtheafcatsuperbowl50?context:")
    assert max(len(ids) for ids in out["input_ids"]) == 96
    for ex, ids, target, lost in zip(
        examples, out["input_ids"], out["labels"], out["answer_lost"], strict=True
    ):
        answer = tokenizer.decode(target[:-1])
        assert target[-1] == module.net.config.eos_token_id == tokenizer.sep_token_id  # MiniLM's [SEP]
        assert answer == tokenizer.decode(tokenizer(ex.answers[0])["input_ids"][1:-1])
        if not lost:  # an answer kept is in the context the model reads
            read = tokenizer.decode(ids, skip_special_tokens=True).replace(" ", "").split("context:")[1]
            assert answer.replace(" ", "") in read
    assert 0 < sum(out["answer_lost"]) < 24
    # Long answers are cut to max_target_length tokens, the end token kept, and flagged.
    short = GenerativeQAEncoder(tokenizer, 102, 3, "unanswerable")
    cut = short.squad_features(examples[:4], 96, 32, 64)
    assert all(len(t) <= 3 and t[-1] == 102 for t in cut["labels"]) and any(cut["target_cut"])
    assert short.fingerprint != encoder.fingerprint  # the cache tells the settings apart


def test_generated_text_maps_back_to_the_context():
    context = "Revenue rose 3.5% to $1,000 million at Café Nord in São Paulo."
    assert answer_in_context("3. 5 %", context) == "3.5%"
    assert answer_in_context("$ 1, 000 million", context) == "$1,000 million"
    assert answer_in_context("cafe nord", context) == "Café Nord"  # uncased WordPiece drops accents
    assert answer_in_context("sao paulo", context) == "São Paulo"
    assert answer_in_context("rio", context) == "rio" and answer_in_context("", context) == ""


def test_v2_abstention_is_scored_as_the_official_script(module):
    golds = {"a": ["Paris", "the city of Paris"], "b": [], "c": ["1,000"], "d": []}
    context = "It cost 1,000 francs in Paris."
    written = {"a": "paris", "b": "Unanswerable", "c": "unanswerable", "d": "paris"}
    final = {q: module.final_answer(t, context) for q, t in written.items()}
    assert final == {"a": "Paris", "b": "", "c": "", "d": "Paris"}
    scores = score_predictions(golds, final, version=2)
    assert scores == squad_v2_scores(golds, final)
    assert scores["exact"] == 50.0 and scores["HasAns_exact"] == 50.0 and scores["NoAns_exact"] == 50.0
    assert scores["HasAns_total"] == 2 and scores["NoAns_total"] == 2
    # v1.1: abstaining is a wrong answer; the best gold answer counts.
    assert score_predictions({"a": golds["a"], "c": golds["c"]}, final, version=1)["exact"] == 50.0


# ------------------------------------------------------------------ end to end
def _data(path: Path, articles: int, *extra) -> list:
    return [
        *("-c", TINY, "--data.train_file", path, "--data.split_by_article", articles),
        *("--data.max_seq_length", 128, "--data.doc_stride", 64, "--data.batch_size", 8, *extra),
    ]


def test_fit_validate_and_predict(tmp_path, capsys):
    run = tmp_path / "run"
    fit = ["--data.max_train_samples", 32, "--data.max_eval_samples", 16, "--trainer.max_epochs", 1]
    assert apm("fit", *_data(V1, 24), *fit, "--trainer.default_root_dir", run, "--seed_everything", 1) == 0
    assert "training answers lie past the first 128 tokens" in capsys.readouterr().err
    results = json.loads((run / "results.json").read_text())
    metrics = results["metrics"]
    assert results["task"] == "squad_v1" and results["train_examples"] == 32
    assert {"exact", "f1", "main"} <= set(metrics) and "HasAns_exact" not in metrics
    assert 0 <= metrics["exact"] <= metrics["f1"] <= 100
    assert metrics["main"] == pytest.approx((metrics["exact"] + metrics["f1"]) / 2)
    ckpt = results["best_checkpoint"]
    assert torch.load(ckpt, weights_only=True)["apm"]["task"] == "squad_v1"

    # The checkpoint scores the same again (greedy decoding), and predicts the official file.
    assert apm("validate", *_data(V1, 24), "--data.max_eval_samples", 16, "--ckpt_path", ckpt,
               "--trainer.default_root_dir", run) == 0  # fmt: skip
    scores = json.loads(next(run.glob("validate-*.json")).read_text())["metrics"]
    assert scores["val/main"] == pytest.approx(metrics["main"])
    assert apm("predict", *_data(V1, 24), "--data.max_predict_samples", 12, "--ckpt_path", ckpt,
               "--trainer.default_root_dir", run) == 0  # fmt: skip
    articles = read_squad_file(V1).articles
    expected = [q.id for article in articles[24:] for q in article][:12]
    predictions = json.loads((run / "predictions" / "predictions.json").read_text())
    assert list(predictions) == expected and all(isinstance(v, str) for v in predictions.values())


def _subset(tmp_path: Path, source: Path, article: int, first: int, count: int) -> Path:
    """Questions ``first`` to ``first + count`` of an article's first paragraph in a real file,
    as a SQuAD file of their own."""
    data = json.loads(source.read_text(encoding="utf-8"))
    paragraph = data["data"][article]["paragraphs"][0]
    chosen = {**paragraph, "qas": paragraph["qas"][first : first + count]}
    out = tmp_path / f"{source.stem}-{article}.json"
    out.write_text(json.dumps({"version": data["version"], "data": [{"title": "t", "paragraphs": [chosen]}]}))
    return out


@pytest.mark.parametrize("version", [1, 2])
def test_a_tiny_t5_learns_its_questions(tmp_path, version):
    """Trained on 8 questions (v2.0: 4 answerable, 4 unanswerable of the Zelda article) until it
    knows them, it writes their answers and abstains where it should: the official scores of
    the same questions are far above chance (an untrained model scores 0)."""
    path = _subset(tmp_path, V1, 0, 0, 8) if version == 1 else _subset(tmp_path, V2, 4, 3, 8)
    run = tmp_path / "run"
    rc = apm(
        *("fit", "-c", TINY, "--data.train_file", path, "--data.validation_file", path),
        *("--data.max_seq_length", 128, "--data.doc_stride", 64, "--data.batch_size", 8),
        *("--model.learning_rate", 1e-2),
        *("--model.backbone_config.dropout_rate", 0.0, "--trainer.max_epochs", 120),
        *(
            "--trainer.check_val_every_n_epoch",
            120,
            "--trainer.default_root_dir",
            run,
            "--seed_everything",
            0,
        ),
    )
    assert rc == 0
    metrics = json.loads((run / "results.json").read_text())["metrics"]
    print(metrics)
    assert metrics["exact"] >= 75.0 and metrics["f1"] >= 80.0
    if version == 2:
        assert metrics["NoAns_exact"] >= 75.0 and metrics["HasAns_exact"] >= 50.0


@pytest.mark.skipif(not CORPUS.is_file(), reason="no corpus to pretrain on")
def test_span_corruption_export_fine_tunes_through_the_t5_recipe(tmp_path):
    from transformers import AutoModelForSeq2SeqLM

    span = tmp_path / "span"
    rc = main(
        [
            *("pretrain", "-c", str(REPO / "experiments" / "pretrain" / "span_corruption_tiny.yaml")),
            *("--model.backbone_config.d_model=32", "--model.backbone_config.d_ff=64"),
            *("--data.files", str(CORPUS), "--data.max_documents=400"),
            *("--data.block_size=32", "--data.batch_size=8", "--data.max_validation_blocks=8"),
            *(
                "--trainer.max_steps=4",
                "--trainer.val_check_interval=4",
                "--trainer.default_root_dir",
                str(span),
            ),
            *QUIET,
        ]
    )
    assert rc == 0
    hf = json.loads((span / "results.json").read_text())["hf_export"]
    run = tmp_path / "squad"
    rc = apm(
        *("fit", "-c", REPO / "experiments" / "squad" / "generative_t5.yaml", "--model.backbone", hf),
        *("--data.train_file", V2, "--data.split_by_article", 4, "--data.max_train_samples", 16),
        *("--data.max_eval_samples", 16, "--data.max_seq_length", 128, "--data.doc_stride", 64),
        *("--data.batch_size", 8),
        *("--data.eval_batch_size", 16, "--trainer.max_epochs", 1, "--trainer.default_root_dir", run),
    )
    assert rc == 0
    results = json.loads((run / "results.json").read_text())
    assert results["task"] == "squad_v2" and results["config"]["model"]["init_args"]["backbone"] == hf
    assert {"exact", "f1", "main", "HasAns_exact", "NoAns_exact", "NoAns_f1"} <= set(results["metrics"])
    out = tmp_path / "hf"
    assert main(["export", results["best_checkpoint"], str(out)]) == 0
    net = AutoModelForSeq2SeqLM.from_pretrained(out)
    assert net.config.vocab_size == 30622  # the export's 100 sentinels kept
    assert "pipeline_tag: text2text-generation" in (out / "README.md").read_text()


def test_bad_input_is_one_line(tmp_path, capsys):
    run = tmp_path / "run"
    rc = apm(
        "fit",
        *_data(V1, 24, "--model.backbone", "minilm", "--model.backbone_config", "null"),
        *("--model.tokenizer", "null", "--trainer.default_root_dir", run),
    )
    assert rc == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("apm: error: minilm is a bert model, not an encoder-decoder")
    assert "QuestionAnsweringModule" in err and not run.exists()
    with pytest.raises(
        APMError, match="backbone_config .model_type bert. is a bert model, not an encoder-decoder"
    ):
        GenerativeQAModule(backbone_config={"model_type": "bert"}, tokenizer="minilm")
    with pytest.raises(APMError, match="no_answer_text='the' is empty once normalised"):
        GenerativeQAModule(backbone_config=T5, tokenizer="minilm", no_answer_text="the")
    rc = apm("fit", *_data(V1, 24, "--data.tokenizer", "minilm"), "--trainer.default_root_dir", run)
    assert rc == 2 and "leave data.tokenizer unset" in capsys.readouterr().err and not run.exists()
