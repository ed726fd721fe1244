"""SQuAD v1.1 / v2.0: official scoring on hand-computed cases and the real files, windows and
offsets on the real files, bad input, and tiny end-to-end runs of `apm fit` and `apm predict`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import SQUAD, SQUAD_COUNTS

from apm_lightning.cli import main
from apm_lightning.core.errors import APMError
from apm_lightning.data.squad import SQuADDataModule
from apm_lightning.data.squad_features import prepare_features
from apm_lightning.data.squad_files import QAExample, read_squad_file
from apm_lightning.metrics.squad import (
    exact_score,
    f1_score,
    find_best_thresh,
    gold_answers,
    normalize_answer,
    squad_v1_scores,
    squad_v2_scores,
    squad_v2_tuned,
)
from apm_lightning.modules.question_answering import postprocess

REPO = Path(__file__).resolve().parents[1]
V1 = SQUAD / "v1.1" / "dev-v1.1.json"
V2 = SQUAD / "v2.0" / "train-v2.0.first11articles.json"
TINY_QA = str(REPO / "experiments" / "models" / "tiny_bert_qa.yaml")


# ------------------------------------------------------------------ scoring by hand
def test_normalization_rules():
    assert normalize_answer("The Denver Broncos") == "denver broncos"  # case, article
    assert normalize_answer("an apple a day") == "apple day"  # every article
    assert normalize_answer("the theatre") == "theatre"  # whole words only
    assert normalize_answer("U.S.-based, (mostly)!") == "usbased mostly"  # punctuation goes
    assert normalize_answer("  two \t words\n") == "two words"  # whitespace
    assert normalize_answer("A. the") == ""  # punctuation first, then articles
    assert exact_score("the Denver Broncos!", "Denver  Broncos") == 1
    assert exact_score("Denver", "Denver Broncos") == 0


def test_f1_by_hand():
    # pred {denver, broncos, team}, gold {denver, broncos}: P = 2/3, R = 1, F1 = 0.8
    assert f1_score("Denver Broncos team", "the Denver Broncos") == pytest.approx(0.8)
    # Counts are clipped: cat x1 and dog x1 shared, P = R = 2/3
    assert f1_score("cat cat dog", "cat dog dog") == pytest.approx(2 / 3)
    assert f1_score("blue", "red") == 0.0
    # Empty answers (v2.0): agree only with each other
    assert f1_score("", "") == 1.0 and f1_score("", "a cat") == 0.0 and f1_score("cat", "") == 0.0


def test_v1_max_over_golds_and_missing_predictions():
    golds = {"q1": ["Paris", "the city of Paris"], "q2": ["Paris", "France"], "q3": ["Rome"]}
    preds = {"q1": "City of Paris.", "q2": "Paris France"}  # q3 unanswered scores 0
    scores = squad_v1_scores(golds, preds)
    # q1: exact 1 (second gold); q2: exact 0, F1 max(2/3, 2/3); q3: 0.
    assert scores["exact"] == pytest.approx(100 / 3)
    assert scores["f1"] == pytest.approx(100 * (1 + 2 / 3) / 3)
    assert scores["total"] == 3


def test_v1_agrees_with_torchmetrics():
    from torchmetrics.text import SQuAD

    golds = {"a": ["the cat", "a black cat"], "b": ["1990s", "late 1990s"], "c": ["red"], "d": ["New York"]}
    preds = {"a": "black cat sat", "b": "The late 1990s", "c": "blue", "d": "york new york"}
    metric = SQuAD()
    metric.update(
        [{"prediction_text": p, "id": q} for q, p in preds.items()],
        [{"answers": {"text": g, "answer_start": [0] * len(g)}, "id": q} for q, g in golds.items()],
    )
    expected = metric.compute()
    ours = squad_v1_scores(golds, preds)
    assert ours["exact"] == pytest.approx(float(expected["exact_match"]))
    assert ours["f1"] == pytest.approx(float(expected["f1"]), abs=1e-4)


def test_v2_unanswerable_and_breakdown():
    golds = {"a": [], "b": ["blue"], "c": [], "d": ["The"]}
    preds = {"a": "", "b": "blue sky", "c": "something", "d": ""}
    scores = squad_v2_scores(golds, preds)
    # a: "" for no answer = 1/1; b: exact 0, F1 2/3; c: text for no answer = 0/0;
    # d: a gold that normalises to nothing is dropped, so "" is right (script rule) = 1/1.
    assert scores["exact"] == pytest.approx(100 * 2 / 4)
    assert scores["f1"] == pytest.approx(100 * (1 + 2 / 3 + 0 + 1) / 4)
    assert scores["total"] == 4
    assert (scores["HasAns_total"], scores["NoAns_total"]) == (2, 2)  # has-answer: answers given
    assert scores["HasAns_exact"] == pytest.approx(50.0)
    assert scores["HasAns_f1"] == pytest.approx(100 * (2 / 3 + 1) / 2)
    assert scores["NoAns_exact"] == scores["NoAns_f1"] == pytest.approx(50.0)
    assert "best_f1" not in scores  # only with null odds


def test_v2_threshold_search_by_hand():
    golds = {"q1": ["cat"], "q2": [], "q3": ["dog"], "q4": []}
    answers = {"q1": "cat", "q2": "bird", "q3": "big dog", "q4": ""}
    odds = {"q1": 0.1, "q3": 0.4, "q2": 0.7, "q4": 0.9}
    # Start from answering nothing: q2, q4 right = 2. Answer by rising odds:
    # q1 +1 (3, best, t=0.1); q3 exact +0 / F1 +2/3 (F1 3.667, best, t=0.4); q2 -1; q4 +0.
    scores = squad_v2_scores(golds, answers, odds)
    assert (scores["best_exact"], scores["best_exact_thresh"]) == (pytest.approx(75.0), 0.1)
    assert (scores["best_f1"], scores["best_f1_thresh"]) == (pytest.approx(100 * (3 + 2 / 3) / 4), 0.4)
    # Default na_prob_thresh 1.0: nothing is above it, so these are the raw scores.
    assert scores["exact"] == pytest.approx(50.0)
    assert scores["f1"] == pytest.approx(100 * (1 + 2 / 3 + 1) / 4)
    exact = {"q1": 1, "q2": 0, "q3": 0, "q4": 1}
    assert find_best_thresh(answers, exact, odds, {q: bool(g) for q, g in golds.items()}) == (75.0, 0.1)
    # The model's choice: the best-F1 threshold, applied ("" above it).
    tuned, threshold = squad_v2_tuned(golds, answers, odds)
    assert threshold == 0.4
    assert tuned["f1"] == pytest.approx(tuned["best_f1"]) and tuned["exact"] == pytest.approx(75.0)
    assert tuned["NoAns_exact"] == 100.0 and tuned["HasAns_f1"] == pytest.approx(100 * (1 + 2 / 3) / 2)


def test_v2_threshold_when_answering_nothing_is_best():
    golds, answers, odds = {"a": [], "b": []}, {"a": "x", "b": "y"}, {"a": 0.5, "b": 2.0}
    assert squad_v2_scores(golds, answers, odds)["best_f1_thresh"] == 0.0  # the script's value
    tuned, threshold = squad_v2_tuned(golds, answers, odds)
    assert threshold < 0.5 and tuned["exact"] == tuned["f1"] == 100.0


def test_gold_answers_score_100_on_the_real_files():
    v1 = gold_answers(json.loads(V1.read_text())["data"])
    assert len(v1) == SQUAD_COUNTS["v1_questions"]
    assert squad_v1_scores(v1, {q: g[0] for q, g in v1.items()}) == {
        "exact": 100.0,
        "f1": 100.0,
        "total": SQUAD_COUNTS["v1_questions"],
    }
    v2 = gold_answers(json.loads(V2.read_text())["data"])
    preds = {q: g[0] if g else "" for q, g in v2.items()}
    scores = squad_v2_scores(v2, preds, {q: 0.0 if g else 1.0 for q, g in v2.items()})
    assert scores["exact"] == scores["f1"] == 100.0
    counts = SQUAD_COUNTS["v2_questions"], SQUAD_COUNTS["v2_answerable"], SQUAD_COUNTS["v2_unanswerable"]
    assert (scores["total"], scores["HasAns_total"], scores["NoAns_total"]) == counts
    assert scores["HasAns_f1"] == scores["NoAns_exact"] == scores["best_f1"] == 100.0


# ------------------------------------------------------------------ windows and offsets
@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    from apm_lightning.modules.hf_export import resolve_backbone

    return AutoTokenizer.from_pretrained(resolve_backbone("minilm"))


@pytest.mark.parametrize("path", [V1, V2], ids=["v1.1-dev", "v2.0-train11"])
@pytest.mark.parametrize("window", [(384, 128, 64), (128, 64, 32)], ids=["384-128", "128-64"])
def test_labels_map_back_to_every_gold_answer(tokenizer, path, window):
    examples = [q for article in read_squad_file(path).articles for q in article]
    feats = prepare_features(tokenizer, examples, *window, labels=True, offsets=True)
    found: dict[str, str] = {}  # question id -> "exact" | "subword"
    for i, (s, e) in enumerate(zip(feats["start_positions"], feats["end_positions"], strict=True)):
        example, offsets = examples[feats["example_index"][i]], feats["offset_mapping"][i]
        assert len(offsets) == len(feats["input_ids"][i]) <= window[0]
        if (s, e) == (0, 0):
            continue  # [CLS]: unanswerable, or the answer is not in this window
        assert example.answers and 0 < s <= e and offsets[s] is not None and offsets[e] is not None
        a0 = example.answer_starts[0]
        a1 = a0 + len(example.answers[0])
        b0, b1 = offsets[s][0], offsets[e][1]
        assert b0 <= a0 and a1 <= b1  # the labelled tokens cover the answer
        if normalize_answer(example.context[b0:b1]) == normalize_answer(example.answers[0]):
            found.setdefault(example.id, "exact")
        else:
            # Only where the answer starts or ends inside a token ("gold" of "golden").
            token_starts = {o[0] for o in offsets if o}
            token_ends = {o[1] for o in offsets if o}
            assert a0 not in token_starts or a1 not in token_ends, (example.id, example.context[b0:b1])
            found.setdefault(example.id, "subword")
    answerable = [q.id for q in examples if q.answers]
    assert set(found) == set(answerable)  # every answer is labelled in some window
    assert sum(v == "subword" for v in found.values()) < 0.01 * len(answerable)
    for q in examples:  # every unanswerable question has only [CLS] labels
        assert q.answers or q.id not in found
    if window[0] == 128:
        assert len(feats["input_ids"]) > 2 * len(examples)  # long contexts -> many windows


def test_postprocess_by_hand():
    ex = QAExample("q", "t", "The cat sat on the mat.", "Where?", ("the mat",), (15,))
    # tokens: [CLS] where ? [SEP] the cat sat on the mat . [SEP]
    offsets = [None, None, None, None, [0, 3], [4, 7], [8, 11], [12, 14], [15, 18], [19, 22], [22, 23], None]
    start = np.full(12, -5.0)
    end = np.full(12, -5.0)
    start[1], end[1] = 9.0, 9.0  # the question: never an answer
    start[8], end[9] = 3.0, 3.0  # "the mat"
    start[9], end[5] = 2.5, 4.0  # (9, 5) scores 6.5 but is reversed: dropped
    start[0] = end[0] = 1.0  # null score 2
    answers, odds = postprocess([ex], [(0, offsets, start, end)])
    assert answers == {"q": "the mat"} and odds["q"] == pytest.approx(2.0 - 6.0)
    # max_answer_length 1: the best single-token span is "mat" (2.5 + 3).
    answers, _ = postprocess([ex], [(0, offsets, start, end)], max_answer_length=1)
    assert answers == {"q": "mat"}


# ------------------------------------------------------------------ the data module
def test_split_by_article_and_version_detection():
    dm = SQuADDataModule(train_file=str(V1), split_by_article=24)
    dm.check("fit")
    train, val = dm.examples("train"), dm.examples("validation")
    total = SQUAD_COUNTS["v1_questions"]
    assert len(train) + len(val) == total and not {q.id for q in train} & {q.id for q in val}
    articles = read_squad_file(V1).articles
    assert [q.id for q in train] == [q.id for a in articles[:24] for q in a]
    assert dm.squad_version == 1 and dm.split_names("fit") == ["validation"]
    dm2 = SQuADDataModule(train_file=str(V2), split_by_article=6, max_train_samples=10)
    dm2.check("fit")
    assert dm2.squad_version == 2 and len(dm2.examples("train")) == 10
    assert [q.id for q in dm2.examples("predict")] == [q.id for q in dm2.examples("validation")]


def _write(path: Path, data) -> str:
    path.write_text(data if isinstance(data, str) else json.dumps(data), encoding="utf-8")
    return str(path)


def _squad(answer_start: int = 4, text: str = "cat", **qa) -> dict:
    question = {
        "id": "q1",
        "question": "What?",
        "answers": [{"text": text, "answer_start": answer_start}],
        **qa,
    }
    return {
        "version": "1.1",
        "data": [{"title": "Cats", "paragraphs": [{"context": "The cat sat.", "qas": [question]}]}],
    }


@pytest.mark.parametrize(
    "content, message",
    [
        ("{not json", "not valid JSON"),
        ({"version": "1.1"}, "'data' list"),
        ({"data": [{"title": "Cats"}]}, "article 'Cats' has no 'paragraphs'"),
        (_squad(answer_start=5), "question q1 (article 'Cats'): answer 'cat' does not match"),
        (_squad(text="dog"), "found 'cat'"),
        (
            {"data": [{"title": "Cats", "paragraphs": [{"context": "x", "qas": [{"id": "q1"}]}]}]},
            "lacks 'id' or",
        ),
    ],
)
def test_bad_files_fail_with_one_line(tmp_path, content, message):
    path = _write(tmp_path / "bad.json", content)
    with pytest.raises(APMError, match="bad.json") as err:
        read_squad_file(path)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_bad_settings(tmp_path):
    good = _write(tmp_path / "ok.json", _squad())
    v2 = _write(tmp_path / "v2.json", _squad(answers=[], is_impossible=True))
    with pytest.raises(APMError, match="version is 1"):
        SQuADDataModule(train_file=v2, validation_file=good, version=1).check("fit")
    with pytest.raises(APMError, match="leaves no validation articles"):
        SQuADDataModule(train_file=good, split_by_article=1).check("fit")
    with pytest.raises(APMError, match="no validation data"):
        SQuADDataModule(train_file=good).check("fit")
    with pytest.raises(APMError, match="not found"):
        SQuADDataModule(train_file=str(tmp_path / "missing.json"), validation_file=good).check("fit")
    with pytest.raises(APMError, match="offline"):
        SQuADDataModule().check("fit")  # no files, no $APM_DATA_DIR, no hub


# ------------------------------------------------------------------ end to end
def apm(*args) -> int:
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
    )


def _common(version: int) -> list:
    path, articles = (V1, 24) if version == 1 else (V2, 6)
    return [
        "-c",
        REPO / "experiments" / "squad" / f"v{version}.yaml",
        "-c",
        TINY_QA,
        "--data.train_file",
        path,
        "--data.split_by_article",
        articles,
        "--data.max_seq_length",
        128,
        "--data.doc_stride",
        64,
        "--data.max_query_length",
        32,
        "--data.batch_size",
        8,
    ]


@pytest.mark.parametrize("version", [1, 2])
def test_fit_and_predict(tmp_path, version, capsys):
    run = tmp_path / "run"
    rc = apm(
        "fit",
        *_common(version),
        "--data.max_train_samples",
        16,
        "--data.max_eval_samples",
        16,
        "--trainer.max_epochs",
        1,
        "--trainer.default_root_dir",
        run,
        "--seed_everything",
        3,
    )
    assert rc == 0
    results = json.loads((run / "results.json").read_text())
    metrics = results["metrics"]
    assert results["task"] == f"squad_v{version}" and results["train_examples"] > 16
    assert {"exact", "f1", "main"} <= set(metrics) and 0 <= metrics["exact"] <= metrics["f1"] <= 100
    assert metrics["main"] == pytest.approx((metrics["exact"] + metrics["f1"]) / 2)
    if version == 2:
        assert {"HasAns_exact", "HasAns_f1", "best_f1", "null_threshold"} <= set(metrics)
        assert metrics["f1"] == pytest.approx(metrics["best_f1"])
    ckpt = results["best_checkpoint"]
    assert torch.load(ckpt, weights_only=True)["apm"]["task"] == f"squad_v{version}"

    rc = apm(
        "predict",
        *_common(version),
        "--data.max_predict_samples",
        20,
        "--trainer.default_root_dir",
        run,
        "--ckpt_path",
        ckpt,
    )
    assert rc == 0
    articles = read_squad_file(V1 if version == 1 else V2).articles
    expected = [q.id for a in articles[24 if version == 1 else 6 :] for q in a][:20]
    predictions = json.loads((run / "predictions" / "predictions.json").read_text())
    assert list(predictions) == expected and all(isinstance(v, str) for v in predictions.values())
    odds = run / "predictions" / "null_odds.json"
    assert odds.is_file() == (version == 2)
    if version == 2:
        assert list(json.loads(odds.read_text())) == expected


def test_checkpoint_identity_and_export(tmp_path):
    from transformers import AutoModelForQuestionAnswering

    from apm_lightning.modules.hf_export import export_checkpoint, load_module_from_checkpoint
    from apm_lightning.modules.question_answering import QuestionAnsweringModule

    run = tmp_path / "run"
    args = ["--data.max_train_samples", 8, "--data.max_eval_samples", 8, "--trainer.max_epochs", 1]
    assert apm("fit", *_common(2), *args, "--trainer.default_root_dir", run) == 0
    ckpt = json.loads((run / "results.json").read_text())["best_checkpoint"]
    checkpoint = torch.load(ckpt, weights_only=True)
    other = QuestionAnsweringModule(
        backbone_config={
            "model_type": "bert",
            "hidden_size": 16,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
        }
    )
    with pytest.raises(APMError, match="backbone_config"):
        other.on_load_checkpoint(checkpoint)
    module = load_module_from_checkpoint(ckpt).eval()
    assert module.results_label == "squad_v2" and module.null_threshold == checkpoint["apm"]["null_threshold"]
    out = export_checkpoint(ckpt, tmp_path / "hf")
    net = AutoModelForQuestionAnswering.from_pretrained(out).eval()
    ids = torch.tensor([[101, 2054, 102, 1996, 4937, 102]])
    with torch.no_grad():
        assert torch.allclose(
            net(input_ids=ids).start_logits, module.net(input_ids=ids).start_logits, atol=1e-6
        )


def test_cli_bad_file_is_one_line(tmp_path, capsys):
    bad = _write(tmp_path / "bad.json", _squad(answer_start=0))
    rc = apm(
        "fit",
        *_common(1)[:4],
        "--data.train_file",
        bad,
        "--data.split_by_article",
        1,
        "--trainer.default_root_dir",
        tmp_path / "run",
    )
    assert rc == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("apm: error: ") and "bad.json" in err[-1] and "q1" in err[-1]
    assert not (tmp_path / "run").exists()


def test_decoder_backbones_and_unsupported_types():
    from apm_lightning.modules.question_answering import build_qa_network

    net = build_qa_network(None, {"model_type": "gpt2", "n_layer": 1, "n_embd": 16, "n_head": 2}, False)
    out = net(
        input_ids=torch.tensor([[5, 6, 7, 8]]),
        start_positions=torch.tensor([2]),
        end_positions=torch.tensor([3]),
    )
    assert type(net).__name__ == "GPT2ForQuestionAnswering" and out.start_logits.shape == (1, 4)
    with pytest.raises(APMError, match="no question-answering head"):
        build_qa_network(None, {"model_type": "vit"}, False)


def test_a_checkpoint_naming_an_unknown_squad_task_is_refused_in_one_line():
    from apm_lightning.core.errors import APMError
    from apm_lightning.modules.squad_base import SQuADModule

    module = SQuADModule()
    with pytest.raises(APMError, match="expected squad_v1 or squad_v2"):
        module.restore_extras({"task": "squad_vX"})  # was a ValueError from int("X")
    module.restore_extras({"task": "squad_v2"})
    assert module.version == 2 and module.results_label == "squad_v2"
