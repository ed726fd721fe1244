"""Raw text for pretraining and tokenizer training, as a stream of documents.

Sources (any mix):
- ``files``: text files or globs; ``.jsonl``/``.json`` files give one document per record
  (``text_field``); other files are split into documents by ``document_split``:
  ``paragraph`` (blank lines, the default), ``line`` or ``file``; ``encoding`` ``auto`` reads
  UTF-8, and Latin-1 for a file that is not valid UTF-8;
- ``dataset``: a ``datasets`` folder written by ``save_to_disk``, or a hub dataset name
  (``name`` or ``name:config``), its ``dataset_split`` and ``text_field``; with ``streaming``,
  read record by record (``load_dataset(..., streaming=True)``: nothing is downloaded or
  converted up front), and a data file or a folder of data files is accepted too;
- ``glue_task``: the text columns of a GLUE task's training split (task-adaptive pretraining),
  read by the GLUE data module from ``glue_data_dir``; a sentence pair is one document.

``fingerprint`` names the content (paths, hashes of the files' bytes, options), so caches of
tokenized text are rebuilt when a file changes.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from apm_lightning.core.errors import APMError

DOCUMENT_SPLITS = ("paragraph", "line", "file")


def file_encoding(path: Path) -> str:
    """``utf-8`` when the whole file decodes as UTF-8, else ``latin-1`` (which decodes any
    bytes): old corpora such as some Project Gutenberg texts are Latin-1."""
    from apm_lightning.data.text_encoding import decodes, resolve_encoding

    marked = resolve_encoding(path)  # a byte-order mark decides (UTF-16 is not Latin-1)
    if marked != "utf-8":
        return marked
    return "utf-8" if decodes(path, "utf-8") else "latin-1"


@dataclass
class TextSource:
    files: list[str] = field(default_factory=list)
    text_field: str = "text"
    document_split: str = "paragraph"
    dataset: str | None = None
    dataset_split: str = "train"
    streaming: bool = False
    glue_task: str | None = None
    glue_data_dir: str | None = None
    max_documents: int | None = None
    encoding: str = "auto"

    def __post_init__(self) -> None:
        if isinstance(self.files, str):
            self.files = [self.files]
        if self.document_split not in DOCUMENT_SPLITS:
            raise APMError(
                f"unknown document_split {self.document_split!r}: choose one of {', '.join(DOCUMENT_SPLITS)}"
            )
        if not (self.files or self.dataset or self.glue_task):
            raise APMError("no text given: set data.files (a glob), data.dataset or data.glue_task")
        if self.streaming and not self.dataset:
            raise APMError("data.streaming reads data.dataset: set it (a hub name or local data files)")

    # ------------------------------------------------------------------ what is read
    def resolved_files(self) -> list[Path]:
        """Every file the globs match, sorted; a pattern that matches nothing is an error."""
        found: list[Path] = []
        for pattern in self.files:
            expanded = os.path.expanduser(pattern)
            matches = sorted(glob.glob(expanded, recursive=True))
            matches = [m for m in matches if Path(m).is_file()]
            if not matches:
                raise APMError(f"no text files match {pattern!r} (check the path or glob)")
            found.extend(Path(m) for m in matches)
        return found

    def fingerprint(self) -> str:
        from apm_lightning.core.cache import file_digest

        parts = {k: v for k, v in asdict(self).items() if k != "files"}
        if not self.streaming:
            del parts["streaming"]  # keys made before the option existed stay the same
        for path in self.resolved_files():
            # The bytes, not size and mtime: an edit that keeps both must not reuse the cache.
            parts[str(path.resolve())] = file_digest(path)
        if self.streaming and self.dataset and Path(self.dataset).exists():
            for path in _data_files(Path(self.dataset)):
                parts[str(path.resolve())] = file_digest(path)
        elif self.dataset and Path(self.dataset).exists():
            stat = Path(self.dataset).stat()
            parts["dataset_mtime"] = stat.st_mtime_ns
        return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]

    def check_dataset(self) -> None:
        """A hub dataset offline fails here, before a run starts, in one line."""
        from apm_lightning.core import hub

        if self.dataset and not Path(self.dataset).exists():
            if hub.hub_offline_requested() or not hub.hub_reachable():
                raise hub.hub_unreachable_error(
                    f"dataset {self.dataset!r}",
                    "pass text files (data.files) or local data files (data.dataset)",
                )

    def describe(self) -> str:
        parts = []
        if self.files:
            parts.append(f"{len(self.resolved_files())} file(s) {', '.join(self.files)}")
        if self.dataset:
            streamed = ", streamed" if self.streaming else ""
            parts.append(f"dataset {self.dataset} [{self.dataset_split}{streamed}]")
        if self.glue_task:
            parts.append(f"GLUE {self.glue_task} training text")
        return "; ".join(parts)

    def documents(self) -> Iterator[str]:
        """Non-empty documents, in a fixed order, at most ``max_documents``."""
        if self.max_documents is not None and self.max_documents < 1:
            raise APMError(f"max_documents must be 1 or more, not {self.max_documents}")
        count = 0
        for doc in self._all_documents():
            if doc is None:  # a null text field or dataset cell: no document
                continue
            doc = str(doc).strip()
            if not doc:
                continue
            yield doc
            count += 1
            if self.max_documents is not None and count >= self.max_documents:
                return

    def _all_documents(self) -> Iterator[str]:
        for path in self.resolved_files():
            yield from self._file_documents(path)
        if self.dataset:
            yield from self._dataset_documents()
        if self.glue_task:
            yield from self._glue_documents()

    def _file_documents(self, path: Path) -> Iterator[str]:
        if path.suffix in (".jsonl", ".json"):
            yield from self._jsonl_documents(path)
            return
        encoding = file_encoding(path) if self.encoding == "auto" else self.encoding
        try:
            with open(path, encoding=encoding) as f:  # universal newlines: CRLF files too
                if self.document_split == "file":
                    yield f.read()
                elif self.document_split == "line":
                    yield from f
                else:
                    paragraph: list[str] = []
                    for line in f:
                        if line.strip():
                            paragraph.append(line.strip())
                        elif paragraph:
                            yield " ".join(paragraph)
                            paragraph = []
                    if paragraph:
                        yield " ".join(paragraph)
        except UnicodeDecodeError:
            from apm_lightning.data.text_encoding import decode_error

            raise decode_error(path, encoding) from None

    def _jsonl_documents(self, path: Path) -> Iterator[str]:
        try:
            yield from self._jsonl_records(path)
        except UnicodeDecodeError:
            from apm_lightning.data.text_encoding import decode_error

            raise decode_error(path, "utf-8") from None

    def _jsonl_records(self, path: Path) -> Iterator[str]:
        with open(path, encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as err:
                    raise APMError(f"{path}:{number}: not a JSON line ({err.msg})") from None
                if not isinstance(record, dict) or self.text_field not in record:
                    keys = ", ".join(record) if isinstance(record, dict) else type(record).__name__
                    raise APMError(
                        f"{path}:{number}: no field {self.text_field!r} (found: {keys}); set data.text_field"
                    )
                yield record[self.text_field]

    def _dataset_documents(self) -> Iterator[str]:
        import datasets

        from apm_lightning.core import hub

        name = self.dataset
        if self.streaming and not _saved_dataset(Path(name)):
            yield from self._streamed_documents()
            return
        if Path(name).exists():
            loaded = datasets.load_from_disk(name)
            if isinstance(loaded, datasets.DatasetDict):
                if self.dataset_split not in loaded:
                    raise APMError(f"{name} has no split {self.dataset_split!r} (it has {', '.join(loaded)})")
                loaded = loaded[self.dataset_split]
        else:
            if hub.hub_offline_requested() or not hub.hub_reachable():
                raise hub.hub_unreachable_error(
                    f"dataset {name!r}", "pass text files (data.files) or a local datasets folder"
                )
            repo, _, config = name.partition(":")
            loaded = datasets.load_dataset(repo, config or None, split=self.dataset_split)
        if self.text_field not in loaded.column_names:
            raise APMError(
                f"dataset {name} has no column {self.text_field!r} (it has "
                f"{', '.join(loaded.column_names)}); set data.text_field"
            )
        for start in range(0, len(loaded), 1000):
            yield from loaded[start : start + 1000][self.text_field]

    def _glue_documents(self) -> Iterator[str]:
        from apm_lightning.data.classification import ClassificationDataModule

        glue = ClassificationDataModule(task=self.glue_task, data_dir=self.glue_data_dir)
        raw = glue.raw_split("train")
        pairs = raw.get("text_b")
        for i, text in enumerate(raw["text_a"]):
            yield f"{text} {pairs[i]}" if pairs else text

    def _streamed_documents(self) -> Iterator[str]:
        """Records of a streamed ``datasets.IterableDataset``, one at a time."""
        import datasets

        name = self.dataset
        local = Path(name)
        if local.exists():
            files = [str(p) for p in _data_files(local)]
            builder = _builder_for(files)
            if builder is None:
                raise APMError(
                    f"{name}: no json, jsonl, csv, parquet or text files to stream; name a data file or folder"
                )
            loaded = datasets.load_dataset(builder, data_files={self.dataset_split: files}, streaming=True)
            loaded = loaded[self.dataset_split]
        else:
            self.check_dataset()
            repo, _, config = name.partition(":")
            loaded = datasets.load_dataset(repo, config or None, split=self.dataset_split, streaming=True)
        columns = loaded.column_names  # None when the features are only known after reading
        if columns is not None and self.text_field not in columns:
            raise APMError(
                f"dataset {name} has no column {self.text_field!r} (it has {', '.join(columns)}); "
                "set data.text_field"
            )
        for record in loaded:
            if self.text_field not in record:
                raise APMError(
                    f"dataset {name} has no column {self.text_field!r} (it has {', '.join(record)}); "
                    "set data.text_field"
                )
            yield record[self.text_field]


BUILDERS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet", ".txt": "text"}


def _saved_dataset(path: Path) -> bool:
    """A folder written by ``save_to_disk`` (read memory-mapped, already streamed in slices)."""
    return path.is_dir() and any((path / f).is_file() for f in ("state.json", "dataset_dict.json"))


def _data_files(path: Path) -> list[Path]:
    """The data files of a local streamed dataset: the file itself, or a folder's, sorted."""
    if path.is_file():
        return [path]
    return sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in BUILDERS)


def _builder_for(files: list[str]) -> str | None:
    kinds = {BUILDERS.get(Path(f).suffix) for f in files}
    if len(kinds) > 1:
        raise APMError(f"data files of several kinds ({', '.join(sorted(map(str, kinds)))}): stream one kind")
    return next(iter(kinds)) if files else None
