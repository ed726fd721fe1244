"""More bad input, each refused with one line and exit status 2 before anything is written:
text encodings, batch sizes and row limits, sequence lengths past the model's positions,
unreadable config files and parser errors, accelerators that are not there, output paths that
cannot be folders, contradictory model settings, unreadable split files, resumes with other
data settings; and the tokenization cache follows file content, not size and mtime."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from apm_lightning.cli import main
from run_options import QUIET

REPO = Path(__file__).resolve().parents[1]
GLUE = REPO.parent / "shared" / "data" / "glue"
TINY = str(REPO / "experiments" / "models" / "tiny_bert.yaml")

pytestmark = pytest.mark.skipif(not GLUE.is_dir(), reason="../shared/data/glue is missing")

SST2_HEADER = "sentence\tlabel"


def fit_args(task: str, data_dir: Path | str, run_dir: Path, *extra) -> list[str]:
    return [
        "fit",
        "-c",
        str(REPO / f"experiments/glue/{task}.yaml"),
        "-c",
        TINY,
        "--data.data_dir",
        str(data_dir),
        "--data.max_train_samples",
        "16",
        "--data.max_eval_samples",
        "16",
        "--data.batch_size",
        "8",
        "--data.max_seq_length",
        "32",
        "--trainer.max_epochs",
        "1",
        "--trainer.default_root_dir",
        str(run_dir),
        *QUIET,
        *map(str, extra),
    ]


def run_fit(task: str, data_dir: Path | str, run_dir: Path, *extra) -> int:
    return main(fit_args(task, data_dir, run_dir, *extra))


def one_line_error(capsys) -> str:
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert "Traceback" not in captured.err, captured.err
    assert len(err) >= 1 and err[-1].startswith("apm: error: "), err
    # the reason itself is the only line of the error (no usage dump before it)
    assert not any(line.startswith(("usage:", "error:")) for line in err), err
    return err[-1]


def sst2_root(tmp_path: Path, train: bytes | None = None) -> Path:
    """A GLUE root with SST-2: the real dev file, and 40 real training rows (or ``train``)."""
    folder = tmp_path / "glue" / "SST-2"
    folder.mkdir(parents=True)
    shutil.copy(GLUE / "SST-2" / "dev.tsv", folder / "dev.tsv")
    if train is None:
        lines = (GLUE / "SST-2" / "train.tsv").read_text(encoding="utf-8").splitlines()[:41]
        train = ("\n".join(lines) + "\n").encode()
    (folder / "train.tsv").write_bytes(train)
    return tmp_path / "glue"


def assert_nothing_written(path: Path) -> None:
    assert not path.exists(), sorted(p.name for p in path.rglob("*"))


# --------------------------------------------------------------------------- encodings
def test_latin1_tsv_names_file_and_byte_offset(tmp_path, capsys):
    body = f"{SST2_HEADER}\nit is fine\t1\nle caf\xe9 est bon\t1\n".encode("latin-1")
    root = sst2_root(tmp_path, body)
    assert run_fit("sst2", root, tmp_path / "run") == 2
    line = one_line_error(capsys)
    offset = body.index(b"\xe9")
    assert "train.tsv is not utf-8" in line and f"0xe9 at byte {offset} (line 3)" in line
    assert "--data.encoding" in line
    assert_nothing_written(tmp_path / "run")


def test_latin1_tsv_reads_with_encoding_option(tmp_path):
    from apm_lightning.data.glue import GLUEDataModule

    body = f"{SST2_HEADER}\nit is fine\t1\nle caf\xe9 est bon\t1\n".encode("latin-1")
    root = sst2_root(tmp_path, body)
    dm = GLUEDataModule(task="sst2", data_dir=str(root), encoding="latin-1", cache_dir=str(tmp_path / "c"))
    assert dm.raw_split("train")["text_a"][1] == "le café est bon"


def test_utf16_tsv_with_bom_is_read(tmp_path):
    from apm_lightning.data.glue import GLUEDataModule

    text = f"{SST2_HEADER}\nun café\t1\nbad\t0\n"
    root = sst2_root(tmp_path, text.encode("utf-16"))  # BOM + UTF-16-LE
    dm = GLUEDataModule(task="sst2", data_dir=str(root), cache_dir=str(tmp_path / "c"))
    assert dm.raw_split("train")["text_a"] == ["un café", "bad"]
    assert dm.raw_split("train")["label"] == [1, 0]


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_data_files_not_utf8(tmp_path, capsys, suffix):
    root = sst2_root(tmp_path)
    if suffix == ".csv":
        body = "sentence,label\nok,1\ncaf\xe9,0\n".encode("cp1252")
    else:
        body = b'{"sentence": "ok", "label": 1}\n{"sentence": "caf\xe9", "label": 0}\n'
    bad = tmp_path / f"train{suffix}"
    bad.write_bytes(body)
    rc = run_fit(
        "sst2",
        root,
        tmp_path / "run",
        "--data.data_files",
        json.dumps({"train": str(bad), "validation": str(root / "SST-2" / "dev.tsv")}),
    )
    assert rc == 2
    line = one_line_error(capsys)
    offset = body.index(b"\xe9")
    assert f"train{suffix} is not utf-8" in line and f"at byte {offset}" in line
    assert_nothing_written(tmp_path / "run")


def test_utf16_csv_with_bom_is_read(tmp_path):
    from apm_lightning.data.glue import GLUEDataModule

    path = tmp_path / "train.csv"
    path.write_bytes("sentence,label\nun café,1\nbad,0\n".encode("utf-16"))
    dm = GLUEDataModule(task="sst2", data_files={"train": str(path)}, cache_dir=str(tmp_path / "c"))
    assert dm.raw_split("train")["text_a"] == ["un café", "bad"]


def test_unknown_encoding_name(tmp_path, capsys):
    assert run_fit("sst2", sst2_root(tmp_path), tmp_path / "run", "--data.encoding", "klingon") == 2
    assert "unknown text encoding 'klingon'" in one_line_error(capsys)


# --------------------------------------------------------------------------- sizes and limits
@pytest.mark.parametrize(
    "option,value",
    [
        ("batch_size", "0"),
        ("batch_size", "-3"),
        ("eval_batch_size", "0"),
        ("max_train_samples", "-5"),
        ("max_eval_samples", "0"),
        ("max_predict_samples", "-1"),
    ],
)
def test_glue_sizes_and_limits(tmp_path, capsys, option, value):
    assert run_fit("rte", GLUE, tmp_path / "run", f"--data.{option}", value) == 2
    line = one_line_error(capsys)
    assert f"data.{option} must be" in line and value in line
    assert_nothing_written(tmp_path / "run")


def test_squad_and_corpus_sizes(tmp_path):
    from apm_lightning.data.corpus import CorpusDataModule
    from apm_lightning.data.squad import SQuADDataModule
    from apm_lightning.errors import APMError

    with pytest.raises(APMError, match="data.batch_size must be"):
        SQuADDataModule(batch_size=0)
    with pytest.raises(APMError, match="data.max_train_samples must be 1 or more"):
        SQuADDataModule(max_train_samples=-5)
    with pytest.raises(APMError, match="data.eval_batch_size must be"):
        CorpusDataModule(files="x.txt", eval_batch_size=-1)


# --------------------------------------------------------------------------- the cache follows content
def _same_size_edit(path: Path, old: bytes, new: bytes) -> None:
    """Replace ``old`` by ``new`` (same length) and put the size and mtime back as they were."""
    assert len(old) == len(new)
    stat = path.stat()
    data = path.read_bytes()
    assert old in data
    path.write_bytes(data.replace(old, new))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert path.stat().st_size == stat.st_size and path.stat().st_mtime_ns == stat.st_mtime_ns


@pytest.mark.parametrize("layout", ["tsv", "csv"])
def test_cache_sees_same_size_edit_with_kept_mtime(tmp_path, layout):
    from apm_lightning.data.glue import GLUEDataModule

    if layout == "tsv":
        root = sst2_root(tmp_path, f"{SST2_HEADER}\ngood film\t1\nawful film\t0\n".encode())
        path = root / "SST-2" / "train.tsv"
        options = {"data_dir": str(root)}
    else:
        path = tmp_path / "train.csv"
        path.write_text("sentence,label\ngood film,1\nawful film,0\n", encoding="utf-8")
        options = {"data_files": {"train": str(path), "validation": str(GLUE / "SST-2" / "dev.tsv")}}

    def rows() -> tuple[list, list]:
        dm = GLUEDataModule(
            task="sst2", tokenizer="minilm", max_eval_samples=4, cache_dir=str(tmp_path / "cache"), **options
        )
        dm.check("fit")
        dm.setup("fit")
        train = dm.datasets["train"]
        return train["input_ids"], train["label"]

    ids_before, labels_before = rows()
    assert labels_before == [1, 0]
    _same_size_edit(
        path,
        b"good film\t1" if layout == "tsv" else b"good film,1",
        b"grim film\t0" if layout == "tsv" else b"grim film,0",
    )
    ids_after, labels_after = rows()
    assert labels_after == [0, 0]
    assert ids_after[0] != ids_before[0] and ids_after[1] == ids_before[1]


def test_squad_and_corpus_keys_follow_content(tmp_path):
    from apm_lightning.data.squad import read_squad_file
    from apm_lightning.data.text_sources import TextSource

    text = tmp_path / "corpus.txt"
    text.write_text("the cat sat on the mat.\n\nthe dog ran.\n", encoding="utf-8")
    source = TextSource(files=[str(text)])
    before = source.fingerprint()
    _same_size_edit(text, b"cat", b"rat")
    assert source.fingerprint() != before

    squad = tmp_path / "squad.json"
    article = {"title": "T", "paragraphs": [{"context": "Paris is big", "qas": []}]}
    squad.write_text(json.dumps({"version": "1.1", "data": [article]}), encoding="utf-8")
    before = read_squad_file(squad).origin
    _same_size_edit(squad, b"Paris", b"Rome.")
    assert read_squad_file(squad).origin != before
