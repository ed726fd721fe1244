"""``apm tokenizer train``: learn a WordPiece, byte-level BPE or Unigram tokenizer from text.

The result is a folder that ``AutoTokenizer.from_pretrained`` loads. Every kind gets the full
set of special tokens the objectives need (padding at id 0, unknown, CLS/BOS, SEP/EOS, mask), and
a template that adds them: ``CLS a SEP`` for one text, ``CLS a SEP b SEP`` for a pair, so the
same tokenizer serves masked-LM pretraining and the GLUE classifier.

==========  ======================================  ==========================================
kind        model                                   special tokens (pad unk cls/bos sep/eos mask)
==========  ======================================  ==========================================
wordpiece   BERT: Bert normalizer and pre-tokenizer  ``[PAD] [UNK] [CLS] [SEP] [MASK]``
bpe         GPT-2/RoBERTa byte-level BPE             ``<pad> <unk> <s> </s> <mask>``
unigram     ALBERT/SentencePiece Unigram, Metaspace  ``<pad> <unk> [CLS] [SEP] [MASK]``
==========  ======================================  ==========================================

WordPiece and Unigram tokenizers give ``token_type_ids`` (0 for the first text, 1 for the
second) as BERT and ALBERT do; byte-level BPE gives none, as RoBERTa does.

``--sentinels N`` adds T5's span-corruption sentinels ``<extra_id_0>`` .. ``<extra_id_{N-1}>`` as
special tokens at the top of the vocabulary, counting down as in T5 (``<extra_id_0>`` has the
highest id); they count within ``--vocab-size``, so N fewer pieces are learned.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from apm_lightning.core.errors import APMError
from apm_lightning.core.redact import redact_text

KINDS = ("wordpiece", "bpe", "unigram")
# Learned pieces a vocabulary must have room for beyond its special tokens (and, for
# byte-level BPE, the 256 byte symbols it always holds).
MIN_LEARNED = 100
BYTE_ALPHABET = 256
SENTINEL = "<extra_id_{}>"  # T5's sentinel tokens (modules/objectives/span_corruption.py)
RECORD_FILE = "apm_tokenizer.json"


@dataclass(frozen=True)
class SpecialTokens:
    pad: str
    unk: str
    cls: str
    sep: str
    mask: str

    def in_order(self) -> list[str]:
        """Pad first, so that it gets id 0."""
        return [self.pad, self.unk, self.cls, self.sep, self.mask]


SPECIAL_TOKENS = {
    "wordpiece": SpecialTokens("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"),
    "bpe": SpecialTokens("<pad>", "<unk>", "<s>", "</s>", "<mask>"),
    "unigram": SpecialTokens("<pad>", "<unk>", "[CLS]", "[SEP]", "[MASK]"),
}
# Whether the tokenizer gives token_type_ids (segment 1 for the second text of a pair).
USES_TOKEN_TYPES = {"wordpiece": True, "bpe": False, "unigram": True}


def min_vocab_size(kind: str) -> int:
    kind = _check_kind(kind)
    reserved = len(SPECIAL_TOKENS[kind].in_order()) + (BYTE_ALPHABET if kind == "bpe" else 0)
    return reserved + MIN_LEARNED


def _check_kind(kind: str) -> str:
    name = str(kind).strip().lower()
    if name not in KINDS:
        raise APMError(f"unknown tokenizer kind {kind!r}: choose one of {', '.join(KINDS)}")
    return name


def _check_out_dir(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise APMError(f"{out} exists and is not a folder; choose another output folder")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise APMError(f"{out} exists and is not empty; choose another folder or pass --overwrite")
        resolved, cwd = out.resolve(), Path.cwd().resolve()
        if resolved in (cwd, *cwd.parents, Path.home().resolve()):
            raise APMError(f"refusing to replace {out} (the working folder, a parent of it or home)")


class _Counted:
    """Passes documents through, skipping blank ones, and counts documents and characters."""

    def __init__(self, texts: Iterable[str]) -> None:
        self._texts = iter(texts)
        self.documents = 0
        self.characters = 0
        self._first: str | None = None

    def has_text(self) -> bool:
        """Reads up to the first non-blank document (kept for the iteration)."""
        if self._first is None:
            self._first = next(self._non_blank(), None)
        return self._first is not None

    def _non_blank(self) -> Iterator[str]:
        for text in self._texts:
            if text is None:
                continue
            if not isinstance(text, str):
                raise APMError(f"tokenizer training text must be strings, got {type(text).__name__}")
            if text.strip():
                yield text

    def __iter__(self) -> Iterator[str]:
        if self._first is not None:
            first, self._first = self._first, None
            self._count(first)
            yield first
        for text in self._non_blank():
            self._count(text)
            yield text

    def _count(self, text: str) -> None:
        self.documents += 1
        self.characters += len(text)


def _build(kind: str, vocab_size: int, lowercase: bool, min_frequency: int):
    """An untrained ``tokenizers.Tokenizer`` for ``kind`` and the trainer that fills it."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    specials = SPECIAL_TOKENS[kind]
    if kind == "wordpiece":
        tokenizer = Tokenizer(models.WordPiece(unk_token=specials.unk, continuing_subword_prefix="##"))
        # BERT's normalizer: clean control characters, split CJK characters, and when
        # lowercasing also NFD + strip accents (as the uncased BERT models do).
        tokenizer.normalizer = normalizers.BertNormalizer(
            clean_text=True, handle_chinese_chars=True, strip_accents=lowercase, lowercase=lowercase
        )
        tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tokenizer.decoder = decoders.WordPiece(prefix="##")
        trainer = trainers.WordPieceTrainer(
            vocab_size=vocab_size,
            min_frequency=min_frequency,
            special_tokens=specials.in_order(),
            # Rare characters become [UNK] rather than fill a small vocabulary.
            limit_alphabet=min(1000, vocab_size // 2),
            continuing_subword_prefix="##",
            show_progress=False,
        )
    elif kind == "bpe":
        tokenizer = Tokenizer(models.BPE())
        steps = [normalizers.NFC()] + ([normalizers.Lowercase()] if lowercase else [])
        tokenizer.normalizer = normalizers.Sequence(steps)
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tokenizer.decoder = decoders.ByteLevel()
        # RoBERTa's mask token takes the space before it, so "a <mask>" predicts " word".
        mask = AddedToken(specials.mask, lstrip=True, special=True, normalized=False)
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            min_frequency=min_frequency,
            special_tokens=[*specials.in_order()[:-1], mask],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
    else:
        tokenizer = Tokenizer(models.Unigram())
        steps = [normalizers.NFKC()] + ([normalizers.Lowercase()] if lowercase else [])
        tokenizer.normalizer = normalizers.Sequence(steps)
        tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
        tokenizer.decoder = decoders.Metaspace()
        trainer = trainers.UnigramTrainer(
            vocab_size=vocab_size,
            special_tokens=specials.in_order(),
            unk_token=specials.unk,
            show_progress=False,
        )
    return tokenizer, trainer


def _post_processor(kind: str, tokenizer):
    from tokenizers import processors

    specials = SPECIAL_TOKENS[kind]
    cls, sep = specials.cls, specials.sep
    second = 1 if USES_TOKEN_TYPES[kind] else 0
    template = processors.TemplateProcessing(
        single=f"{cls} $A:0 {sep}:0",
        pair=f"{cls}:0 $A:0 {sep}:0 $B:{second} {sep}:{second}",
        special_tokens=[(cls, tokenizer.token_to_id(cls)), (sep, tokenizer.token_to_id(sep))],
    )
    if kind == "bpe":
        # Offsets without the leading space a byte-level token carries (for answer spans).
        return processors.Sequence([processors.ByteLevel(trim_offsets=True), template])
    return template


def train_tokenizer(
    texts: Iterable[str],
    kind: str,
    vocab_size: int,
    out_dir: str | Path,
    lowercase: bool = True,
    min_frequency: int = 2,
    model_max_length: int = 512,
    overwrite: bool = False,
    sentinels: int = 0,
) -> Path:
    """Learn a ``kind`` tokenizer of at most ``vocab_size`` entries from ``texts`` (documents)
    and save it to ``out_dir`` as a Hugging Face tokenizer folder; returns ``out_dir``.

    ``out_dir`` must be new or empty unless ``overwrite``; it is written beside and swapped in
    at the end, so a failure leaves it as it was.
    """
    kind = _check_kind(kind)
    out = Path(out_dir).expanduser().resolve()
    if not isinstance(sentinels, int) or sentinels < 0:
        raise APMError(f"sentinels must be 0 or more, got {sentinels}")
    smallest = min_vocab_size(kind) + sentinels
    if not isinstance(vocab_size, int) or vocab_size < smallest:
        reserved = "special tokens and 256 byte symbols" if kind == "bpe" else "special tokens"
        raise APMError(
            f"vocab_size {vocab_size} is too small for a {kind} tokenizer: use at least {smallest} "
            f"({reserved}{' and sentinels' if sentinels else ''} plus {MIN_LEARNED} learned pieces)"
        )
    if min_frequency < 0:
        raise APMError(f"min_frequency must be 0 or more, got {min_frequency}")
    if model_max_length < 1:
        raise APMError(f"model_max_length must be positive, got {model_max_length}")
    _check_out_dir(out, overwrite)

    documents = _Counted(texts)
    if not documents.has_text():
        raise APMError("no text to train a tokenizer on (every document is empty)")

    tokenizer, trainer = _build(kind, vocab_size - sentinels, lowercase, min_frequency)
    tokenizer.train_from_iterator(documents, trainer=trainer)
    tokenizer.post_processor = _post_processor(kind, tokenizer)
    # Added after the learned pieces, last first: <extra_id_0> gets the top id (T5's convention).
    extra = [SENTINEL.format(i) for i in reversed(range(sentinels))]
    if extra:
        from tokenizers import AddedToken

        tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in extra])

    from transformers import PreTrainedTokenizerFast

    specials = SPECIAL_TOKENS[kind]
    input_names = ["input_ids", "token_type_ids", "attention_mask"]
    if not USES_TOKEN_TYPES[kind]:
        input_names.remove("token_type_ids")
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        pad_token=specials.pad,
        unk_token=specials.unk,
        cls_token=specials.cls,
        sep_token=specials.sep,
        mask_token=specials.mask,
        bos_token=specials.cls,
        eos_token=specials.sep,
        model_max_length=model_max_length,
        model_input_names=input_names,
        **({"additional_special_tokens": extra} if extra else {}),
    )
    if wrapped.pad_token_id != 0:  # the trainers put special tokens first, in the order given
        raise RuntimeError(f"pad token got id {wrapped.pad_token_id}, expected 0")
    record = {
        "kind": kind,
        "vocab_size": tokenizer.get_vocab_size(),
        "requested_vocab_size": vocab_size,
        "lowercase": lowercase,
        "min_frequency": min_frequency,
        "sentinels": sentinels,
        "documents": documents.documents,
        "characters": documents.characters,
        "special_tokens": {
            "pad": specials.pad,
            "unk": specials.unk,
            "cls": specials.cls,
            "sep": specials.sep,
            "mask": specials.mask,
        },
    }

    # Write beside the target and swap in at the end: a failure leaves OUT as it was.
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        wrapped.save_pretrained(str(tmp))
        (tmp / RECORD_FILE).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        _check_out_dir(out, overwrite)  # still so: nothing appeared while training
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


# --------------------------------------------------------------------------- command line
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="apm tokenizer train",
        description="Learn a tokenizer from text files, a dataset or a GLUE task's training text, "
        "and save a folder that AutoTokenizer.from_pretrained loads.",
        allow_abbrev=False,
    )
    p.add_argument("--kind", required=True, help=f"one of {', '.join(KINDS)}")
    p.add_argument(
        "--vocab-size", type=int, required=True, help="largest vocabulary (special tokens included)"
    )
    p.add_argument("--out", required=True, help="output folder (must be new or empty unless --overwrite)")
    p.add_argument(
        "--files", nargs="+", action="extend", default=[], metavar="GLOB", help="text or JSONL files"
    )
    p.add_argument("--text-field", default="text", help="the text field of JSONL records or dataset rows")
    p.add_argument("--dataset", default=None, help="a datasets folder (save_to_disk) or hub name[:config]")
    p.add_argument("--dataset-split", default="train", help="the dataset's split (default: train)")
    p.add_argument("--glue-task", default=None, help="use this GLUE task's training text")
    p.add_argument("--data-dir", default=None, help="GLUE in its distribution layout (else $APM_DATA_DIR)")
    p.add_argument("--no-lowercase", action="store_true", help="keep case (and accents, for wordpiece)")
    p.add_argument("--min-frequency", type=int, default=2, help="rarest pair merged (wordpiece, bpe)")
    p.add_argument("--max-documents", type=int, default=None, help="read at most this many documents")
    p.add_argument("--model-max-length", type=int, default=512, help="the tokenizer's model_max_length")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder")
    p.add_argument("--sentinels", type=int, default=0, help="add T5's <extra_id_N> sentinels (top ids)")
    return p


def tokenizer_main(argv: list[str]) -> None:
    """``apm tokenizer train ...``; the output folder is the last line printed."""
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: apm tokenizer train --kind KIND --vocab-size N --out DIR [sources] [options]")
        print("       apm tokenizer train --help   for every option")
        return
    action, rest = argv[0], argv[1:]
    if action != "train":
        raise APMError(f"unknown tokenizer action {action!r}: use 'apm tokenizer train'")
    args = build_parser().parse_args(rest)
    kind = _check_kind(args.kind)
    if args.max_documents is not None and args.max_documents < 1:
        raise APMError(f"--max-documents must be positive, got {args.max_documents}")
    if not (args.files or args.dataset or args.glue_task):
        raise APMError("no text given: pass --files GLOB, --dataset NAME_OR_PATH or --glue-task TASK")
    if args.data_dir and not args.glue_task:
        raise APMError("--data-dir is for --glue-task; pass text with --files or --dataset")

    from apm_lightning.data.text_sources import TextSource

    source = TextSource(
        files=args.files,
        text_field=args.text_field,
        dataset=args.dataset,
        dataset_split=args.dataset_split,
        glue_task=args.glue_task,
        glue_data_dir=args.data_dir,
        max_documents=args.max_documents,
    )
    # Check the output folder and the globs before reading anything.
    _check_out_dir(Path(args.out).expanduser(), args.overwrite)
    print(redact_text(f"training a {kind} tokenizer (vocab {args.vocab_size}) on {source.describe()}"))
    out = train_tokenizer(
        source.documents(),
        kind,
        args.vocab_size,
        args.out,
        lowercase=not args.no_lowercase,
        min_frequency=args.min_frequency,
        model_max_length=args.model_max_length,
        overwrite=args.overwrite,
        sentinels=args.sentinels,
    )
    record = json.loads((out / RECORD_FILE).read_text(encoding="utf-8"))
    print(
        f"vocabulary {record['vocab_size']} from {record['documents']} documents "
        f"({record['characters']} characters)"
    )
    print(out.resolve())


__all__ = ["KINDS", "SPECIAL_TOKENS", "min_vocab_size", "train_tokenizer", "tokenizer_main"]
