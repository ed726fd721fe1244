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
from conftest import GLUE
from run_options import QUIET

from apm_lightning.cli import main

REPO = Path(__file__).resolve().parents[1]
TINY = str(REPO / "experiments" / "models" / "tiny_bert.yaml")


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
    from apm_lightning.data.classification import ClassificationDataModule

    body = f"{SST2_HEADER}\nit is fine\t1\nle caf\xe9 est bon\t1\n".encode("latin-1")
    root = sst2_root(tmp_path, body)
    dm = ClassificationDataModule(
        task="sst2", data_dir=str(root), encoding="latin-1", cache_dir=str(tmp_path / "c")
    )
    assert dm.raw_split("train")["text_a"][1] == "le café est bon"


def test_utf16_tsv_with_bom_is_read(tmp_path):
    from apm_lightning.data.classification import ClassificationDataModule

    text = f"{SST2_HEADER}\nun café\t1\nbad\t0\n"
    root = sst2_root(tmp_path, text.encode("utf-16"))  # BOM + UTF-16-LE
    dm = ClassificationDataModule(task="sst2", data_dir=str(root), cache_dir=str(tmp_path / "c"))
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
    from apm_lightning.data.classification import ClassificationDataModule

    path = tmp_path / "train.csv"
    path.write_bytes("sentence,label\nun café,1\nbad,0\n".encode("utf-16"))
    dm = ClassificationDataModule(task="sst2", data_files={"train": str(path)}, cache_dir=str(tmp_path / "c"))
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
    from apm_lightning.core.errors import APMError
    from apm_lightning.data.corpus import CorpusDataModule
    from apm_lightning.data.squad import SQuADDataModule

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
    from apm_lightning.data.classification import ClassificationDataModule

    if layout == "tsv":
        root = sst2_root(tmp_path, f"{SST2_HEADER}\ngood film\t1\nawful film\t0\n".encode())
        path = root / "SST-2" / "train.tsv"
        options = {"data_dir": str(root)}
    else:
        path = tmp_path / "train.csv"
        path.write_text("sentence,label\ngood film,1\nawful film,0\n", encoding="utf-8")
        options = {"data_files": {"train": str(path), "validation": str(GLUE / "SST-2" / "dev.tsv")}}

    def rows() -> tuple[list, list]:
        dm = ClassificationDataModule(
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
    from apm_lightning.data.squad_files import read_squad_file
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


# --------------------------------------------------------------------------- model limits and settings
def test_sequence_length_past_positions(tmp_path, capsys):
    rc = run_fit("rte", GLUE, tmp_path / "run", "--data.max_seq_length", "600")
    assert rc == 2
    line = one_line_error(capsys)
    assert "data.max_seq_length=600" in line and "512 positions" in line
    assert_nothing_written(tmp_path / "run")


def test_sequence_length_past_pretrained_positions():
    from apm_lightning.core.errors import APMError
    from apm_lightning.data.classification import ClassificationDataModule
    from apm_lightning.modules.classification import TransformerClassifier
    from apm_lightning.training.preflight import check_sequence_length

    model = TransformerClassifier(backbone="minilm")  # no task yet: the network is built later
    check_sequence_length(model, ClassificationDataModule(task="rte", max_seq_length=512))
    with pytest.raises(APMError, match="longer than the model's 512 positions"):
        check_sequence_length(model, ClassificationDataModule(task="rte", max_seq_length=513))


def test_backbone_with_backbone_config(tmp_path, capsys):
    rc = run_fit("rte", GLUE, tmp_path / "run", "--model.backbone", str(tmp_path / "some-model"))
    assert rc == 2
    line = one_line_error(capsys)
    assert "model.backbone" in line and "backbone_config are both set" in line
    assert_nothing_written(tmp_path / "run")


def test_default_backbone_with_backbone_config_is_fine():
    from apm_lightning.modules.classification import TransformerClassifier

    # A task config's 'backbone: minilm' composed with a from-scratch model config.
    model = TransformerClassifier(
        backbone="minilm", backbone_config={"model_type": "bert"}, tokenizer="minilm"
    )
    assert model.hparams.backbone is None


# --------------------------------------------------------------------------- config files and parse errors
@pytest.mark.parametrize(
    "content,expected",
    [
        (bytes(range(256)) * 4, "is a binary file"),
        ("trainer: {max_epochs: 1}\n".encode("utf-16"), "binary file"),
        (b"trainer:\n  max_epochs: caf\xe9\n", "is not UTF-8 text"),
        (b"trainer: [1,\n  data", "is not valid YAML"),
        (b"- 1\n- 2\n", "holds a YAML list"),
    ],
)
def test_bad_config_file(tmp_path, capsys, content, expected):
    bad = tmp_path / "bad.yaml"
    bad.write_bytes(content)
    assert run_fit("rte", GLUE, tmp_path / "run", "-c", bad) == 2
    line = one_line_error(capsys)
    assert str(bad) in line and expected in line
    assert_nothing_written(tmp_path / "run")


def test_bad_sweep_file(tmp_path, capsys):
    bad = tmp_path / "sweep.yaml"
    bad.write_bytes(bytes(range(256)))
    assert main(["sweep", "-c", str(bad), "--out", str(tmp_path / "out")]) == 2
    assert "sweep file" in one_line_error(capsys)
    assert_nothing_written(tmp_path / "out")


@pytest.mark.parametrize(
    "args,expected",
    [
        (["--data.bogus", "3"], "data: Option 'bogus' is not accepted"),
        (["--data.batch_size", "abc"], "data.batch_size: Expected a <class 'int'>. Got value: abc"),
        (["--trainer.max_epochs", "x"], "trainer.max_epochs: Expected a <class 'int'> (given: x)"),
        (["--nonsense"], "unrecognized arguments: --nonsense"),
    ],
)
def test_parse_errors_are_one_line(tmp_path, capsys, args, expected):
    assert run_fit("rte", GLUE, tmp_path / "run", *args) == 2
    line = one_line_error(capsys)
    assert expected in line and "--help" in line


def test_parse_error_subprocess_prints_only_the_reason(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"}
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "apm_lightning",
            "fit",
            "-c",
            str(REPO / "experiments/glue/rte.yaml"),
            "--data.bogus",
            "1",
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
    )
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        "apm: error: data: Option 'bogus' is not accepted (see --help for the options)"
    ], out.stderr
    assert not (tmp_path / "runs").exists()


def test_help_and_print_config_still_work(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["fit", "-c", str(REPO / "experiments/glue/rte.yaml"), "--print_config"])
    assert exit_.value.code in (0, None)
    assert "max_seq_length: 128" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_:
        main(["fit", "--help"])
    assert exit_.value.code in (0, None)
    assert "--data.help" in capsys.readouterr().out


# --------------------------------------------------------------------------- machine and output paths
def test_missing_gpu(tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert run_fit("rte", GLUE, tmp_path / "run", "--trainer.accelerator", "gpu") == 2
    line = one_line_error(capsys)
    assert "--trainer.accelerator gpu: no CUDA GPU" in line and "cpu" in line
    assert_nothing_written(tmp_path / "run")


@pytest.mark.parametrize("under", [False, True])
def test_run_dir_is_a_file(tmp_path, capsys, under):
    blocker = tmp_path / "blocker"
    blocker.write_text("x")
    target = blocker / "sub" if under else blocker
    assert run_fit("rte", GLUE, target, "--data.max_train_samples", "8") == 2
    line = one_line_error(capsys)
    assert "--trainer.default_root_dir" in line and ("which is a file" if under else "is a file") in line
    assert blocker.read_text() == "x"


def test_glue_out_is_a_file(tmp_path, capsys):
    blocker = tmp_path / "out.txt"
    blocker.write_text("x")
    rc = main(["glue", "--model", TINY, "--tasks", "rte", "--data-dir", str(GLUE), "--out", str(blocker)])
    assert rc == 2
    assert "--out" in one_line_error(capsys)
    rc = main(
        ["glue", "--model", TINY, "--tasks", "rte", "--data-dir", str(GLUE), "--out", str(blocker / "x")]
    )
    assert rc == 2
    assert "which is a file" in one_line_error(capsys)
    assert blocker.read_text() == "x"


def test_glue_exits_non_zero_when_every_run_failed(tmp_path, capsys):
    """Two real child runs that apm fit refuses (a bad option value): the runner writes its tables
    but exits 2 with one line, so a script does not take the result for a finished GLUE run (it
    exited 0, seen with an environment that lacked lightning)."""
    out = tmp_path / "out"
    args = ["glue", "--model", TINY, "--tasks", "rte", "--seeds", "2", "--data-dir", str(GLUE)]
    args += ["--out", str(out), "--no-submission", "--trainer.max_epochs", "not-a-number"]
    assert main(args) == 2
    line = one_line_error(capsys)
    assert "all 2 runs failed, the first with exit status 2" in line, line
    assert str(out / "results.md") in line
    rows = (out / "results.csv").read_text().splitlines()
    assert len(rows) == 3 and all(",failed," in row for row in rows[1:])
    # One failed run among finished ones is a partial result, exit 0: test_glue_runner_end_to_end.


def test_export_to_a_file(tmp_path, capsys):
    blocker = tmp_path / "out.txt"
    blocker.write_text("x")
    ckpt = tmp_path / "missing.ckpt"  # the output path is checked first
    for target in (blocker, blocker / "sub"):
        assert main(["export", str(ckpt), str(target), "--overwrite"]) == 2
        assert "output folder" in one_line_error(capsys)
    assert blocker.read_text() == "x"


# --------------------------------------------------------------------------- split files
def test_train_tsv_is_a_folder(tmp_path, capsys):
    root = sst2_root(tmp_path)
    (root / "SST-2" / "train.tsv").unlink()
    (root / "SST-2" / "train.tsv").mkdir()
    assert run_fit("sst2", root, tmp_path / "run") == 2
    line = one_line_error(capsys)
    assert "train.tsv is a folder, not a file" in line and "no SST-2/ folder" not in line


def test_train_tsv_is_a_symlink_loop(tmp_path, capsys):
    root = sst2_root(tmp_path)
    train = root / "SST-2" / "train.tsv"
    train.unlink()
    other = root / "SST-2" / "loop.tsv"
    train.symlink_to(other)
    other.symlink_to(train)
    assert run_fit("sst2", root, tmp_path / "run") == 2
    assert "train.tsv is a symbolic link loop" in one_line_error(capsys)


def test_long_header_is_cut(tmp_path, capsys):
    header = "x" * 1_000_000 + "\tlabel"
    root = sst2_root(tmp_path, f"{header}\nfine\t1\n".encode())
    assert run_fit("sst2", root, tmp_path / "run") == 2
    line = one_line_error(capsys)
    assert "header lacks column(s) 'sentence'" in line and "..." in line and len(line) < 1000


# --------------------------------------------------------------------------- resume
def test_resume_with_other_data_settings(tmp_path, capsys):
    run = tmp_path / "run"
    assert run_fit("rte", GLUE, run) == 0
    capsys.readouterr()
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    # The README's resume line without the original row limit.
    args = [a for a in fit_args("rte", GLUE, run, "--ckpt_path", "last") if a != "--data.max_train_samples"]
    args.remove("16")  # its value (max_eval_samples keeps its own 16)
    assert main(args) == 2
    line = one_line_error(capsys)
    assert "data.max_train_samples was 16, now None" in line and "config.yaml" in line
    # Another sequence length and another accumulation are named together (a new length is not
    # refused: resuming to train longer or stop sooner is what a resume is for).
    assert (
        run_fit(
            "rte",
            GLUE,
            run,
            "--ckpt_path",
            "last",
            "--data.max_seq_length",
            "24",
            "--trainer.accumulate_grad_batches",
            "2",
        )
        == 2
    )
    line = one_line_error(capsys)
    assert "data.max_seq_length was 32, now 24" in line and "trainer.accumulate_grad_batches was 1" in line
    after = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    assert after == before
    # Training longer is what a resume is for.
    assert run_fit("rte", GLUE, run, "--ckpt_path", "last", "--trainer.max_epochs", "2") == 0
    assert json.loads((run / "results.json").read_text())["epochs"] == 2
