"""Tests for the GLUE BiLSTM baseline (apm_lightning/models/bilstm.py); tiny sizes, CPU."""

from __future__ import annotations

import pytest
import torch

from apm_lightning.core.errors import APMError
from apm_lightning.models.bilstm import (
    PRESETS,
    BiLSTMEncoder,
    BiLSTMPairClassifier,
    build_word_tokenizer,
    load_glove,
    word_tokenizer_from_json,
    word_tokenizer_to_json,
)

TEXTS = [
    "The cat sat on the mat.",
    "A dog sat on a log!",
    "zebra yak xylophone walrus",  # all count 1: ids are decided by tie-breaking
    "the the cat",
]


def _tiny(pair: bool = True, num_labels: int = 3, **kw) -> BiLSTMPairClassifier:
    torch.manual_seed(0)
    args = {
        "embedding_dim": 8,
        "hidden_size": 6,
        "num_layers": 2,
        "mlp_hidden": 10,
        "dropout": 0.1,
    }
    args.update(kw)
    return BiLSTMPairClassifier(20, num_labels, pair=pair, **args)


# --------------------------------------------------------------------------- presets


def test_presets_match_the_paper() -> None:
    assert PRESETS["paper"] == {
        "embedding_dim": 300,
        "hidden_size": 1500,
        "num_layers": 2,
        "mlp_hidden": 512,
        "dropout": 0.1,
    }
    assert PRESETS["cpu"]["hidden_size"] == 128
    assert PRESETS["cpu"].keys() == PRESETS["paper"].keys()


# --------------------------------------------------------------------------- tokenizer


def test_tokenizer_special_ids_and_frequency_order() -> None:
    tok = build_word_tokenizer(TEXTS)
    vocab = tok.get_vocab()
    assert vocab["[PAD]"] == 0 and vocab["[UNK]"] == 1
    assert tok.pad_token_id == 0 and tok.unk_token_id == 1
    # "the" occurs 4 times (lowercased), then "sat" 2, "on" 2, "a" 2, "cat" 2.
    assert vocab["the"] == 2
    assert "The" not in vocab
    # Frequency ties are broken by the word, so the ids do not depend on hash order.
    ones = sorted(["zebra", "yak", "xylophone", "walrus", "mat", "dog", "log", ".", "!"])
    assert [vocab[w] for w in ones] == sorted(vocab[w] for w in ones)
    twos = sorted(["sat", "on", "a", "cat"])
    assert [vocab[w] for w in twos] == [3, 4, 5, 6]
    assert len(vocab) == 2 + 1 + 4 + len(ones)
    # Punctuation is split off and unknown words map to [UNK].
    assert tok("cat. unicorn")["input_ids"] == [vocab["cat"], vocab["."], 1]


def test_tokenizer_is_deterministic() -> None:
    a = build_word_tokenizer(TEXTS).get_vocab()
    b = build_word_tokenizer(iter(list(TEXTS))).get_vocab()
    assert a == b


def test_tokenizer_vocab_size_min_frequency_and_case() -> None:
    tok = build_word_tokenizer(TEXTS, vocab_size=5)
    assert sorted(tok.get_vocab().values()) == [0, 1, 2, 3, 4]
    assert set(tok.get_vocab()) == {"[PAD]", "[UNK]", "the", "a", "cat"}
    tok = build_word_tokenizer(TEXTS, min_frequency=2)
    assert set(tok.get_vocab()) == {"[PAD]", "[UNK]", "the", "sat", "on", "a", "cat"}
    cased = build_word_tokenizer(TEXTS, lowercase=False).get_vocab()
    assert "The" in cased and "A" in cased
    with pytest.raises(APMError, match="vocab_size"):
        build_word_tokenizer(TEXTS, vocab_size=1)


def test_tokenizer_json_round_trip() -> None:
    tok = build_word_tokenizer(TEXTS)
    restored = word_tokenizer_from_json(word_tokenizer_to_json(tok))
    assert restored.get_vocab() == tok.get_vocab()
    assert restored.pad_token_id == 0 and restored.unk_token_id == 1
    batch = ["The CAT sat, on a unicorn.", "", "yak"]
    assert restored(batch, padding=True)["input_ids"] == tok(batch, padding=True)["input_ids"]
    with pytest.raises(APMError, match="retrain"):
        word_tokenizer_from_json("{not json")


# --------------------------------------------------------------------------- GloVe


VOCAB = {
    "[PAD]": 0,
    "[UNK]": 1,
    "the": 2,
    "cat": 3,
    "new york": 4,
    "paris": 5,
    "absent": 6,
}


def _write(tmp_path, lines: list[str]):
    path = tmp_path / "glove.txt"
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def test_load_glove_values_case_and_spaces(tmp_path) -> None:
    path = _write(
        tmp_path,
        [
            "3 3",  # word2vec-style header
            "the 0.1 0.2 0.3",
            "Paris 1.5 -2 3e-1",  # only a cased form: used for "paris"
            "unused x y z",  # not in vocab: skipped without parsing
            "new york 7 8 9",  # word with a space
            "CAT 9 9 9",  # case-insensitive, but the exact "cat" below wins
            "cat -1 -2 -3",
            "THE 5 5 5",  # must not overwrite the exact "the"
        ],
    )
    matrix, found = load_glove(path, VOCAB, 3)
    assert matrix.shape == (7, 3)
    assert found == 4
    assert torch.equal(matrix[2], torch.tensor([0.1, 0.2, 0.3]))
    assert torch.equal(matrix[3], torch.tensor([-1.0, -2.0, -3.0]))
    assert torch.equal(matrix[4], torch.tensor([7.0, 8.0, 9.0]))
    assert torch.equal(matrix[5], torch.tensor([1.5, -2.0, 0.3]))
    assert torch.equal(matrix[0], torch.zeros(3))
    # Rows not found are small, seeded random values, identical on every call.
    for row in (1, 6):
        assert 0 < matrix[row].abs().max() < 1
    again, _ = load_glove(path, VOCAB, 3)
    assert torch.equal(matrix, again)


def test_load_glove_cased_vocab_finds_uncased_file(tmp_path) -> None:
    path = _write(tmp_path, ["the 1 2", "paris 3 4"])
    matrix, found = load_glove(path, {"[PAD]": 0, "The": 1, "Paris": 2, "x": 3}, 2)
    assert found == 2
    assert matrix[1].tolist() == [1.0, 2.0] and matrix[2].tolist() == [3.0, 4.0]


def test_load_glove_errors(tmp_path) -> None:
    with pytest.raises(APMError, match="not found"):
        load_glove(tmp_path / "missing.txt", VOCAB, 3)

    short = _write(tmp_path, ["the 1 2 3", "cat 1 2 3", "absent 1 2"])
    with pytest.raises(APMError, match=r"glove\.txt:3: vector has 2 values but dim=3"):
        load_glove(short, VOCAB, 3)

    # A 3D file loaded as 2D: the first data line reveals the mismatch.
    with pytest.raises(APMError, match=r":1: vector has 3 values but dim=2"):
        load_glove(short, VOCAB, 2)

    bad_number = _write(tmp_path, ["the 1 2 3", "cat 1 oops 3"])
    with pytest.raises(APMError, match=r"glove\.txt:2: non-numeric"):
        load_glove(bad_number, VOCAB, 3)

    header = _write(tmp_path, ["10 300", "the 1 2 3"])
    with pytest.raises(APMError, match=r":1: header says the vectors have 300 values"):
        load_glove(header, VOCAB, 3)


# --------------------------------------------------------------------------- encoder


def test_max_pooling_ignores_padding() -> None:
    torch.manual_seed(0)
    enc = BiLSTMEncoder(vocab_size=20, embedding_dim=8, hidden_size=6, num_layers=2, dropout=0.3)
    enc.eval()
    ids = torch.tensor([[5, 6, 7]])
    padded = torch.tensor([[5, 6, 7, 0, 0, 0, 0], [3, 4, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0, 0]])
    with torch.no_grad():
        alone = enc(ids)
        batch = enc(padded)
    assert alone.shape == (1, 12) and batch.shape == (3, 12)
    assert torch.allclose(alone[0], batch[0], atol=1e-6)
    assert torch.isfinite(batch).all()  # the all-padding row is still a real vector

    # Max pooling, not last state: the result is the per-feature max of the LSTM outputs.
    with torch.no_grad():
        out, _ = enc.lstm(enc.embedding(ids))
    assert torch.allclose(alone[0], out[0].max(dim=0).values, atol=1e-6)


def test_encoder_rejects_left_padding() -> None:
    enc = BiLSTMEncoder(20, 4, 3, 1, 0.0)
    with pytest.raises(APMError, match="pad on the"):
        enc(torch.tensor([[0, 5, 6]]))


# --------------------------------------------------------------------------- classifier


def test_pair_classifier_shapes_and_features() -> None:
    model = _tiny().eval()
    a = torch.tensor([[2, 3, 4, 0], [5, 6, 0, 0]])
    b = torch.tensor([[7, 8], [9, 0]])
    b2 = torch.tensor([[7, 11], [9, 0]])
    with torch.no_grad():
        out = model(a, b)
        out_b2 = model(a, b2)
        swapped = model(b, a)
        u = model.encoder(a)
        v = model.encoder(b)
        manual = model.classifier(torch.cat([u, v, (u - v).abs(), u * v], dim=-1))
    assert out.shape == (2, 3)
    assert model.classifier[0].in_features == 4 * 12
    assert torch.allclose(out, manual, atol=1e-6)  # same encoder for both sentences
    assert not torch.allclose(out_b2[0], out[0])  # changing b changes the output
    assert torch.allclose(out_b2[1], out[1], atol=1e-6)  # ...only where b changed
    assert not torch.allclose(swapped, out)  # [u; v] is ordered
    with pytest.raises(APMError, match="input_ids_b"):
        model(a)


def test_single_and_regression_heads() -> None:
    single = _tiny(pair=False, num_labels=2).eval()
    assert single.classifier[0].in_features == 12
    assert single(torch.tensor([[2, 3, 0]])).shape == (1, 2)
    with pytest.raises(APMError, match="pair=False"):
        single(torch.tensor([[2]]), torch.tensor([[3]]))

    reg = _tiny(num_labels=1)
    out = reg(torch.tensor([[2, 3], [4, 0], [5, 6]]), torch.tensor([[7], [8], [9]]))
    assert out.shape == (3, 1) and out.dtype == torch.float32


def test_load_pretrained_embeddings() -> None:
    model = _tiny()
    matrix = torch.arange(20 * 8, dtype=torch.float64).reshape(20, 8)
    model.load_pretrained_embeddings(matrix)
    assert torch.equal(model.encoder.embedding.weight, matrix.float())
    assert model.encoder.embedding.weight.requires_grad
    with pytest.raises(APMError, match=r"\(20, 7\).*\(20, 8\)"):
        model.load_pretrained_embeddings(torch.zeros(20, 7))


def test_training_reduces_loss_on_separable_pairs() -> None:
    # Label 1 iff both sentences start with the same word: only learnable from the pair.
    gen = torch.Generator().manual_seed(0)
    n, t = 32, 5
    a = torch.randint(2, 8, (n, t), generator=gen)
    b = torch.randint(2, 8, (n, t), generator=gen)
    labels = torch.arange(n) % 2
    b[labels == 1, 0] = a[labels == 1, 0]
    b[labels == 0, 0] = (a[labels == 0, 0] - 2 + 1) % 6 + 2  # a different word
    b[::3, 3:] = 0  # some padding

    model = _tiny(num_labels=2, dropout=0.0, hidden_size=16, mlp_hidden=32)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(25):
        loss = torch.nn.functional.cross_entropy(model(a, b), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[0] > 0.6  # chance level, ln 2 ~ 0.69
    assert losses[-1] < 0.25 * losses[0]
