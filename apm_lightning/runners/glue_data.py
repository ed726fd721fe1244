"""What ``apm glue`` checks about a task's data before it trains: where the task's files are,
which of them are missing, and the example ids of the local test files (the submission's rows)."""

from __future__ import annotations

from pathlib import Path

from apm_lightning.data import sources
from apm_lightning.data.tasks import get_task
from apm_lightning.runners import submission


def task_folder(task: str, data_dir: str | None) -> Path | None | bool:
    """The task's local folder; None when absent; True when the data comes from elsewhere (no
    data dir and no $APM_DATA_DIR: the hub), which only the run itself can check. A task file
    that names its own files has them in its folder."""
    spec = get_task(task)
    if spec.files_dir is not None:
        return Path(spec.files_dir)
    if spec.folder is None:
        return True  # a hub dataset: only the run can check it
    root = Path(data_dir).expanduser() if data_dir else sources.data_root()
    if root is None:
        return True
    first = next(iter(spec.splits.values())).filename
    for folder in (root / spec.folder, root / "glue" / spec.folder):
        if (folder / first).is_file():
            return folder
    return None


def missing_files(task: str, folder: Path, splits: list[str]) -> list[str]:
    spec = get_task(task)
    return [
        spec.splits[s].filename
        for s in splits
        if spec.splits[s].filename and not (folder / spec.splits[s].filename).is_file()
    ]


def missing_reason(task: str, folder: Path | None | bool, data_dir: str | None) -> str:
    """Why a task cannot train here ('' when its training and dev files are there)."""
    spec = get_task(task)
    if folder is None:
        return f"no data: no {spec.folder}/ folder in {data_dir or '$APM_DATA_DIR'}"
    if isinstance(folder, Path):
        gaps = missing_files(task, folder, ["train", *spec.validation_splits])
        return f"no data: {', '.join(gaps)} not in {folder}" if gaps else ""
    return ""


def local_test_ids(task: str, folder: Path | bool | None) -> dict[str, list[int]]:
    """Server file name -> ids of the local test file, to check predictions against."""
    from apm_lightning.data.task_files import read_glue_tsv

    if not isinstance(folder, Path):
        return {}
    spec = get_task(task)
    ids = {}
    for name, (t, split) in submission.SERVER_FILES.items():
        path = folder / spec.splits[split].filename if t == spec.name else None
        if path is not None and path.is_file():
            ids[name] = read_glue_tsv(spec, path, labelled=False)["idx"]
    return ids
