"""ClassificationDataModule: a sentence or sentence-pair classification (or regression) task,
declared as data (``apm_lightning.data.task_spec``): GLUE's nine tasks and AX, or a user's task
file. The rows come from the task's own files, a local folder in the GLUE layout, the Hugging
Face hub (``nyu-mll/glue`` for GLUE), any table file with a column mapping, or a synthetic
stand-in for demos.

Tokenization uses the model's encoder (see ``apm_lightning.data.encoders``), runs batched on the
fast tokenizer, and is cached on disk with ``datasets`` so a second run skips it.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import DataLoader

from apm_lightning.core import hub
from apm_lightning.core.cache import cached_dataset, file_digest
from apm_lightning.core.checks import not_a_file_reason, require_sample_limit
from apm_lightning.core.errors import APMError
from apm_lightning.core.redact import redact_text
from apm_lightning.data import sources
from apm_lightning.data.base import TextDataModule
from apm_lightning.data.collate import PadCollator
from apm_lightning.data.task_files import label_converter, read_glue_tsv, read_table
from apm_lightning.data.task_spec import TaskSpec
from apm_lightning.data.tasks import get_task
from apm_lightning.data.text_encoding import check_encoding_name

log = logging.getLogger(__name__)

SOURCES = ("auto", "local", "hub", "files", "synthetic")


class ClassificationDataModule(TextDataModule):
    """The data of one classification task.

    Args:
        task: a registered task (cola, sst2, mrpc, stsb, qqp, mnli, qnli, rte, wnli, ax) or the
            path of a task file (YAML, see ``apm_lightning.data.task_spec``).
        data_dir: a folder holding the task's folder in the GLUE layout (``DIR/SST-2/...``),
            or a data root with ``glue/`` in it (``$APM_DATA_DIR`` is used when unset).
        source: ``auto`` (data_files, else the task file's own files, else
            data_dir/``$APM_DATA_DIR``, else the hub), or one of ``local``, ``hub``, ``files``
            (data_files or the task file's files), ``synthetic`` (an SST-2-style demo task).
        data_files: split name -> CSV/TSV/JSON/parquet file, read with ``column_map``.
        column_map: our column (``text_a``, ``text_b``, ``label``, ``idx``) -> the file's column.
        tokenizer: a tokenizer path or hub name; by default the model supplies its own.
        max_seq_length: truncation length in tokens.
        batch_size / eval_batch_size: rows per training / evaluation batch.
        max_train_samples / max_eval_samples / max_predict_samples: keep the first N rows.
        group_by_length: batch training rows of similar length together (less padding).
        test_split: the labelled split ``apm test`` scores (GLUE test files have no labels).
        predict_split: the split(s) ``apm predict`` writes (``test`` covers MNLI's two).
        encoding: of local text files (TSV, CSV, JSON): ``auto`` is UTF-8, or UTF-16/UTF-32
            when the file starts with a byte-order mark; else a codec name such as ``latin-1``.
    """

    def __init__(
        self,
        task: str = "sst2",
        data_dir: str | None = None,
        source: str = "auto",
        data_files: dict[str, str] | None = None,
        column_map: dict[str, str] | None = None,
        tokenizer: str | None = None,
        max_seq_length: int = 128,
        batch_size: int = 32,
        eval_batch_size: int | None = None,
        max_train_samples: int | None = None,
        max_eval_samples: int | None = None,
        max_predict_samples: int | None = None,
        group_by_length: bool = False,
        test_split: str = "validation",
        predict_split: str = "test",
        num_workers: int = 0,
        cache_dir: str | None = None,
        encoding: str = "auto",
    ) -> None:
        super().__init__(tokenizer, batch_size, eval_batch_size, num_workers, cache_dir)
        self.save_hyperparameters(logger=False)  # the CLI logs the whole config (see TextDataModule)
        self.task: TaskSpec = get_task(task)
        if source not in SOURCES:
            raise APMError(f"unknown data source {source!r}: choose one of {', '.join(SOURCES)}")
        if max_seq_length < 8:
            raise APMError(f"max_seq_length={max_seq_length} is too short (use 8 or more)")
        require_sample_limit("data.max_train_samples", max_train_samples)
        require_sample_limit("data.max_eval_samples", max_eval_samples)
        require_sample_limit("data.max_predict_samples", max_predict_samples)
        check_encoding_name(encoding)
        self.encoding = encoding
        self._identities: dict[str, str] = {}
        self.data_dir = data_dir
        self.source = source
        self.data_files = data_files
        self.column_map = column_map
        self.max_seq_length = max_seq_length
        self.max_train_samples = max_train_samples
        self.max_eval_samples = max_eval_samples
        self.max_predict_samples = max_predict_samples
        self.group_by_length = group_by_length
        self.test_split = test_split
        self.predict_split = predict_split
        self._raw: dict[str, dict[str, list]] = {}
        self._loader = None  # resolved on first use

    # ------------------------------------------------------------------ splits and sources
    @property
    def validation_splits(self) -> list[str]:
        return self.task.validation_splits

    def splits_for(self, name: str) -> list[str]:
        """Expand 'validation'/'test' to MNLI's matched and mismatched splits."""
        if name in self.task.splits:
            return [name]
        expanded = [s for s in self.task.splits if s.startswith(name + "_")]
        if not expanded:
            raise APMError(f"{self.task.name} has no split {name!r} (it has {', '.join(self.task.splits)})")
        return expanded

    def _local_task_dir(self, root: Path) -> Path | None:
        first = next(iter(self.task.splits.values())).filename
        for candidate in (root / self.task.folder, root / "glue" / self.task.folder, root):
            reason = not_a_file_reason(candidate / first)
            if reason is None:
                return candidate
            if reason != "does not exist":  # there, but unreadable: say so, not "no folder"
                raise APMError(
                    f"{self.task.name}: {candidate / first} {reason}; it must be the split's TSV file"
                )
        return None

    def _resolve_loader(self):
        """Decide where the data comes from; return a function split -> columns."""
        task = self.task
        source = self.source
        if source == "files" and not self.data_files and task.files_dir is not None:
            return self._task_files_loader()
        if source == "files" or (source == "auto" and self.data_files):
            files = self.data_files or {}
            self.source_description = "files: " + ", ".join(f"{k}={v}" for k, v in files.items())

            def from_files(split: str) -> dict[str, list]:
                if split not in files:
                    raise APMError(
                        f"{task.name}: no file given for split {split!r} (set --data.data_files.{split} PATH)"
                    )
                return read_table(
                    task, files[split], self.column_map, task.splits[split].labelled, self.encoding
                )

            return from_files
        if source == "synthetic":
            if task.name != "sst2":
                raise APMError("the synthetic source only provides an SST-2-style task (task: sst2)")
            root = sources.write_synthetic_sst2(self.cache_dir / "synthetic")
            self.source_description = f"synthetic SST-2-style task (written to {root})"
            return self._local_loader(root / task.folder)
        if source == "auto" and task.files_dir is not None:
            return self._task_files_loader()
        if source in ("auto", "local") and task.folder is not None:
            roots = []
            if self.data_dir:
                roots.append(Path(self.data_dir).expanduser())
            elif sources.data_root() is not None:
                roots.append(sources.data_root())
            for root in roots:
                found = self._local_task_dir(root)
                if found is not None:
                    self.source_description = f"local GLUE files: {found}"
                    return self._local_loader(found)
            if self.data_dir or source == "local":
                where = self.data_dir or f"${sources.DATA_DIR_ENV}"
                raise APMError(
                    f"{task.name}: no {task.folder}/ folder in the GLUE layout under {where} "
                    f"(expected e.g. {Path(where) / task.folder / next(iter(task.splits.values())).filename})"
                )
        if task.hub_dataset is None or source == "local":
            raise APMError(
                f"{task.name}: no data source: the task ({task.declared_in}) names no files and no hub "
                f"dataset{'' if source == 'auto' else f' for --data.source {source}'}; set --data.data_files"
            )
        # The hub: the real path for users with internet; fail fast and clearly without it.
        if not hub.hub_reachable():
            hint = (
                f"set --data.data_dir (or ${sources.DATA_DIR_ENV}) to a folder in the GLUE layout"
                if task.folder
                else "set --data.data_files.SPLIT to local files"
            )
            raise hub.hub_unreachable_error(f"{'GLUE ' if task.folder else ''}task {task.name}", hint)
        config = f"/{task.hub_config}" if task.hub_config else ""
        self.source_description = f"Hugging Face hub: {task.hub_dataset}{config}"
        return self._hub_loader

    def _task_files_loader(self):
        """The files a task file names, relative to it (``splits.<split>.file``)."""
        task = self.task
        folder = Path(task.files_dir)
        self.source_description = f"task files: {folder}"
        self._local_folder = folder

        def load(split: str) -> dict[str, list]:
            spec = task.splits[split]
            if spec.filename is None:
                raise APMError(
                    f"{task.name}: {task.declared_in} gives split {split!r} no file; add splits.{split}.file"
                )
            return read_table(task, folder / spec.filename, self.column_map, spec.labelled, self.encoding)

        return load

    def _local_loader(self, folder: Path):
        def load(split: str) -> dict[str, list]:
            spec = self.task.splits[split]
            return read_glue_tsv(self.task, folder / spec.filename, spec.labelled, self.encoding)

        self._local_folder = folder
        return load

    def _hub_loader(self, split: str) -> dict[str, list]:
        import datasets

        task = self.task
        try:
            table = datasets.load_dataset(task.hub_dataset, task.hub_config, split=split)
        except Exception as err:
            raise APMError(
                f"could not load {task.hub_dataset}/{task.hub_config} ({split}) from the hub: {err}"
            ) from None
        ids = list(table[task.hub_id_column]) if task.hub_id_column in table.column_names else None
        columns = {"idx": ids or list(range(len(table))), "text_a": list(table[task.hub_text_columns[0]])}
        if task.is_pair:
            columns["text_b"] = list(table[task.hub_text_columns[1]])
        if not task.splits[split].labelled:
            columns["label"] = [float("nan") if task.is_regression else -1] * len(table)
        elif task.folder is None:  # another dataset's labels may be names: ids as in files
            to_label = label_converter(task, f"{task.hub_dataset} ({split})")
            columns["label"] = [to_label(v, i + 1) for i, v in enumerate(table[task.hub_label_column])]
        else:
            columns["label"] = list(table[task.hub_label_column])
        return columns

    def raw_split(self, split: str) -> dict[str, list]:
        """The split's columns (idx, text_a, text_b, label), read once and kept."""
        if split not in self._raw:
            if split not in self.task.splits:
                raise APMError(f"{self.task.name} has no split {split!r}")
            if self._loader is None:
                self._loader = self._resolve_loader()
            columns = self._loader(split)
            limit = self._limit_for(split)
            if limit is not None:
                columns = {k: v[:limit] for k, v in columns.items()}
            self._raw[split] = columns
        return self._raw[split]

    def _limit_for(self, split: str) -> int | None:
        if split == "train":
            return self.max_train_samples
        if split.startswith("validation"):
            return self.max_eval_samples
        return self.max_predict_samples

    def training_texts(self) -> list[str]:
        """All text of the training split (for models that build a vocabulary from it)."""
        raw = self.raw_split("train")
        return raw["text_a"] + raw.get("text_b", [])

    def check(self, stage: str) -> None:
        """Read every split ``stage`` needs now, so bad data fails before a run starts; a local
        file already read whole (same content) is not read again."""
        for split in self.stage_splits(stage):
            if self._loader is None:
                self._loader = self._resolve_loader()
            marker = self._validated_marker(split)
            if marker is not None and marker.is_file():
                continue
            self.raw_split(split)
            if marker is not None:
                marker.parent.mkdir(parents=True, exist_ok=True)
                marker.touch()
        rank_zero_info(redact_text(f"{self.task.name} data: {self.source_description}"))

    def _split_file(self, split: str) -> Path | None:
        """The file a split is read from, when it is a local file."""
        if getattr(self, "_local_folder", None) is not None:
            filename = self.task.splits[split].filename
            return self._local_folder / filename if filename else None
        if self.data_files and split in self.data_files:
            return Path(self.data_files[split])
        return None

    def _file_identity(self, split: str) -> str:
        """The split file's path and a hash of its bytes (its source otherwise): what decides
        whether a cached result still holds. Hashed once per run; size and modification time
        alone would serve stale rows after an edit that keeps both."""
        path = self._split_file(split)
        if path is None:
            return self.source_description
        if not path.is_file():
            self.raw_split(split)  # the reader's own clear error
        if split not in self._identities:
            self._identities[split] = f"{path.resolve()}|{file_digest(path)}|{self.encoding}"
        return self._identities[split]

    def _validated_marker(self, split: str) -> Path | None:
        """Where the check of a local split file is remembered (other sources: never)."""
        path = self._split_file(split)
        if path is None or not path.is_file():
            return None
        key = json.dumps(
            [self.task.name, self.task.fingerprint, split, self._file_identity(split), self._limit_for(split)]
        )
        return self.cache_dir / "validated" / hashlib.sha256(key.encode()).hexdigest()[:20]

    def stage_splits(self, stage: str) -> list[str]:
        if stage == "fit":
            return ["train", *self.validation_splits]
        if stage == "validate":
            return self.validation_splits
        if stage == "test":
            return self.splits_for(self.test_split)
        if stage == "predict":
            return self.splits_for(self.predict_split)
        raise ValueError(stage)

    # ------------------------------------------------------------------ tokenization
    def _cache_key(self, split: str) -> str:
        parts = [
            self.task.name,
            self.task.fingerprint,  # a task file edited (columns, labels) is another entry
            split,
            self._file_identity(split),
            self.encoder.fingerprint,
            str(self.max_seq_length),
            str(self._limit_for(split)),
        ]
        return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:20]

    def build_split(self, split: str):
        if self._loader is None:
            self._loader = self._resolve_loader()
        path = self.cache_dir / "tokenized" / f"{self.task.name}-{split}-{self._cache_key(split)}"

        def build() -> dict[str, list]:
            raw = self.raw_split(split)  # only on a cache miss: a hit needs no text
            encoded = self.encoder.encode(raw["text_a"], raw.get("text_b"), self.max_seq_length)
            return {**encoded, "idx": raw["idx"], "label": raw["label"]}

        return cached_dataset(path, build)

    # ------------------------------------------------------------------ loaders
    def _lengths(self, dataset) -> list[int]:
        key = "input_ids" if "input_ids" in dataset.column_names else "input_ids_a"
        return [len(x) for x in dataset[key]]

    def collate(self, train: bool) -> PadCollator:
        return PadCollator(self.encoder.pad_values, regression=self.task.is_regression)

    def _loader_for(self, split: str, train: bool) -> DataLoader:
        dataset = self.datasets[split]
        # Evaluation is sharded too: each rank scores its share, torchmetrics syncs the states.
        return self.batch_loader(dataset, self._lengths(dataset), train, group_by_length=self.group_by_length)

    def train_dataloader(self) -> DataLoader:
        return self._loader_for("train", train=True)

    def val_dataloader(self) -> list[DataLoader] | DataLoader:
        loaders = [self._loader_for(s, train=False) for s in self.validation_splits]
        return loaders[0] if len(loaders) == 1 else loaders

    def test_dataloader(self) -> list[DataLoader] | DataLoader:
        loaders = [self._loader_for(s, train=False) for s in self.splits_for(self.test_split)]
        return loaders[0] if len(loaders) == 1 else loaders

    def predict_dataloader(self) -> list[DataLoader] | DataLoader:
        loaders = []
        for split in self.splits_for(self.predict_split):
            dataset = self.datasets[split]
            loaders.append(self.predict_loader(dataset, self._lengths(dataset)))
        return loaders[0] if len(loaders) == 1 else loaders

    def split_names(self, stage: str) -> list[str]:
        """The split behind each dataloader index of ``stage`` (for naming metrics and files);
        empty when the task has no such split (AX has only a test split)."""
        try:
            return self.stage_splits(stage)
        except APMError:
            return []
