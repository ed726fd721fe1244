"""SQuADDataModule: extractive question answering on SQuAD v1.1 / v2.0 JSON files, a data root
(``$APM_DATA_DIR/squad/v1.1/dev-v1.1.json`` ...) or the hub (``rajpurkar/squad``,
``rajpurkar/squad_v2``).

Files are read by ``squad_files``, questions become features in ``squad_features``; this module
decides where the data comes from, caches the features on disk and serves the loaders.
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Sequence
from functools import partial
from pathlib import Path

from lightning.pytorch.utilities import rank_zero_info, rank_zero_only
from torch.utils.data import DataLoader

from apm_lightning.core import hub
from apm_lightning.core.cache import cached_dataset
from apm_lightning.core.checks import require_sample_limit
from apm_lightning.core.errors import APMError
from apm_lightning.core.redact import redact_text
from apm_lightning.data import sources
from apm_lightning.data.base import TextDataModule
from apm_lightning.data.squad_features import QACollator, prepare_features
from apm_lightning.data.squad_files import (
    HUB_DATASETS,
    QAExample,
    SquadArticles,
    read_squad_file,
    read_squad_hub,
)

SOURCES = ("auto", "files", "local", "hub")
CHUNK_QUESTIONS = 500  # questions tokenized (and turned into Arrow) at a time
# Folder and file names under $APM_DATA_DIR/squad, as the official downloads are named.
LOCAL_LAYOUT = {
    1: ("v1.1", "train-v1.1.json", "dev-v1.1.json"),
    2: ("v2.0", "train-v2.0.json", "dev-v2.0.json"),
}


# ---------------------------------------------------------------------------- the data module
class SQuADDataModule(TextDataModule):
    """SQuAD v1.1 / v2.0 for extractive question answering.

    Args:
        train_file / validation_file / predict_file: SQuAD-format JSON files. ``apm predict``
            uses ``predict_file``, else the validation questions (answers optional there).
        version: 1 or 2; by default 2 when a file says ``v2.0`` or has unanswerable questions.
        source: ``auto`` (the files, else ``$APM_DATA_DIR/squad/v1.1|v2.0``, else the hub),
            ``files``, ``local`` or ``hub``.
        split_by_article: train on the first N articles of ``train_file``; the other articles
            validate unless ``validation_file`` is set (only SQuAD dev sets are offline here).
        tokenizer: a (fast) tokenizer path or name; by default the model supplies its own.
        max_seq_length / doc_stride / max_query_length: window length, overlap between windows
            and the longest question, in tokens.
        batch_size / eval_batch_size: features per training / evaluation batch.
        max_train_samples / max_eval_samples / max_predict_samples: keep the first N questions.
    """

    def __init__(
        self,
        train_file: str | None = None,
        validation_file: str | None = None,
        predict_file: str | None = None,
        version: int | None = None,
        source: str = "auto",
        split_by_article: int | None = None,
        tokenizer: str | None = None,
        max_seq_length: int = 384,
        doc_stride: int = 128,
        max_query_length: int = 64,
        batch_size: int = 16,
        eval_batch_size: int | None = None,
        max_train_samples: int | None = None,
        max_eval_samples: int | None = None,
        max_predict_samples: int | None = None,
        num_workers: int = 0,
        cache_dir: str | None = None,
    ) -> None:
        super().__init__(tokenizer, batch_size, eval_batch_size, num_workers, cache_dir)
        self.save_hyperparameters(logger=False)  # the CLI logs the whole config (see TextDataModule)
        if source not in SOURCES:
            raise APMError(f"unknown data source {source!r}: choose one of {', '.join(SOURCES)}")
        if version not in (None, 1, 2):
            raise APMError(f"SQuAD version must be 1 or 2, not {version!r}")
        if split_by_article is not None and split_by_article < 1:
            raise APMError(
                f"split_by_article={split_by_article}: give the number of training articles (1 or more)"
            )
        if not 0 < doc_stride < max_seq_length or max_query_length < 1:
            raise APMError(
                f"need 0 < doc_stride ({doc_stride}) < max_seq_length ({max_seq_length}) and max_query_length >= 1"
            )
        require_sample_limit("data.max_train_samples", max_train_samples)
        require_sample_limit("data.max_eval_samples", max_eval_samples)
        require_sample_limit("data.max_predict_samples", max_predict_samples)
        self.source = source
        self.version = version
        self.split_by_article = split_by_article
        self.max_seq_length = max_seq_length
        self.doc_stride = doc_stride
        self.max_query_length = max_query_length
        self.files = {"train": train_file, "validation": validation_file, "predict": predict_file}
        self._resolved = False
        self._parsed: dict[str, SquadArticles] = {}
        self._examples: dict[str, tuple[list[QAExample], str]] = {}

    # ------------------------------------------------------------------ sources
    def _resolve(self) -> None:
        """Decide where the data comes from (once): files, a data root or the hub."""
        if self._resolved:
            return
        given = {k: v for k, v in self.files.items() if v}
        if given and self.source in ("auto", "files"):
            self.source_description = "files: " + ", ".join(f"{k}={v}" for k, v in given.items())
        elif self.source == "files":
            raise APMError("source 'files' needs --data.train_file and/or --data.validation_file")
        elif self.source in ("auto", "local") and self._local_files():
            pass
        elif self.source == "local":
            version = self.version or 1
            folder, train, dev = LOCAL_LAYOUT[version]
            where = sources.data_root() or f"${sources.DATA_DIR_ENV}"
            raise APMError(
                f"no SQuAD files under {where}: expected {Path(str(where)) / 'squad' / folder / dev}"
            )
        elif not hub.hub_reachable():
            raise hub.hub_unreachable_error(
                "SQuAD", "pass --data.train_file / --data.validation_file (SQuAD JSON) or set $APM_DATA_DIR"
            )
        else:
            self.version = self.version or 1
            self.files = {"train": "hub:train", "validation": "hub:validation", "predict": None}
            self.source_description = f"Hugging Face hub: {HUB_DATASETS[self.version]}"
        self._resolved = True

    def _local_files(self) -> bool:
        root = sources.data_root()
        if root is None:
            return False
        for version in (self.version,) if self.version else (1, 2):
            folder, train, dev = LOCAL_LAYOUT[version]
            found = {
                split: str(root / "squad" / folder / name)
                for split, name in (("train", train), ("validation", dev))
                if (root / "squad" / folder / name).is_file()
            }
            if found and "train" not in found and self.split_by_article:
                # Only the dev set here (as in ../shared/data): split_by_article splits it.
                found = {"train": found["validation"]}
            if found:
                self.files = {"train": None, "validation": None, **found, "predict": None}
                self.version = version
                self.source_description = f"local SQuAD files: {root / 'squad' / folder}"
                return True
        return False

    def _parse(self, file: str, require_answers: bool) -> SquadArticles:
        if file not in self._parsed:
            if file.startswith("hub:"):
                parsed = read_squad_hub(self.version, file[4:])
            else:
                parsed = read_squad_file(file, require_answers)
            if self.version == 1 and parsed.is_v2:
                raise APMError(
                    f"{file} has unanswerable questions (SQuAD v2.0) but version is 1; "
                    "use experiments/squad/v2.yaml or --data.version 2"
                )
            self._parsed[file] = parsed
        return self._parsed[file]

    def _split_source(self, split: str) -> tuple[list[QAExample], str]:
        """A split's questions (before any row limit) and the origin the cache key names."""
        self._resolve()
        n = self.split_by_article
        if split == "predict" and self.files["predict"]:
            parsed = self._parse(self.files["predict"], require_answers=False)
            return [q for article in parsed.articles for q in article], parsed.origin
        if split in ("validation", "predict") and self.files["validation"]:
            parsed = self._parse(self.files["validation"], require_answers=True)
            return [q for article in parsed.articles for q in article], parsed.origin
        if split in ("validation", "predict") and not n:
            raise APMError("no validation data: set --data.validation_file, or --data.split_by_article N")
        if not self.files["train"]:
            raise APMError(
                "no training data: set --data.train_file (a SQuAD JSON file; with "
                "--data.split_by_article N its first N articles train)"
            )
        parsed = self._parse(self.files["train"], require_answers=True)
        if not n:
            chosen = parsed.articles
        elif n >= len(parsed.articles) and (split != "train" or not self.files["validation"]):
            raise APMError(
                f"split_by_article={n} leaves no validation articles: {self.files['train']} has "
                f"{len(parsed.articles)}"
            )
        else:
            chosen = parsed.articles[:n] if split == "train" else parsed.articles[n:]
        return [q for article in chosen for q in article], f"{parsed.origin}|articles:{n}"

    def _limit_for(self, split: str) -> int | None:
        return {
            "train": self.hparams.max_train_samples,
            "validation": self.hparams.max_eval_samples,
            "predict": self.hparams.max_predict_samples,
        }[split]

    def examples(self, split: str) -> list[QAExample]:
        """The questions of ``split`` (train, validation or predict), read once and kept."""
        if split not in self._examples:
            questions, origin = self._split_source(split)
            limit = self._limit_for(split)
            self._examples[split] = (questions[:limit] if limit is not None else questions, origin)
        return self._examples[split][0]

    @property
    def squad_version(self) -> int:
        """1 or 2: as configured, else 2 when any file read so far is a v2.0 file."""
        if self.version:
            return self.version
        if not self._parsed:
            self.examples("validation")
        return 2 if any(p.is_v2 for p in self._parsed.values()) else 1

    def stage_splits(self, stage: str) -> list[str]:
        # 'test' scores the labelled validation questions (SQuAD's test sets are hidden).
        return {
            "fit": ["train", "validation"],
            "validate": ["validation"],
            "test": ["validation"],
            "predict": ["predict"],
        }[stage]

    def split_names(self, stage: str) -> list[str]:
        """The split behind each dataloader of ``stage``."""
        return [s for s in self.stage_splits(stage) if stage != "fit" or s != "train"]

    def check(self, stage: str) -> None:
        """Read and validate every split ``stage`` needs, so bad data fails before a run."""
        for split in self.stage_splits(stage):
            self.examples(split)
        rank_zero_info(redact_text(f"SQuAD v{self.squad_version} data: {self.source_description}"))
        if stage in ("fit", "validate") and self.squad_version == 2:
            _warn_if_nothing_to_abstain_on(self.examples("validation"))

    # ------------------------------------------------------------------ tokenization
    def make_encoder(self):
        encoder = super().make_encoder()
        if not getattr(encoder.tokenizer, "is_fast", False):
            raise APMError("SQuAD needs a fast tokenizer (character offsets); this one is not")
        return encoder

    def build_split(self, split: str):
        examples = self.examples(split)
        train = split == "train"
        parts = [
            "squad",
            split,
            self._examples[split][1],
            self.encoder.fingerprint,
            self.max_seq_length,
            self.doc_stride,
            self.max_query_length,
            self._limit_for(split),
        ]
        key = hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:20]
        path = self.cache_dir / "tokenized" / f"squad-{split}-{key}"

        def build():
            import datasets

            # In parts of CHUNK_QUESTIONS questions, each made Arrow at once: the features of a
            # whole split as Python lists (offsets above all) took about 450 MB for 5,000
            # questions, and much of it stayed in the process after it was freed.
            parts = []
            # A generative model's encoder writes its own features (source text and answer as
            # the target: squad_generative.py); span extraction takes windows and positions.
            features = getattr(self.encoder, "squad_features", None) or partial(
                prepare_features, self.encoder.tokenizer
            )
            for first in range(0, max(len(examples), 1), CHUNK_QUESTIONS):
                columns = features(
                    examples[first : first + CHUNK_QUESTIONS],
                    self.max_seq_length,
                    self.doc_stride,
                    self.max_query_length,
                    labels=train,
                    offsets=not train,
                )
                if "example_index" in columns:
                    columns["example_index"] = [first + i for i in columns["example_index"]]
                parts.append(datasets.Dataset.from_dict(columns))
            return datasets.concatenate_datasets(parts)

        return cached_dataset(path, build)

    # ------------------------------------------------------------------ loaders
    def collate(self, train: bool) -> QACollator:
        return QACollator(self.encoder.pad_values)

    def _loader_for(self, split: str, train: bool) -> DataLoader:
        dataset = self.datasets[split]
        # Evaluation features carry their question's index and offsets, so the sampler may
        # order them by length (less padding) and they still map back. Every rank evaluates all
        # features: the scoring decodes whole questions, which a shard would split.
        return self.batch_loader(dataset, _lengths(dataset), train, shard_evaluation=False)

    def train_dataloader(self) -> DataLoader:
        return self._loader_for("train", train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader_for("validation", train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader_for("validation", train=False)

    def predict_dataloader(self) -> DataLoader:
        dataset = self.datasets["predict"]
        return self.predict_loader(dataset, _lengths(dataset))


def _lengths(dataset) -> list[int]:
    """Tokens per feature, read from the Arrow column: ``dataset["input_ids"]`` would first make
    every window a Python list of ints (about 80 MB for SQuAD v1.1 dev) on every loader."""
    import pyarrow.compute as pc

    return pc.list_value_length(dataset.with_format("arrow")["input_ids"]).to_pylist()


@rank_zero_only
def _warn_if_nothing_to_abstain_on(questions: Sequence[QAExample]) -> None:
    """The v2.0 no-answer threshold is tuned on the validation questions; without an
    unanswerable one among them it can only learn to answer, and nothing else would say so."""
    if questions and all(q.answers for q in questions):
        print(
            f"apm: warning: none of the {len(questions)} SQuAD v2.0 validation questions is "
            "unanswerable, so the no-answer threshold is tuned to answer (it cannot learn to "
            "abstain); validate on questions that include unanswerable ones (another "
            "--data.split_by_article, --data.validation_file or a larger --data.max_eval_samples)",
            file=sys.stderr,
            flush=True,
        )
