"""Sharded corpus builds: several worker processes give the blocks one process gives, a build
killed by a real SIGKILL resumes with the shards it had not finished, one process builds an
entry while the others wait, and a streamed ``datasets`` source reads like the same files."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from apm_lightning.core.errors import APMError
from apm_lightning.data.base import TextDataModule
from apm_lightning.data.corpus import CorpusDataModule, separator_id, token_dtype

REPO = Path(__file__).resolve().parents[1]
WIKI = REPO.parent / "shared" / "data" / "corpus" / "wikitext-2-raw" / "wiki.valid.raw"

pytestmark = pytest.mark.skipif(not WIKI.is_file(), reason="../shared/data/corpus is missing")

DOCUMENTS = 300  # ~1,250 characters each: shards of 40,000 characters make ~9 of them
SMALL_SHARDS = 40_000


def corpus(cache: Path, **options) -> CorpusDataModule:
    options = {
        "files": str(WIKI),
        "tokenizer": "minilm",
        "block_size": 32,
        "batch_size": 4,
        "max_documents": DOCUMENTS,
        "validation_fraction": 0.1,
        "cache_dir": str(cache),
        **options,
    }
    return CorpusDataModule(**options)


def all_blocks(dm: CorpusDataModule) -> dict[str, list[list[int]]]:
    return {
        split: [dm.datasets[split][i]["input_ids"].tolist() for i in range(len(dm.datasets[split]))]
        for split in ("train", "validation")
    }


@pytest.fixture(scope="module")
def one_process(tmp_path_factory) -> CorpusDataModule:
    """The reference: one process, one shard per split."""
    dm = corpus(tmp_path_factory.mktemp("one"))
    dm.setup("fit")
    return dm


def test_data_module_is_a_text_data_module(one_process):
    assert isinstance(one_process, TextDataModule)
    assert one_process.tokenizer is one_process.encoder and one_process.tokenizer.is_fast
    assert [len(one_process.meta["shards"][s]) for s in ("train", "validation")] == [1, 1]


def test_two_processes_give_the_same_blocks(tmp_path, one_process):
    dm = corpus(tmp_path, num_proc=2, shard_chars=SMALL_SHARDS)
    dm.setup("fit")
    shards = dm.meta["shards"]["train"]
    assert len(shards) >= 5 and all((dm._folder / name).is_file() for name, _ in shards)
    # Same documents, tokens and split, whatever the layout; the stream reads across shard edges.
    for key in ("train_documents", "train_tokens", "validation_documents", "validation_tokens"):
        assert dm.meta[key] == one_process.meta[key], key
    assert np.array_equal(
        np.asarray(dm.datasets["train"].tokens), np.asarray(one_process.datasets["train"].tokens)
    )
    assert all_blocks(dm) == all_blocks(one_process)
    # The number of processes is not in the key: the same text and tokenizer, the same entry.
    assert dm.cache_key() == one_process.cache_key()
    auto = corpus(tmp_path, num_proc="auto")
    auto.encoder = dm.tokenizer
    assert auto.num_proc == len(os.sched_getaffinity(0)) and auto.cache_key() == dm.cache_key()


def test_a_killed_build_resumes_with_the_shards_left(tmp_path, one_process):
    # A real SIGKILL, sent by the building process itself once 3 shards are done (so the test
    # does not race the build). The killed process runs the build as token_folder() does, but
    # imports only the text source, the shard builder and `tokenizers` (not torch: seconds).
    dm = corpus(tmp_path, shard_chars=SMALL_SHARDS)
    dm.encoder = dm.make_encoder()
    building = tmp_path / "corpus" / f"{dm.cache_key()}.building"
    tokenizer_file = tmp_path / "tokenizer.json"
    dm.tokenizer.backend_tokenizer.save(str(tokenizer_file))
    script = f"""
import os, signal
from pathlib import Path
from tokenizers import Tokenizer
from apm_lightning.data.corpus_shards import build_shards
from apm_lightning.data.text_sources import TextSource
done = []
def kill_after_three(shard):
    done.append(shard["index"])
    if len(done) == 3:
        os.kill(os.getpid(), signal.SIGKILL)
build_shards(
    TextSource(files=[{str(WIKI)!r}], max_documents={DOCUMENTS}).documents(),
    Tokenizer.from_file({str(tokenizer_file)!r}),
    Path({str(building)!r}),
    sep={separator_id(dm.tokenizer)}, dtype={token_dtype(dm.tokenizer)!r}, validation_fraction=0.1,
    split_seed=0, shard_chars={SMALL_SHARDS}, on_shard_done=kill_after_three,
)
"""
    proc = subprocess.Popen([sys.executable, "-c", script], start_new_session=True, env=os.environ.copy())
    try:
        assert proc.wait(timeout=120) == -signal.SIGKILL
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    done = sorted(building.glob("shard-*.json"))
    assert [p.name for p in done] == [f"shard-{i:05d}.json" for i in range(3)]
    before = {p.name: p.stat().st_mtime_ns for p in building.glob("*-0000[012].bin")}
    assert len(before) == 6
    stale = building / ".train-00003.bin.tmp"  # what a worker killed mid-shard leaves
    stale.write_bytes(b"\0" * 10)

    built: list[int] = []
    folder = dm.token_folder(on_shard_done=lambda shard: built.append(shard["index"]))
    assert not building.exists() and (folder / "meta.json").is_file()
    assert not (folder / stale.name).exists()
    # Only the shards not done were tokenized; the done ones are the very same files.
    assert sorted(built) == list(range(3, len(dm_meta(folder)["shards"]["train"])))
    assert {name: (folder / name).stat().st_mtime_ns for name in before} == before
    dm.setup("fit")
    assert all_blocks(dm) == all_blocks(one_process)


def dm_meta(folder: Path) -> dict:
    return json.loads((folder / "meta.json").read_text(encoding="utf-8"))


def test_one_process_builds_while_the_others_wait(tmp_path, capfd):
    # Two "ranks" (threads: flock locks belong to each open file, as between processes) ask
    # for the same entry at once: one tokenizes, the other waits and reads its entry.
    dms = [corpus(tmp_path, shard_chars=SMALL_SHARDS) for _ in range(2)]
    tokenizer = dms[0].make_encoder()
    built: list[list[int]] = [[], []]
    folders: list[Path | None] = [None, None]

    def rank(i: int) -> None:
        dms[i].encoder = tokenizer
        folders[i] = dms[i].token_folder(on_shard_done=lambda shard: built[i].append(shard["index"]))

    threads = [threading.Thread(target=rank, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
        time.sleep(0.05)
    for t in threads:
        t.join(timeout=120)
    assert folders[0] == folders[1] and folders[0] is not None
    assert sorted([len(built[0]) > 0, len(built[1]) > 0]) == [False, True]
    assert "waiting for another process" in capfd.readouterr().err


def test_streamed_local_dataset_reads_like_the_files(tmp_path):
    texts = [f"Record {i} is about the topic number {i % 5} and nothing else at all." for i in range(120)]
    jsonl = tmp_path / "data" / "part-0.jsonl"
    jsonl.parent.mkdir()
    jsonl.write_text("".join(json.dumps({"text": t, "id": i}) + "\n" for i, t in enumerate(texts)))
    options = {"block_size": 16, "max_documents": None}
    from_files = corpus(tmp_path / "a", files=str(jsonl), **options)
    streamed = corpus(tmp_path / "b", files=None, dataset=str(jsonl.parent), streaming=True, **options)
    assert list(streamed.source.documents()) == texts
    for dm in (from_files, streamed):
        dm.setup("fit")
    assert all_blocks(streamed) == all_blocks(from_files)
    assert "streamed" in streamed.source.describe()
    # The key follows the content of the streamed files.
    before = streamed.cache_key()
    jsonl.write_text(jsonl.read_text().replace("Record 7 ", "Record 8 "))
    assert streamed.cache_key() != before
    wrong = corpus(tmp_path / "c", files=None, dataset=str(jsonl), streaming=True, text_field="body")
    with pytest.raises(APMError, match="no column 'body'"):
        list(wrong.source.documents())


def test_streamed_hub_dataset_offline_fails_fast(tmp_path, monkeypatch, capsys):
    from apm_lightning.cli import main

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    dm = corpus(tmp_path, files=None, dataset="someone/web-text", streaming=True)
    start = time.perf_counter()
    with pytest.raises(APMError, match="dataset 'someone/web-text': no local copy found and offline mode"):
        next(dm.source.documents())
    assert time.perf_counter() - start < 5
    with pytest.raises(APMError, match="data.streaming reads data.dataset"):
        corpus(tmp_path, streaming=True)
    with pytest.raises(APMError, match="data.num_proc must be"):
        corpus(tmp_path, num_proc=0)
    code = main(
        [
            "pretrain",
            "-c",
            str(REPO / "experiments" / "pretrain" / "mlm_tiny.yaml"),
            "--data.dataset=someone/web-text",
            "--data.streaming=true",
            "--trainer.default_root_dir",
            str(tmp_path / "run"),
            "--wandb_mode=disabled",
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "offline mode" in err[0], err
    assert not (tmp_path / "run").exists()  # refused before the run started


def test_token_stream_reads_shards_as_one_array(tmp_path):
    import pickle

    from apm_lightning.data.corpus_shards import TokenStream

    parts = [np.arange(0, 5), np.arange(5, 5), np.arange(5, 12), np.arange(12, 13)]
    paths = []
    for i, part in enumerate(parts):
        paths.append(tmp_path / f"train-{i:05d}.bin")
        part.astype(np.uint16).tofile(paths[-1])
    stream = TokenStream(paths, [len(p) for p in parts], "uint16")
    assert len(stream) == 13 and np.array_equal(np.asarray(stream), np.arange(13))
    for start in range(14):
        for stop in range(start, 15):
            assert np.array_equal(stream[start:stop], np.arange(13)[start:stop]), (start, stop)
    few = TokenStream(paths, [len(p) for p in parts], "uint16")
    few.MAX_OPEN = 2  # fewer maps than shards: the oldest is closed, reads stay right
    assert np.array_equal(few[3:13], np.arange(3, 13)) and len(few._maps) == 2
    copy = pickle.loads(pickle.dumps(stream))  # a loader worker maps the files itself
    assert copy._maps == {} and np.array_equal(copy[4:6], [4, 5])


def test_resume_ignores_the_number_of_processes():
    from apm_lightning.training.resume_check import data_differences

    stored = {"num_proc": 1, "shard_chars": 100, "block_size": 32}
    assert data_differences(stored, {**stored, "num_proc": 4, "shard_chars": 50}) == []
    assert data_differences(stored, {**stored, "block_size": 64}) == ["data.block_size was 32, now 64"]
