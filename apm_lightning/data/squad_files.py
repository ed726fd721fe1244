"""SQuAD v1.1 / v2.0 questions from the official JSON files or the hub, checked as they are read:
a malformed file is named with the article and question where it goes wrong."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from apm_lightning.core.checks import shorten
from apm_lightning.core.errors import APMError
from apm_lightning.data.text_encoding import decode_error, resolve_encoding

HUB_DATASETS = {1: "rajpurkar/squad", 2: "rajpurkar/squad_v2"}


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
