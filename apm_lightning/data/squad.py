"""SQuADDataModule: extractive question answering on SQuAD v1.1 / v2.0 JSON files, a data root
(``$APM_DATA_DIR/squad/v1.1/dev-v1.1.json`` ...) or the hub (``rajpurkar/squad``,
``rajpurkar/squad_v2``).

Every question becomes one or more features: the question and a window of its context, long
contexts cut into overlapping windows (``max_seq_length``, ``doc_stride``) as the reference
implementations do. Training features carry the answer's start and end token, or the first
position (``[CLS]``) when the window does not hold the answer or there is none; evaluation
features carry their question's index and the character offsets of their context tokens, so
predicted spans map back to the original text. Tokenization is cached on disk like GLUE's.
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only
from torch.utils.data import DataLoader

from apm_lightning.checks import require_positive, require_sample_limit, shorten
from apm_lightning.data import sources
from apm_lightning.data.cache import cached_dataset, default_cache_dir
from apm_lightning.data.collate import EpochBatchSampler, PadCollator, ResumableLoader
from apm_lightning.data.text_encoding import decode_error, resolve_encoding
from apm_lightning.errors import APMError
from apm_lightning.redact import redact_text

SOURCES = ("auto", "files", "local", "hub")
HUB_DATASETS = {1: "rajpurkar/squad", 2: "rajpurkar/squad_v2"}
# Folder and file names under $APM_DATA_DIR/squad, as the official downloads are named.
LOCAL_LAYOUT = {
    1: ("v1.1", "train-v1.1.json", "dev-v1.1.json"),
    2: ("v2.0", "train-v2.0.json", "dev-v2.0.json"),
}


@dataclass(frozen=True)
class QAExample:
    """One question. ``answers`` is empty for an unanswerable (v2.0) or unlabelled question."""

    id: str
    title: str
    context: str
    question: str
    answers: tuple[str, ...] = ()
    answer_starts: tuple[int, ...] = ()


@dataclass
class SquadArticles:
    """A parsed file (or hub split): its questions per article and whether it is v2.0."""

    articles: list[list[QAExample]]
    is_v2: bool
    origin: str  # what the cache key names: path and content hash, or the hub dataset


# ---------------------------------------------------------------------------- reading
def _example(where: str, title: str, context: Any, qa: Any, require_answers: bool) -> tuple[QAExample, bool]:
    """Validate one question of the SQuAD layout; returns it and whether it is a v2.0 one."""
    if not isinstance(qa, dict) or "id" not in qa or "question" not in qa:
        raise APMError(f"{where}: article {title!r}: a question lacks 'id' or 'question'")
    qid = str(qa["id"])
    impossible = bool(qa.get("is_impossible", False))
    answers = qa.get("answers")
    if answers is None and require_answers:
        raise APMError(f"{where}: question {qid} (article {title!r}) has no 'answers' list")
    texts, starts = [], []
    for answer in answers or []:
        if not isinstance(answer, dict) or "text" not in answer or "answer_start" not in answer:
            raise APMError(
                f"{where}: question {qid} (article {title!r}): an answer lacks 'text' or 'answer_start'"
            )
        text, start = answer["text"], answer["answer_start"]
        if not isinstance(start, int) or context[start : start + len(text)] != text:
            found = context[start : start + len(text)] if isinstance(start, int) else start
            raise APMError(
                f"{where}: question {qid} (article {title!r}): answer {text!r} does not match the "
                f"context at answer_start {start!r} (found {found!r})"
            )
        texts.append(text)
        starts.append(start)
    if impossible and texts:
        raise APMError(f"{where}: question {qid} (article {title!r}) is_impossible but has answers")
    v2 = impossible or (require_answers and not texts)
    return QAExample(qid, title, context, qa["question"], tuple(texts), tuple(starts)), v2


def read_squad_file(path: str | Path, require_answers: bool = True) -> SquadArticles:
    """Read and validate a SQuAD-format JSON file; any problem is one :class:`APMError` line
    naming the file and the article or question."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise APMError(f"SQuAD file not found: {path}")
    raw = path.read_bytes()
    codec = resolve_encoding(path)  # UTF-8, or what a byte-order mark says
    try:
        text = raw.decode(codec)
    except UnicodeDecodeError:
        raise decode_error(path, codec) from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise APMError(f"{path}: not valid JSON ({shorten(err)})") from None
    if not isinstance(data, dict) or not isinstance(data.get("data"), list):
        raise APMError(f"{path}: not a SQuAD file (expected an object with a 'data' list of articles)")
    is_v2 = str(data.get("version", "")).lstrip("v").startswith("2")
    articles, seen = [], set()
    for number, article in enumerate(data["data"]):
        title = article.get("title", f"#{number}") if isinstance(article, dict) else f"#{number}"
        if not isinstance(article, dict) or not isinstance(article.get("paragraphs"), list):
            raise APMError(f"{path}: article {title!r} has no 'paragraphs' list")
        questions = []
        for paragraph in article["paragraphs"]:
            if not isinstance(paragraph, dict) or not isinstance(paragraph.get("context"), str):
                raise APMError(f"{path}: article {title!r}: a paragraph has no 'context' text")
            if not isinstance(paragraph.get("qas"), list):
                raise APMError(f"{path}: article {title!r}: a paragraph has no 'qas' list")
            for qa in paragraph["qas"]:
                example, v2 = _example(str(path), title, paragraph["context"], qa, require_answers)
                if example.id in seen:  # predictions are keyed by id
                    raise APMError(f"{path}: question id {example.id} appears twice")
                seen.add(example.id)
                questions.append(example)
                is_v2 |= v2
        articles.append(questions)
    # The cache key names the content (see data.cache.file_digest): the bytes read above.
    digest = hashlib.sha256(raw).hexdigest()[:32]
    return SquadArticles(articles, is_v2, f"{path.resolve()}|{digest}")


def read_squad_hub(version: int, split: str) -> SquadArticles:
    """A hub split in the same form (rows are grouped into articles by title)."""
    import datasets

    name = HUB_DATASETS[version]
    try:
        table = datasets.load_dataset(name, split=split)
    except Exception as err:
        raise APMError(f"could not load {name} ({split}) from the hub: {err}") from None
    articles: list[list[QAExample]] = []
    last_title = None
    for row in table:
        qa = {
            "id": row["id"],
            "question": row["question"],
            "answers": [
                {"text": t, "answer_start": s}
                for t, s in zip(row["answers"]["text"], row["answers"]["answer_start"], strict=True)
            ],
        }
        example, _ = _example(f"{name} ({split})", row["title"], row["context"], qa, True)
        if row["title"] != last_title:
            articles.append([])
            last_title = row["title"]
        articles[-1].append(example)
    return SquadArticles(articles, version == 2, f"hub:{name}:{split}")


# ---------------------------------------------------------------------------- features
def _answer_tokens(offsets: list, sequence_ids: list, start_char: int, end_char: int) -> tuple[int, int]:
    """First and last context token of the answer, or (0, 0) when the window does not hold it."""
    context = [k for k, s in enumerate(sequence_ids) if s == 1]
    if not context:
        return 0, 0
    first, last = context[0], context[-1]
    if offsets[first][0] > start_char or offsets[last][1] < end_char:
        return 0, 0
    # Bounded by the window's context (the reference loop can run into the final [SEP]).
    start = first
    while start <= last and offsets[start][0] <= start_char:
        start += 1
    end = last
    while end >= first and offsets[end][1] >= end_char:
        end -= 1
    return start - 1, end + 1


def prepare_features(
    tokenizer,
    examples: Sequence[QAExample],
    max_seq_length: int = 384,
    doc_stride: int = 128,
    max_query_length: int = 64,
    labels: bool = True,
    offsets: bool = False,
) -> dict[str, list]:
    """Tokenize questions with their contexts into overlapping windows.

    Returns ``input_ids`` (and ``token_type_ids`` when the tokenizer makes them), with
    ``labels``: ``start_positions``/``end_positions`` (the first answer; 0 when outside the
    window or unanswerable), with ``offsets``: ``example_index`` and ``offset_mapping``
    (character spans of context tokens, ``None`` elsewhere).
    """
    specials = tokenizer.num_special_tokens_to_add(pair=True)
    if doc_stride >= max_seq_length - max_query_length - specials:
        raise APMError(
            f"doc_stride={doc_stride} must be less than max_seq_length - max_query_length - "
            f"{specials} special tokens = {max_seq_length - max_query_length - specials}"
        )
    # Leading whitespace would become tokens of nothing; long questions are cut to
    # max_query_length tokens (Google's BERT recipe) so that every window keeps some context.
    questions = [ex.question.lstrip() for ex in examples]
    spans = tokenizer(questions, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    questions = [
        q[: s[max_query_length - 1][1]] if len(s) > max_query_length else q
        for q, s in zip(questions, spans, strict=True)
    ]
    encoded = tokenizer(
        questions,
        [ex.context for ex in examples],
        truncation="only_second",
        max_length=max_seq_length,
        stride=doc_stride,
        return_overflowing_tokens=True,
        return_offsets_mapping=True,
        return_attention_mask=False,  # rebuilt per batch by the collator
        padding=False,
    )
    sample_map = encoded["overflow_to_sample_mapping"]
    out: dict[str, list] = {k: encoded[k] for k in ("input_ids", "token_type_ids") if k in encoded}
    starts, ends, masked = [], [], []
    for i, window in enumerate(encoded["offset_mapping"]):
        sequence_ids = encoded.sequence_ids(i)
        example = examples[sample_map[i]]
        if labels:
            if example.answers:
                start_char = example.answer_starts[0]
                span = _answer_tokens(window, sequence_ids, start_char, start_char + len(example.answers[0]))
            else:
                span = (0, 0)
            starts.append(span[0])
            ends.append(span[1])
        if offsets:
            masked.append([list(o) if s == 1 else None for o, s in zip(window, sequence_ids, strict=True)])
    if labels:
        out["start_positions"], out["end_positions"] = starts, ends
    if offsets:
        out["example_index"] = list(sample_map)
        out["offset_mapping"] = masked
    return out


class QACollator:
    """:class:`PadCollator` for QA features; ``offset_mapping`` stays a list per feature."""

    def __init__(self, pad_values: dict[str, int]) -> None:
        self.pad = PadCollator(pad_values)

    def __call__(self, features: Sequence[dict]) -> dict[str, Any]:
        offsets = [f["offset_mapping"] for f in features] if "offset_mapping" in features[0] else None
        batch: dict[str, Any] = self.pad(
            [{k: v for k, v in f.items() if k != "offset_mapping"} for f in features]
        )
        if offsets is not None:
            batch["offset_mapping"] = offsets
        return batch


# ---------------------------------------------------------------------------- the data module
class SQuADDataModule(pl.LightningDataModule):
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
        super().__init__()
        self.save_hyperparameters()
        self._log_hyperparams = False  # the CLI logs the whole config (see GLUEDataModule)
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
        require_positive("data.batch_size", batch_size)
        require_positive("data.eval_batch_size", eval_batch_size, optional=True)
        require_sample_limit("data.max_train_samples", max_train_samples)
        require_sample_limit("data.max_eval_samples", max_eval_samples)
        require_sample_limit("data.max_predict_samples", max_predict_samples)
        self.source = source
        self.version = version
        self.split_by_article = split_by_article
        self.tokenizer_name = tokenizer
        self.max_seq_length = max_seq_length
        self.doc_stride = doc_stride
        self.max_query_length = max_query_length
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
        self.files = {"train": train_file, "validation": validation_file, "predict": predict_file}
        self.source_description = ""
        self._resolved = False
        self._parsed: dict[str, SquadArticles] = {}
        self._examples: dict[str, tuple[list[QAExample], str]] = {}
        self.encoder = None
        self.datasets: dict[str, Any] = {}

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
        elif not sources.hub_reachable():
            raise sources.hub_unreachable_error(
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

    def _stage_splits(self, stage: str) -> list[str]:
        # 'test' scores the labelled validation questions (SQuAD's test sets are hidden).
        return {
            "fit": ["train", "validation"],
            "validate": ["validation"],
            "test": ["validation"],
            "predict": ["predict"],
        }[stage]

    def split_names(self, stage: str) -> list[str]:
        """The split behind each dataloader of ``stage``."""
        return [s for s in self._stage_splits(stage) if stage != "fit" or s != "train"]

    def check(self, stage: str) -> None:
        """Read and validate every split ``stage`` needs, so bad data fails before a run."""
        for split in self._stage_splits(stage):
            self.examples(split)
        rank_zero_info(redact_text(f"SQuAD v{self.squad_version} data: {self.source_description}"))
        if stage in ("fit", "validate") and self.squad_version == 2:
            _warn_if_nothing_to_abstain_on(self.examples("validation"))

    # ------------------------------------------------------------------ tokenization
    def _make_encoder(self):
        if self.tokenizer_name:
            from transformers import AutoTokenizer

            from apm_lightning.data.encoders import JointPairEncoder
            from apm_lightning.models.backbones import resolve_tokenizer

            tokenizer = AutoTokenizer.from_pretrained(resolve_tokenizer(self.tokenizer_name))
            if tokenizer.pad_token is None:
                tokenizer.pad_token = tokenizer.eos_token
            encoder = JointPairEncoder(tokenizer)
        else:
            module = self.trainer.lightning_module if self.trainer is not None else None
            if module is None or not hasattr(module, "build_encoder"):
                raise APMError("SQuADDataModule needs a tokenizer: set --data.tokenizer or use an apm model")
            encoder = module.build_encoder(self)
        if not getattr(encoder.tokenizer, "is_fast", False):
            raise APMError("SQuAD needs a fast tokenizer (character offsets); this one is not")
        return encoder

    def _tokenized(self, split: str):
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

        def build() -> dict[str, list]:
            return prepare_features(
                self.encoder.tokenizer,
                examples,
                self.max_seq_length,
                self.doc_stride,
                self.max_query_length,
                labels=train,
                offsets=not train,
            )

        return cached_dataset(path, build)

    def setup(self, stage: str) -> None:
        if self.encoder is None:
            self.encoder = self._make_encoder()
        for split in self._stage_splits(stage):
            if split not in self.datasets:
                self.datasets[split] = self._tokenized(split)

    # ------------------------------------------------------------------ loaders
    def _loader_for(self, split: str, train: bool) -> DataLoader:
        dataset = self.datasets[split]
        world = self.trainer.world_size if self.trainer is not None else 1
        rank = self.trainer.global_rank if self.trainer is not None else 0
        # Evaluation features carry their question's index and offsets, so the sampler may
        # order them by length (less padding) and they still map back. Every rank evaluates all
        # features: the scoring decodes whole questions, which a shard would split.
        sampler = EpochBatchSampler(
            [len(x) for x in dataset["input_ids"]],
            self.batch_size if train else self.eval_batch_size,
            shuffle=train,
            seed=torch.initial_seed() % (2**31) if train else 0,
            num_replicas=world if train else 1,
            rank=rank if train else 0,
        )
        return (ResumableLoader if train else DataLoader)(
            dataset,
            batch_sampler=sampler,
            collate_fn=QACollator(self.encoder.pad_values),
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader_for("train", train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader_for("validation", train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader_for("validation", train=False)

    def predict_dataloader(self) -> DataLoader:
        # Lightning rebuilds prediction loaders around a plain sampler: sort by length up front.
        dataset = self.datasets["predict"]
        lengths = [len(x) for x in dataset["input_ids"]]
        ordered = dataset.select(sorted(range(len(lengths)), key=lambda i: -lengths[i]))
        return DataLoader(
            ordered,
            batch_size=self.eval_batch_size,
            shuffle=False,
            collate_fn=QACollator(self.encoder.pad_values),
            num_workers=self.num_workers,
        )


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
