"""``apm tokenizer train``: WordPiece, byte-level BPE and Unigram tokenizers that
``AutoTokenizer`` loads, with every special token and the CLS/SEP template."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import REAL_DATA
from transformers import AutoTokenizer

from apm_lightning.cli import main
from apm_lightning.core.errors import APMError
from apm_lightning.data.text_sources import TextSource
from apm_lightning.data.tokenizer_training import (
    KINDS,
    RECORD_FILE,
    SPECIAL_TOKENS,
    min_vocab_size,
    train_tokenizer,
)

VOCAB = 800
SENTENCE = "Emma Woodhouse, handsome and clever and rich, had lived nearly twenty-one years in the world."


@pytest.fixture(scope="module")
def emma(data_root: Path) -> Path:
    path = data_root / "corpus" / "nltk-gutenberg" / "austen-emma.txt"
    if not path.is_file():
        pytest.skip(f"{path} is missing")
    return path


@pytest.fixture(scope="module", params=KINDS)
def trained(request, emma: Path, tmp_path_factory) -> tuple[str, Path]:
    kind = request.param
    out = tmp_path_factory.mktemp("tok") / kind
    path = train_tokenizer(TextSource(files=[str(emma)]).documents(), kind, VOCAB, out)
    return kind, path


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert "Traceback" not in "\n".join(err)
    assert len(err) == 1 and err[0].startswith("apm: error: "), err
    return err[0]


def test_loads_with_every_special_token(trained):
    kind, out = trained
    tok = AutoTokenizer.from_pretrained(out)
    specials = SPECIAL_TOKENS[kind]
    assert (tok.pad_token, tok.unk_token, tok.cls_token, tok.sep_token, tok.mask_token) == (
        specials.pad,
        specials.unk,
        specials.cls,
        specials.sep,
        specials.mask,
    )
    assert tok.bos_token == tok.cls_token and tok.eos_token == tok.sep_token
    assert tok.pad_token_id == 0
    ids = [tok.pad_token_id, tok.unk_token_id, tok.cls_token_id, tok.sep_token_id, tok.mask_token_id]
    assert ids == [0, 1, 2, 3, 4]
    assert tok.model_max_length == 512
    # The vocabulary is the size asked for (a little less is allowed: the trainer may stop early).
    assert VOCAB - 50 <= len(tok) <= VOCAB
    record = json.loads((out / RECORD_FILE).read_text())
    assert record["kind"] == kind and record["vocab_size"] == len(tok) and record["lowercase"] is True
    assert record["documents"] > 1000 and record["characters"] > 500_000


def test_round_trip(trained):
    kind, out = trained
    tok = AutoTokenizer.from_pretrained(out)
    ids = tok(SENTENCE)["input_ids"]
    assert tok.unk_token_id not in ids
    decoded = tok.decode(ids, skip_special_tokens=True)
    if kind == "wordpiece":  # BERT's decoder leaves spaces around some punctuation
        assert "".join(decoded.split()) == "".join(SENTENCE.lower().split())
    else:
        assert decoded.strip() == SENTENCE.lower()
    # The mask token is found in text as one token, not split up or lowercased.
    masked = tok(f"she was {tok.mask_token} and clever")["input_ids"]
    assert masked.count(tok.mask_token_id) == 1


def test_single_and_pair_template(trained):
    kind, out = trained
    tok = AutoTokenizer.from_pretrained(out)
    cls, sep = tok.cls_token_id, tok.sep_token_id
    a = tok("handsome and clever")
    b = tok("had lived nearly")
    n_a, n_b = len(a["input_ids"]) - 2, len(b["input_ids"]) - 2
    assert a["input_ids"][0] == cls and a["input_ids"][-1] == sep
    assert a["input_ids"].count(cls) == 1 and a["input_ids"].count(sep) == 1

    pair = tok("handsome and clever", "had lived nearly")
    ids = pair["input_ids"]
    assert ids[0] == cls
    assert [i for i, t in enumerate(ids) if t == sep] == [n_a + 1, len(ids) - 1]
    if kind == "bpe":  # RoBERTa style: no segment ids
        assert "token_type_ids" not in pair
    else:
        assert pair["token_type_ids"] == [0] * (n_a + 2) + [1] * (len(ids) - n_a - 2)
    # Batches pad with id 0.
    batch = tok(["handsome", "had lived nearly twenty-one years"], padding=True)
    assert batch["input_ids"][0][-1] == 0 and batch["attention_mask"][0][-1] == 0
    assert n_b > 0


def test_no_lowercase_keeps_case(emma, tmp_path):
    out = train_tokenizer(
        TextSource(files=[str(emma)], max_documents=500).documents(),
        "wordpiece",
        500,
        tmp_path / "cased",
        lowercase=False,
    )
    tok = AutoTokenizer.from_pretrained(out)
    assert "Emma" in tok.convert_ids_to_tokens(tok("Emma")["input_ids"])
    assert json.loads((out / RECORD_FILE).read_text())["lowercase"] is False


def test_refuses_non_empty_out_and_bad_arguments(tmp_path, monkeypatch):
    texts = ["the cat sat on the mat"] * 5
    out = tmp_path / "taken"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(APMError, match="not empty"):
        train_tokenizer(texts, "wordpiece", 500, out)
    assert (out / "keep.txt").read_text() == "mine" and len(list(out.iterdir())) == 1
    with pytest.raises(APMError, match="unknown tokenizer kind"):
        train_tokenizer(texts, "sentencepiece", 500, tmp_path / "a")
    with pytest.raises(APMError, match="too small"):
        train_tokenizer(texts, "wordpiece", 50, tmp_path / "b")
    with pytest.raises(APMError, match="too small"):
        train_tokenizer(texts, "bpe", min_vocab_size("bpe") - 1, tmp_path / "c")
    with pytest.raises(APMError, match="no text"):
        train_tokenizer(["", "  \n"], "unigram", 500, tmp_path / "d")
    assert not any(p.name != "taken" for p in tmp_path.iterdir())  # nothing half-written

    # --overwrite never removes the working folder or one of its parents.
    inner = out / "inner"
    inner.mkdir()
    monkeypatch.chdir(inner)
    with pytest.raises(APMError, match="refusing to replace"):
        train_tokenizer(texts, "wordpiece", 500, "..", overwrite=True)
    monkeypatch.chdir(tmp_path)
    inner.rmdir()

    # With overwrite the folder is replaced whole.
    train_tokenizer(texts, "wordpiece", 500, out, overwrite=True)
    assert not (out / "keep.txt").exists() and (out / "tokenizer.json").is_file()


def test_cli_trains_from_files(emma, tmp_path, capsys):
    out = tmp_path / "cli-bpe"
    argv = ["tokenizer", "train", "--kind", "bpe", "--vocab-size", "600", "--files", str(emma)]
    assert main([*argv, "--max-documents", "800", "--out", str(out)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-1] == str(out.resolve())
    tok = AutoTokenizer.from_pretrained(out)
    assert tok.pad_token_id == 0 and len(tok) <= 600
    assert json.loads((out / RECORD_FILE).read_text())["documents"] == 800

    # A second run into the same folder is refused, then allowed with --overwrite.
    assert main([*argv, "--max-documents", "100", "--out", str(out)]) == 2
    assert "not empty" in one_line_error(capsys)
    assert main([*argv, "--max-documents", "100", "--out", str(out), "--overwrite"]) == 0
    assert json.loads((out / RECORD_FILE).read_text())["documents"] == 100


def test_cli_jsonl_text_field(tmp_path, capsys):
    records = tmp_path / "docs.jsonl"
    words = "the quick brown fox jumps over a lazy dog while seven wizards quietly box".split()
    lines = [json.dumps({"id": i, "body": " ".join(words[i % 7 :] + words[: i % 7])}) for i in range(200)]
    records.write_text("\n".join(lines) + "\n")
    out = tmp_path / "uni"
    argv = ["tokenizer", "train", "--kind", "unigram", "--vocab-size", "200", "--out", str(out)]
    assert main([*argv, "--files", str(records), "--text-field", "body"]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == str(out.resolve())
    tok = AutoTokenizer.from_pretrained(out)
    assert tok.decode(tok("the lazy dog")["input_ids"], skip_special_tokens=True) == "the lazy dog"

    other = tmp_path / "uni2"
    assert main([*argv, "--files", str(records), "--text-field", "text", "--out", str(other)]) == 2
    assert "no field 'text'" in one_line_error(capsys)
    assert not other.exists()


def test_cli_glue_task_text(glue_dir, tmp_path, capsys):
    out = tmp_path / "cola"
    argv = ["tokenizer", "train", "--kind", "wordpiece", "--vocab-size", "500", "--out", str(out)]
    cap = str(2000 if REAL_DATA else 100)  # the generated CoLA has 120 training rows
    assert main([*argv, "--glue-task", "cola", "--data-dir", str(glue_dir), "--max-documents", cap]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == str(out.resolve())
    assert json.loads((out / RECORD_FILE).read_text())["documents"] == int(cap)


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--kind", "wordpiece", "--files", "/nonexistent/*.txt"], "no text files match"),
        (["--kind", "sentencepiece", "--files", "{emma}"], "unknown tokenizer kind"),
        (["--kind", "wordpiece"], "no text given"),
        (["--kind", "bpe", "--files", "{emma}", "--vocab-size", "100"], "too small"),
    ],
)
def test_cli_bad_input(extra, message, emma, tmp_path, capsys):
    out = tmp_path / "never"
    extra = [e.format(emma=emma) for e in extra]
    argv = ["tokenizer", "train", "--vocab-size", "500", "--out", str(out), *extra]
    assert main(argv) == 2
    assert message in one_line_error(capsys)
    assert not out.exists()
    assert not list(tmp_path.iterdir())


def test_cli_unknown_action(capsys):
    assert main(["tokenizer", "learn"]) == 2
    assert "apm tokenizer train" in one_line_error(capsys)
