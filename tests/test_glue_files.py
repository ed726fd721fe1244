"""Tests for the GLUE readers: the real files in ``../shared/data/glue``, fixture files in the
published layouts of the tasks not shipped there (STS-B, QQP, MNLI, QNLI), table files with a
column mapping, the synthetic task, bad inputs and the offline path."""

from __future__ import annotations

import math
import time
from pathlib import Path

import pytest
from conftest import GLUE_ROWS, real_data_only

from apm_lightning.core import hub
from apm_lightning.core.errors import APMError
from apm_lightning.data import sources
from apm_lightning.data.classification import ClassificationDataModule
from apm_lightning.data.task_files import read_glue_tsv, read_table
from apm_lightning.data.tasks import TASKS, get_task

# ---------------------------------------------------------------------------------------------
# helpers


def plain_rows(path: Path) -> list[list[str]]:
    """Split a GLUE TSV with plain string operations (no csv module): an independent reference."""
    text = path.read_bytes().decode("utf-8")
    if text.startswith("\ufeff"):
        text = text[1:]
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line.split("\t") for line in lines]


def write_tsv(
    path: Path, header: list[str] | None, rows: list[list[str]], final_newline: bool = True
) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = ([("\t".join(header))] if header is not None else []) + ["\t".join(r) for r in rows]
    path.write_text("\n".join(lines) + ("\n" if final_newline else ""), encoding="utf-8")
    return path


def n_rows(columns: dict[str, list]) -> int:
    lengths = {len(v) for v in columns.values()}
    assert len(lengths) == 1, f"columns of different lengths: { {k: len(v) for k, v in columns.items()} }"
    return lengths.pop()


# ---------------------------------------------------------------------------------------------
# the real GLUE files

# Rows per file: the real files' counts (../shared/data/README.md), or the generated tree's.
EXPECTED_ROWS = [(task, split, rows) for (task, split), rows in GLUE_ROWS.items() if task != "stsb"]

# An independent description of each file, written from the README rather than from the registry.
_BINARY = {"0": 0, "1": 1}
PLAIN_SPEC = {
    "cola": {"text": ("sentence",), "label": "label", "labels": _BINARY},
    "sst2": {"text": ("sentence",), "label": "label", "labels": _BINARY},
    "mrpc": {"text": ("#1 String", "#2 String"), "label": "Quality", "labels": _BINARY},
    "rte": {
        "text": ("sentence1", "sentence2"),
        "label": "label",
        "labels": {"entailment": 0, "not_entailment": 1},
    },
    "wnli": {"text": ("sentence1", "sentence2"), "label": "label", "labels": _BINARY},
    "ax": {"text": ("sentence1", "sentence2"), "label": None, "labels": None},
}


def plain_expected(task_name: str, split: str, path: Path) -> dict[str, list]:
    spec = PLAIN_SPEC[task_name]
    rows = plain_rows(path)
    labelled = split != "test"
    if task_name == "cola" and labelled:  # no header: source, label, original mark, sentence
        return {
            "idx": list(range(len(rows))),
            "text_a": [r[3] for r in rows],
            "label": [int(r[1]) for r in rows],
        }
    header, body = rows[0], rows[1:]
    out: dict[str, list] = {}
    out["idx"] = (
        [int(r[header.index("index")]) for r in body] if "index" in header else list(range(len(body)))
    )
    out["text_a"] = [r[header.index(spec["text"][0])] for r in body]
    if len(spec["text"]) == 2:
        out["text_b"] = [r[header.index(spec["text"][1])] for r in body]
    if labelled:
        out["label"] = [spec["labels"][r[header.index(spec["label"])]] for r in body]
    else:
        out["label"] = [-1] * len(body)
    return out


def split_path(glue_dir: Path, task_name: str, split: str) -> Path:
    task = get_task(task_name)
    return glue_dir / task.folder / task.splits[split].filename


@pytest.mark.parametrize(("task_name", "split", "rows"), EXPECTED_ROWS)
def test_real_file_row_counts_and_content(glue_dir, task_name, split, rows):
    task = get_task(task_name)
    path = split_path(glue_dir, task_name, split)
    columns = read_glue_tsv(task, path, task.splits[split].labelled)
    assert n_rows(columns) == rows
    assert set(columns) == (
        {"idx", "text_a", "text_b", "label"} if task.is_pair else {"idx", "text_a", "label"}
    )
    # Every value equals a plain-Python split of the file (quotes, spaces, BOM included).
    assert columns == plain_expected(task_name, split, path)


@pytest.mark.parametrize(("task_name", "split", "rows"), EXPECTED_ROWS)
def test_real_file_row_counts_via_datamodule(glue_dir, task_name, split, rows):
    dm = ClassificationDataModule(task=task_name, data_dir=str(glue_dir))
    columns = dm.raw_split(split)
    assert n_rows(columns) == rows
    labelled = get_task(task_name).splits[split].labelled
    assert columns == read_glue_tsv(get_task(task_name), split_path(glue_dir, task_name, split), labelled)
    assert "local GLUE files" in dm.source_description


@real_data_only
def test_cola_spot_checks(glue_dir):
    cola = get_task("cola")
    train = read_glue_tsv(cola, glue_dir / "CoLA" / "train.tsv", labelled=True)
    assert train["text_a"][0] == "Our friends won't buy this analysis, let alone the next one we propose."
    assert train["label"][0] == 1
    assert train["text_a"][-1] == "What all did you get for Christmas?"
    assert train["label"][-1] == 1
    assert train["idx"][:3] == [0, 1, 2]
    # dev.tsv has no final newline: the last row must still be read, whole.
    assert not (glue_dir / "CoLA" / "dev.tsv").read_bytes().endswith(b"\n")
    dev = read_glue_tsv(cola, glue_dir / "CoLA" / "dev.tsv", labelled=True)
    assert dev["text_a"][0] == "The sailors rode the breeze clear of the rocks."
    assert dev["text_a"][-1] == "John talked to Bill about himself."
    # Label distribution of dev, counted independently (column 2 of the headerless file).
    ones = sum(1 for r in plain_rows(glue_dir / "CoLA" / "dev.tsv") if r[1] == "1")
    assert ones == 721
    assert dev["label"].count(1) == ones
    assert dev["label"].count(0) == 1043 - ones
    assert cola.label_names[1] == "acceptable"
    test = read_glue_tsv(cola, glue_dir / "CoLA" / "test.tsv", labelled=False)
    assert test["text_a"][0] == "Bill whistled past the house."
    assert test["text_a"][-1] == "A picture of himself frightened John."
    assert test["idx"][-1] == 1062


@real_data_only
def test_sst2_spot_checks(glue_dir):
    sst2 = get_task("sst2")
    train = read_glue_tsv(sst2, glue_dir / "SST-2" / "train.tsv", labelled=True)
    # Every sentence ends with a space: kept as in the file.
    assert train["text_a"][0] == "hide new secretions from the parental units "
    assert train["label"][0] == 0
    assert train["text_a"][-1] == (
        "this new jangle of noise , mayhem and stupidity must be a serious contender for the title . "
    )
    assert train["label"][-1] == 0
    assert train["label"][:3] == [0, 0, 1]
    dev = read_glue_tsv(sst2, glue_dir / "SST-2" / "dev.tsv", labelled=True)
    assert dev["text_a"][0] == "it 's a charming and often affecting journey . "
    assert dev["label"][:2] == [1, 0]
    ones = sum(1 for r in plain_rows(glue_dir / "SST-2" / "dev.tsv")[1:] if r[1] == "1")
    assert ones == 444
    assert dev["label"].count(1) == ones
    assert set(dev["label"]) == {0, 1}
    assert sst2.label_names == ("negative", "positive")


@real_data_only
def test_mrpc_bom_header_and_quotes(glue_dir):
    mrpc = get_task("mrpc")
    raw = (glue_dir / "MRPC" / "train.tsv").read_bytes()
    assert raw.startswith(b"\xef\xbb\xbfQuality\t")  # the BOM is really there
    train = read_glue_tsv(mrpc, glue_dir / "MRPC" / "train.tsv", labelled=True)
    assert train["label"][:2] == [1, 0]
    assert train["text_a"][0] == (
        'Amrozi accused his brother , whom he called " the witness " , of deliberately distorting his evidence .'
    )
    assert train["text_b"][0] == (
        'Referring to him as only " the witness " , Amrozi accused his brother of deliberately distorting his evidence .'
    )
    assert train["idx"][:3] == [0, 1, 2]  # no index column: the row number
    dev = read_glue_tsv(mrpc, glue_dir / "MRPC" / "dev.tsv", labelled=True)
    # An unbalanced quote opens a field: it is text, not a CSV quote.
    assert dev["text_b"][0] == '" The foodservice pie business does not fit our long-term growth strategy .'
    assert dev["label"][-1] == 1
    ones = sum(1 for r in plain_rows(glue_dir / "MRPC" / "dev.tsv")[1:] if r[0] == "1")
    assert ones == 279
    assert dev["label"].count(1) == ones
    train_ones = sum(1 for r in plain_rows(glue_dir / "MRPC" / "train.tsv")[1:] if r[0] == "1")
    assert train["label"].count(1) == train_ones == 2474


@real_data_only
def test_rte_quote_at_start_of_field_and_labels(glue_dir):
    rte = get_task("rte")
    dev = read_glue_tsv(rte, glue_dir / "RTE" / "dev.tsv", labelled=True)
    pos = dev["idx"].index(137)
    assert dev["text_a"][pos].startswith(
        '"It\'s Only a Play" is Terrence McNally\'s "Give My Regards to Broadway,"'
    )
    plain = {int(r[0]): r for r in plain_rows(glue_dir / "RTE" / "dev.tsv")[1:]}
    assert dev["text_a"][pos] == plain[137][1]
    assert dev["text_b"][pos] == plain[137][2]
    assert dev["label"][pos] == 0  # entailment
    starting_with_quote = [i for i, t in zip(dev["idx"], dev["text_a"], strict=True) if t.startswith('"')]
    assert starting_with_quote == [137, 182, 207]
    # not_entailment is label 1, entailment 0 (the hub's ids).
    assert dev["label"][:2] == [1, 0]
    not_entailed = sum(1 for r in plain_rows(glue_dir / "RTE" / "dev.tsv")[1:] if r[3] == "not_entailment")
    assert not_entailed == 131
    assert dev["label"].count(1) == not_entailed
    assert rte.label_names == ("entailment", "not_entailment")


@real_data_only
def test_wnli_and_ax_spot_checks(glue_dir):
    wnli = get_task("wnli")
    dev = read_glue_tsv(wnli, glue_dir / "WNLI" / "dev.tsv", labelled=True)
    ones = sum(1 for r in plain_rows(glue_dir / "WNLI" / "dev.tsv")[1:] if r[3] == "1")
    assert ones == 31
    assert dev["label"].count(1) == ones
    assert wnli.label_names[1] == "entailment"
    assert dev["text_a"][0] == "The drain is clogged with hair. It has to be cleaned."
    assert dev["text_b"][0] == "The hair has to be cleaned."
    assert dev["label"][0] == 0

    ax = get_task("ax")
    assert not (glue_dir / "diagnostic" / "diagnostic.tsv").read_bytes().endswith(b"\n")
    diag = read_glue_tsv(ax, glue_dir / "diagnostic" / "diagnostic.tsv", labelled=False)
    assert diag["text_a"][0] == "The cat sat on the mat."
    assert diag["text_b"][0] == "The cat did not sit on the mat."
    assert diag["text_b"][-1] == "A general artificial intelligence should always come with an off switch."
    assert diag["idx"][-1] == 1103
    assert ax.model_task == "mnli"


@pytest.mark.parametrize(
    ("task_name", "filename"),
    [
        ("cola", "CoLA/test.tsv"),
        ("sst2", "SST-2/test.tsv"),
        ("mrpc", "MRPC/test.tsv"),
        ("rte", "RTE/test.tsv"),
        ("wnli", "WNLI/test.tsv"),
        ("ax", "diagnostic/diagnostic.tsv"),
    ],
)
def test_test_files_idx_is_index_column_and_label_is_minus_one(glue_dir, task_name, filename):
    task = get_task(task_name)
    columns = read_glue_tsv(task, glue_dir / filename, labelled=False)
    rows = plain_rows(glue_dir / filename)
    assert rows[0][0] == "index"
    assert columns["idx"] == [int(r[0]) for r in rows[1:]]
    assert columns["label"] == [-1] * len(rows[1:])
    assert not task.splits["test"].labelled


def test_data_dir_may_be_root_glue_folder_or_task_folder(data_root, glue_dir):
    expected = read_glue_tsv(get_task("rte"), glue_dir / "RTE" / "dev.tsv", labelled=True)
    for where in (data_root, glue_dir, glue_dir / "RTE"):
        dm = ClassificationDataModule(task="rte", data_dir=str(where))
        assert dm.raw_split("validation") == expected, where
    dm = ClassificationDataModule(task="RTE", data_dir=str(data_root), source="local")
    assert n_rows(dm.raw_split("train")) == GLUE_ROWS["rte", "train"]


def test_apm_data_dir_env(monkeypatch, data_root):
    monkeypatch.setenv("APM_DATA_DIR", str(data_root))
    dm = ClassificationDataModule(task="wnli", data_dir=None)
    assert n_rows(dm.raw_split("validation")) == GLUE_ROWS["wnli", "validation"]
    assert str(data_root) in dm.source_description
    # The glue folder itself works too.
    monkeypatch.setenv("APM_DATA_DIR", str(data_root / "glue"))
    assert (
        n_rows(ClassificationDataModule(task="sst-2").raw_split("validation"))
        == GLUE_ROWS["sst2", "validation"]
    )


def test_max_samples_and_check(glue_dir):
    dm = ClassificationDataModule(
        task="mrpc", data_dir=str(glue_dir), max_train_samples=10, max_eval_samples=5
    )
    dm.check("fit")
    assert n_rows(dm.raw_split("train")) == 10
    assert n_rows(dm.raw_split("validation")) == 5
    assert n_rows(dm.raw_split("test")) == GLUE_ROWS["mrpc", "test"]
    assert dm.splits_for("validation") == ["validation"]
    with pytest.raises(APMError, match="no split"):
        dm.raw_split("validation_matched")


# ---------------------------------------------------------------------------------------------
# published layouts of the tasks not shipped in ../shared/data: STS-B, QQP, MNLI, QNLI

STSB_HEADER = "index genre filename year old_index source1 source2 sentence1 sentence2 score".split()
QQP_HEADER = "id qid1 qid2 question1 question2 is_duplicate".split()
MNLI_PREFIX = (
    "index promptID pairID genre sentence1_binary_parse sentence2_binary_parse "
    "sentence1_parse sentence2_parse sentence1 sentence2"
).split()
QNLI_HEADER = "index question sentence label".split()


def _stsb_row(i: int, s1: str, s2: str, score: str | None = None) -> list[str]:
    row = [str(i), "main-captions", "MSRvid", "2012test", f"{i:04d}", "none", "none", s1, s2]
    return row + ([score] if score is not None else [])


@pytest.fixture
def stsb_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "STS-B"
    write_tsv(
        folder / "train.tsv",
        STSB_HEADER,
        [
            _stsb_row(0, "A plane is taking off.", "An air plane is taking off.", "5.000"),
            _stsb_row(1, "A man is playing a flute.", "A man is playing a bamboo flute.", "3.800"),
            _stsb_row(2, 'He said "no".', "A cat sleeps.", "0.000"),
        ],
    )
    write_tsv(
        folder / "dev.tsv",
        STSB_HEADER,
        [_stsb_row(0, "A man with a hard hat.", "A man wears a hat.", "4.25")],
    )
    write_tsv(
        folder / "test.tsv",
        STSB_HEADER[:-1],
        [_stsb_row(0, "A girl is styling her hair.", "A girl is brushing her hair."), _stsb_row(1, "x", "y")],
    )
    return tmp_path


def test_stsb_published_layout(stsb_dir):
    stsb = get_task("STS-B")
    assert stsb.is_regression and stsb.num_labels == 1
    train = read_glue_tsv(stsb, stsb_dir / "STS-B" / "train.tsv", labelled=True)
    assert train["label"] == [5.0, 3.8, 0.0]
    assert all(isinstance(v, float) for v in train["label"])
    assert train["text_a"][2] == 'He said "no".'
    assert train["text_b"][0] == "An air plane is taking off."
    assert train["idx"] == [0, 1, 2]
    dm = ClassificationDataModule(task="stsb", data_dir=str(stsb_dir))
    assert dm.raw_split("validation")["label"] == [4.25]
    test = dm.raw_split("test")
    assert test["text_a"] == ["A girl is styling her hair.", "x"]
    assert len(test["label"]) == 2 and all(math.isnan(v) for v in test["label"])


@pytest.fixture
def qqp_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "QQP"
    write_tsv(
        folder / "train.tsv",
        QQP_HEADER,
        [
            [
                "133273",
                "213221",
                "213222",
                "How is the life of a math student?",
                "Which is the best book?",
                "0",
            ],
            [
                "402555",
                "536040",
                "536041",
                "How do I control my horny emotions?",
                "How do you control it?",
                "1",
            ],
            [
                "105780",
                "174363",
                "174364",
                "How can I start an online shopping business?",
                "What to sell?",
            ],  # short
            ["360472", "364011", "490273", "What does it mean?", "What does it imply?", "1"],
            ["1", "2", "3", "a question with a stray tab", "extra\tfield", "0"],  # long
        ],
    )
    write_tsv(
        folder / "dev.tsv",
        QQP_HEADER,
        [
            [
                "201359",
                "303345",
                "303346",
                "Why are African-Americans so beautiful?",
                "Why are hispanics so beautiful?",
                "0",
            ]
        ],
    )
    write_tsv(
        folder / "test.tsv",
        ["id", "question1", "question2"],
        [
            ["0", "Would the idea of Trump and Putin?", "Why do Europeans say?"],
            ["1", "What are the best ways?", "How?"],
        ],
    )
    return tmp_path


def test_qqp_skips_malformed_rows(qqp_dir, caplog):
    qqp = get_task("qqp")
    assert qqp.skip_malformed_rows
    with caplog.at_level("WARNING"):
        train = read_glue_tsv(qqp, qqp_dir / "QQP" / "train.tsv", labelled=True)
    assert n_rows(train) == 3  # 5 rows, 2 malformed, as GLUE's reference processor does
    assert train["text_a"] == [
        "How is the life of a math student?",
        "How do I control my horny emotions?",
        "What does it mean?",
    ]
    assert train["label"] == [0, 1, 1]
    assert train["idx"] == [133273, 402555, 360472]  # the file's id column
    assert "skipped 2 malformed rows" in caplog.text
    dm = ClassificationDataModule(task="qqp", data_dir=str(qqp_dir))
    assert dm.raw_split("validation")["label"] == [0]
    test = dm.raw_split("test")
    assert test["idx"] == [0, 1]
    assert test["text_b"] == ["Why do Europeans say?", "How?"]
    assert test["label"] == [-1, -1]


def test_qqp_test_idx_is_the_id_column(tmp_path):
    """QQP's index column is ``id``: a skipped malformed row must not shift the ids after it."""
    path = write_tsv(
        tmp_path / "test.tsv",
        ["id", "question1", "question2"],
        [["0", "q a", "q b"], ["1", "only one question"], ["2", "q c", "q d"]],
    )
    test = read_glue_tsv(get_task("qqp"), path, labelled=False)
    assert test["idx"] == [0, 2]
    assert test["text_a"] == ["q a", "q c"]


def _mnli_row(index: int, s1: str, s2: str, labels: list[str]) -> list[str]:
    parses = [f"( ( {s1} ) )", f"( ( {s2} ) )", f"(ROOT (S {s1}))", f"(ROOT (S {s2}))"]
    return [str(index), f"{31193 + index}", f"{31193 + index}n", "government", *parses, s1, s2, *labels]


@pytest.fixture
def mnli_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "MNLI"
    write_tsv(
        folder / "train.tsv",
        [*MNLI_PREFIX, "label1", "gold_label"],
        [
            _mnli_row(
                0,
                "Conceptually cream skimming has two basic dimensions.",
                "Product and geography.",
                ["neutral", "neutral"],
            ),
            _mnli_row(1, "you know during the season.", "You lose the things.", ["entailment", "entailment"]),
            _mnli_row(
                2,
                "One of our number will carry out.",
                "A member will carry out.",
                ["contradiction", "contradiction"],
            ),
        ],
    )
    dev_header = [*MNLI_PREFIX, "label1", "label2", "label3", "label4", "label5", "gold_label"]
    write_tsv(
        folder / "dev_matched.tsv",
        dev_header,
        [
            # label1 disagrees with the gold label: the gold label must be the one read.
            _mnli_row(
                10,
                "The new rights are nice enough",
                "Everyone really likes the newest benefits",
                ["contradiction", "neutral", "neutral", "neutral", "entailment", "neutral"],
            ),
            _mnli_row(
                11, "This site includes a list.", "The site has a list.", ["entailment"] * 5 + ["entailment"]
            ),
        ],
    )
    write_tsv(
        folder / "dev_mismatched.tsv",
        dev_header,
        [_mnli_row(20, "Your contribution helped.", "Your contribution did nothing.", ["contradiction"] * 6)],
    )
    write_tsv(
        folder / "test_matched.tsv", MNLI_PREFIX, [_mnli_row(0, "a", "b", []), _mnli_row(1, "c", "d", [])]
    )
    write_tsv(folder / "test_mismatched.tsv", MNLI_PREFIX, [_mnli_row(0, "e", "f", [])], final_newline=False)
    return tmp_path


def test_mnli_published_layout(mnli_dir):
    mnli = get_task("mnli")
    assert mnli.label_names == ("entailment", "neutral", "contradiction")
    dm = ClassificationDataModule(task="mnli", data_dir=str(mnli_dir))
    assert dm.splits_for("validation") == ["validation_matched", "validation_mismatched"]
    assert dm.splits_for("test") == ["test_matched", "test_mismatched"]
    assert dm.validation_splits == ["validation_matched", "validation_mismatched"]
    dm.check("fit")
    dm.check("predict")
    train = dm.raw_split("train")
    assert train["label"] == [1, 0, 2]
    assert train["text_a"][0] == "Conceptually cream skimming has two basic dimensions."  # not a parse column
    assert train["text_b"][2] == "A member will carry out."
    matched = dm.raw_split("validation_matched")
    assert matched["label"] == [1, 0]  # gold_label, not label1
    assert matched["idx"] == [10, 11]
    mismatched = dm.raw_split("validation_mismatched")
    assert mismatched["label"] == [2]
    assert mismatched["text_b"] == ["Your contribution did nothing."]
    test_m = dm.raw_split("test_matched")
    assert test_m["text_a"] == ["a", "c"] and test_m["label"] == [-1, -1]
    test_mm = dm.raw_split("test_mismatched")
    assert test_mm["text_b"] == ["f"] and test_mm["label"] == [-1]
    with pytest.raises(APMError):
        dm.splits_for("dev")


@pytest.fixture
def qnli_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "QNLI"
    write_tsv(
        folder / "train.tsv",
        QNLI_HEADER,
        [
            [
                "0",
                "When did the third Digimon series begin?",
                "Unlike the two seasons before it.",
                "not_entailment",
            ],
            [
                "1",
                "Which missile batteries often have individual launchers?",
                "When MANPADS is operated.",
                "entailment",
            ],
        ],
    )
    write_tsv(
        folder / "dev.tsv",
        QNLI_HEADER,
        [["0", "What came into force?", "The treaty came into force.", "entailment"]],
    )
    write_tsv(
        folder / "test.tsv",
        QNLI_HEADER[:-1],
        [["0", "What organization is devoted?", "The organization is."]],
    )
    return tmp_path


def test_qnli_published_layout(qnli_dir):
    dm = ClassificationDataModule(task="qnli", data_dir=str(qnli_dir))
    train = dm.raw_split("train")
    assert train["label"] == [1, 0]  # not_entailment 1, entailment 0
    assert train["text_a"][0] == "When did the third Digimon series begin?"
    assert train["text_b"][1] == "When MANPADS is operated."
    assert dm.raw_split("validation")["label"] == [0]
    test = dm.raw_split("test")
    assert test["label"] == [-1] and test["idx"] == [0]


# ---------------------------------------------------------------------------------------------
# bad inputs: one APMError naming the file and the line


RTE_HEADER = ["index", "sentence1", "sentence2", "label"]


def test_unknown_task():
    with pytest.raises(APMError, match="unknown GLUE task 'nope'"):
        get_task("nope")
    with pytest.raises(APMError, match="nope"):
        ClassificationDataModule(task="nope")
    assert get_task(" SST-2 ") is TASKS["sst2"]
    assert get_task("diagnostic") is TASKS["ax"]


def test_missing_file(tmp_path):
    path = tmp_path / "RTE" / "train.tsv"
    with pytest.raises(APMError) as err:
        read_glue_tsv(get_task("rte"), path, labelled=True)
    assert str(path) in str(err.value)
    with pytest.raises(APMError) as err:
        ClassificationDataModule(task="rte", data_dir=str(tmp_path)).raw_split("train")
    assert str(tmp_path) in str(err.value) and "RTE" in str(err.value)
    # A folder with the task but not this split's file.
    write_tsv(tmp_path / "RTE" / "train.tsv", RTE_HEADER, [["0", "a", "b", "entailment"]])
    with pytest.raises(APMError) as err:
        ClassificationDataModule(task="rte", data_dir=str(tmp_path)).raw_split("validation")
    assert str(tmp_path / "RTE" / "dev.tsv") in str(err.value)


def test_wrong_column_count_names_the_line(tmp_path):
    path = write_tsv(
        tmp_path / "train.tsv",
        RTE_HEADER,
        [
            ["0", "a", "b", "entailment"],
            ["1", "c", "d", "entailment"],
            ["2", "a tab\tinside", "e", "entailment"],
        ],
    )
    with pytest.raises(APMError) as err:
        read_glue_tsv(get_task("rte"), path, labelled=True)
    msg = str(err.value)
    assert f"{path}, line 4:" in msg
    assert "expected 4" in msg and "found 5" in msg
    # Headerless CoLA: the first row is line 1.
    cola_path = write_tsv(tmp_path / "cola.tsv", None, [["gj04", "1", "", "ok"], ["gj04", "1", "too few"]])
    with pytest.raises(APMError) as err:
        read_glue_tsv(get_task("cola"), cola_path, labelled=True)
    assert f"{cola_path}, line 2:" in str(err.value)


def test_label_outside_label_set(tmp_path):
    path = write_tsv(
        tmp_path / "dev.tsv", RTE_HEADER, [["0", "a", "b", "entailment"], ["1", "c", "d", "maybe"]]
    )
    with pytest.raises(APMError) as err:
        read_glue_tsv(get_task("rte"), path, labelled=True)
    msg = str(err.value)
    assert f"{path}, line 3:" in msg and "'maybe'" in msg and "not_entailment" in msg
    sst = write_tsv(
        tmp_path / "sst.tsv", ["sentence", "label"], [["good ", "1"], ["bad ", "0"], ["meh ", "2"]]
    )
    with pytest.raises(APMError) as err:
        read_glue_tsv(get_task("sst2"), sst, labelled=True)
    assert f"{sst}, line 4:" in str(err.value) and "'2'" in str(err.value)
    mnli_path = write_tsv(tmp_path / "mnli.tsv", ["sentence1", "sentence2", "gold_label"], [["a", "b", "-"]])
    with pytest.raises(APMError, match="line 2"):
        read_glue_tsv(get_task("mnli"), mnli_path, labelled=True)


@pytest.mark.parametrize(
    ("score", "fragment"),
    [("high", "is not a number"), ("5.5", "outside [0, 5]"), ("-0.1", "outside [0, 5]"), ("nan", "outside")],
)
def test_bad_stsb_scores(tmp_path, score, fragment):
    path = write_tsv(
        tmp_path / "train.tsv",
        STSB_HEADER,
        [_stsb_row(0, "a", "b", "1.0"), _stsb_row(1, "c", "d", "2"), _stsb_row(2, "e", "f", score)],
    )
    with pytest.raises(APMError) as err:
        read_glue_tsv(get_task("stsb"), path, labelled=True)
    msg = str(err.value)
    assert f"{path}, line 4:" in msg and fragment in msg


def test_empty_split(tmp_path):
    path = write_tsv(tmp_path / "dev.tsv", RTE_HEADER, [])
    with pytest.raises(APMError) as err:
        read_glue_tsv(get_task("rte"), path, labelled=True)
    assert str(path) in str(err.value) and "empty" in str(err.value)
    empty = tmp_path / "empty.tsv"
    empty.write_text("", encoding="utf-8")
    with pytest.raises(APMError) as err:
        read_glue_tsv(get_task("rte"), empty, labelled=True)
    assert str(empty) in str(err.value) and "empty" in str(err.value)
    cola_empty = tmp_path / "cola.tsv"
    cola_empty.write_text("\n", encoding="utf-8")
    with pytest.raises(APMError, match="empty"):
        read_glue_tsv(get_task("cola"), cola_empty, labelled=True)


def test_header_lacking_a_column(tmp_path):
    path = write_tsv(tmp_path / "train.tsv", ["index", "sentence1", "label"], [["0", "a", "entailment"]])
    with pytest.raises(APMError) as err:
        read_glue_tsv(get_task("rte"), path, labelled=True)
    msg = str(err.value)
    assert f"{path}, line 1:" in msg and "'sentence2'" in msg
    # An unlabelled split needs no label column, a labelled one does.
    no_label = write_tsv(tmp_path / "x.tsv", ["index", "sentence1", "sentence2"], [["0", "a", "b"]])
    assert read_glue_tsv(get_task("rte"), no_label, labelled=False)["label"] == [-1]
    with pytest.raises(APMError, match="'label'"):
        read_glue_tsv(get_task("rte"), no_label, labelled=True)
    dev_header = [*MNLI_PREFIX, "label1", "label2", "label3", "label4", "label5"]
    mnli = write_tsv(tmp_path / "dev_matched.tsv", dev_header, [_mnli_row(0, "a", "b", ["neutral"] * 5)])
    with pytest.raises(APMError, match="'gold_label'"):
        read_glue_tsv(get_task("mnli"), mnli, labelled=True)


def test_non_integer_index(tmp_path):
    path = write_tsv(tmp_path / "test.tsv", ["index", "sentence"], [["0", "a"], ["x1", "b"]])
    with pytest.raises(APMError) as err:
        read_glue_tsv(get_task("sst2"), path, labelled=False)
    assert f"{path}, line 3:" in str(err.value)


# ---------------------------------------------------------------------------------------------
# table files with a column mapping


def test_read_table_csv_with_column_map_and_label_names(tmp_path):
    path = tmp_path / "pairs.csv"
    path.write_text(
        "id,first,second,quality\n"
        '7,"He said ""hi"", then left.",The man left.,equivalent\n'
        "9,Two dogs run.,NA,not_equivalent\n"
        "11,None,,1\n",
        encoding="utf-8",
    )
    cmap = {"text_a": "first", "text_b": "second", "label": "quality", "idx": "id"}
    columns = read_table(get_task("mrpc"), path, cmap, labelled=True)
    assert columns["idx"] == [7, 9, 11]
    assert columns["text_a"] == ['He said "hi", then left.', "Two dogs run.", "None"]
    # Text that looks like a missing value stays text; an empty cell stays empty.
    assert columns["text_b"] == ["The man left.", "NA", ""]
    assert columns["label"] == [1, 0, 1]
    unlabelled = read_table(get_task("mrpc"), path, cmap, labelled=False)
    assert unlabelled["label"] == [-1, -1, -1]


def test_read_table_jsonl(tmp_path):
    path = tmp_path / "sst.jsonl"
    path.write_text(
        '{"text": "a gorgeous film", "sentiment": "positive"}\n'
        '{"text": "a mess", "sentiment": "negative"}\n'
        '{"text": "fine", "sentiment": 1}\n',
        encoding="utf-8",
    )
    columns = read_table(get_task("sst2"), path, {"text_a": "text", "label": "sentiment"}, labelled=True)
    assert columns == {"idx": [0, 1, 2], "text_a": ["a gorgeous film", "a mess", "fine"], "label": [1, 0, 1]}


def test_read_table_parquet_and_datamodule_files(tmp_path):
    import datasets

    path = tmp_path / "stsb.parquet"
    datasets.Dataset.from_dict(
        {"s1": ["A plane takes off.", "A cat."], "s2": ["A jet takes off.", "A dog."], "score": [4.8, 0.5]}
    ).to_parquet(str(path))
    cmap = {"text_a": "s1", "text_b": "s2", "label": "score"}
    columns = read_table(get_task("stsb"), path, cmap, labelled=True)
    assert columns["text_a"] == ["A plane takes off.", "A cat."]
    assert columns["label"] == pytest.approx([4.8, 0.5])
    assert columns["idx"] == [0, 1]
    nli = tmp_path / "nli.parquet"
    datasets.Dataset.from_dict(
        {
            "premise": ["p1", "p2", "p3"],
            "hypothesis": ["h1", "h2", "h3"],
            "y": ["neutral", "contradiction", "entailment"],
        }
    ).to_parquet(str(nli))
    dm = ClassificationDataModule(
        task="mnli",
        data_files={"train": str(nli), "test_matched": str(nli)},
        column_map={"text_a": "premise", "text_b": "hypothesis", "label": "y"},
    )
    train = dm.raw_split("train")
    assert train["label"] == [1, 2, 0]
    assert train["text_b"] == ["h1", "h2", "h3"]
    assert dm.raw_split("test_matched")["label"] == [-1, -1, -1]
    assert dm.source_description.startswith("files:")
    with pytest.raises(APMError, match="validation_matched"):
        dm.raw_split("validation_matched")


def test_read_table_tsv_keeps_quotes(tmp_path):
    path = tmp_path / "rte.tsv"
    path.write_text('sentence1\tsentence2\tlabel\n"Quoted" start\tb\tnot_entailment\n', encoding="utf-8")
    columns = read_table(get_task("rte"), path, None, labelled=True)
    assert columns["text_a"] == ['"Quoted" start']
    assert columns["label"] == [1]


def test_read_table_errors(tmp_path):
    path = tmp_path / "sst.csv"
    path.write_text("sentence,label\ngood,1\nbad,0\nodd,positive-ish\n", encoding="utf-8")
    with pytest.raises(APMError) as err:
        read_table(get_task("sst2"), path, {"text_a": "text"}, labelled=True)
    msg = str(err.value)
    assert str(path) in msg and "'text'" in msg and "text_a" in msg
    with pytest.raises(APMError) as err:
        read_table(get_task("sst2"), path, {"label": "gold"}, labelled=True)
    assert "'gold'" in str(err.value)
    with pytest.raises(APMError) as err:
        read_table(get_task("sst2"), path, None, labelled=True)
    assert f"{path}, line 4:" in str(err.value) and "positive-ish" in str(err.value)
    blank_label = tmp_path / "blank.csv"
    blank_label.write_text("sentence,label\ngood,1\nbad,\n", encoding="utf-8")
    with pytest.raises(APMError) as err:
        read_table(get_task("sst2"), blank_label, None, labelled=True)
    assert f"{blank_label}, line 3:" in str(err.value)
    with pytest.raises(APMError, match="not found"):
        read_table(get_task("sst2"), tmp_path / "missing.csv", None, labelled=True)
    txt = tmp_path / "data.txt"
    txt.write_text("x\n", encoding="utf-8")
    with pytest.raises(APMError, match="unsupported file type"):
        read_table(get_task("sst2"), txt, None, labelled=True)
    header_only = tmp_path / "empty.csv"
    header_only.write_text("sentence,label\n", encoding="utf-8")
    with pytest.raises(APMError, match="empty"):
        read_table(get_task("sst2"), header_only, None, labelled=True)


# ---------------------------------------------------------------------------------------------
# the synthetic task


def test_synthetic_sst2(tmp_path):
    root_a = sources.write_synthetic_sst2(tmp_path / "a")
    root_b = sources.write_synthetic_sst2(tmp_path / "b")
    sst2 = get_task("sst2")
    sizes = {"train.tsv": 2000, "dev.tsv": 400, "test.tsv": 200}
    for name, size in sizes.items():
        a, b = root_a / "SST-2" / name, root_b / "SST-2" / name
        assert a.read_bytes() == b.read_bytes(), name  # deterministic
        labelled = name != "test.tsv"
        columns = read_glue_tsv(sst2, a, labelled=labelled)
        assert n_rows(columns) == size
        if labelled:
            assert set(columns["label"]) == {0, 1}
            assert 0.3 < sum(columns["label"]) / size < 0.7
        else:
            assert columns["idx"] == list(range(size))
        assert all(t.endswith(" . ") for t in columns["text_a"])  # SST-2 style: trailing space
    dm = ClassificationDataModule(task="sst2", source="synthetic", cache_dir=str(tmp_path / "cache"))
    assert n_rows(dm.raw_split("train")) == 2000
    assert "synthetic" in dm.source_description
    with pytest.raises(APMError, match="synthetic"):
        ClassificationDataModule(task="rte", source="synthetic", cache_dir=str(tmp_path / "cache")).raw_split(
            "train"
        )


# ---------------------------------------------------------------------------------------------
# offline


def test_offline_without_local_data_fails_fast(monkeypatch):
    monkeypatch.delenv("APM_DATA_DIR", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    assert hub.hub_reachable() is False
    with pytest.raises(APMError) as err:
        ClassificationDataModule(task="qqp", data_dir=None).raw_split("train")
    elapsed = time.perf_counter() - start
    assert elapsed < 2.0
    msg = str(err.value)
    assert "offline" in msg and "data_dir" in msg and "qqp" in msg


def test_local_source_without_data_dir(monkeypatch):
    monkeypatch.delenv("APM_DATA_DIR", raising=False)
    with pytest.raises(APMError, match="APM_DATA_DIR"):
        ClassificationDataModule(task="rte", source="local").raw_split("train")
    with pytest.raises(APMError, match="unknown data source"):
        ClassificationDataModule(task="rte", source="ftp")
