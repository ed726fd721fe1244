"""The task registry: GLUE's nine tasks and AX, declared in ``apm_lightning/tasks/*.yaml``, plus
any task a user's YAML file declares (``--data.task path/to/my_task.yaml``).

``get_task`` takes a registered name (case-insensitive, with the aliases the files declare:
'SST-2' and 'sst2' both work) or the path of a task file, which it reads and registers, so that
the task's name finds it afterwards in the same process. Label ids of GLUE tasks follow the
Hugging Face hub's ``nyu-mll/glue`` so that local files and the hub give the same ids.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from apm_lightning.core.errors import APMError
from apm_lightning.data.task_spec import TASK_FILE_SUFFIXES, TaskSpec, load_task_file, parse_task

TASKS: dict[str, TaskSpec] = {}
_ALIASES: dict[str, str] = {}
_FILES: dict[str, TaskSpec] = {}  # resolved task file -> its task


def shipped_tasks_dir() -> Path:
    """The folder of the task files that ship with apm (GLUE)."""
    return Path(str(files("apm_lightning").joinpath("tasks")))


def register_task(task: TaskSpec) -> TaskSpec:
    """Add ``task`` to the registry; a name or alias already taken by another task is refused."""
    for key in (task.name, *task.aliases):
        owner = TASKS.get(_ALIASES.get(key, key))
        if owner is not None and owner != task:
            raise APMError(
                f"{task.declared_in}: task name {key!r} is taken by {owner.declared_in}; choose another name"
            )
    TASKS[task.name] = task
    _ALIASES.update({alias: task.name for alias in task.aliases})
    return task


def is_task_file(value: str) -> bool:
    """Whether ``value`` names a task file (``.yaml``/``.yml``) rather than a registered task."""
    return value.strip().lower().endswith(TASK_FILE_SUFFIXES)


def get_task(name: str) -> TaskSpec:
    """A registered task by name or alias, or the task a YAML file declares (then registered)."""
    if is_task_file(name):
        path = Path(name.strip()).expanduser().resolve()
        if path not in _FILES:
            _FILES[path] = register_task(load_task_file(path))
        return _FILES[path]
    key = name.strip().lower()
    key = _ALIASES.get(key, key)
    if key not in TASKS:
        raise APMError(
            f"unknown GLUE task {name!r} and no task file of that name: choose one of "
            f"{', '.join(TASKS)}, or give a task YAML file (docs/extending.md)"
        )
    return TASKS[key]


def is_registered(name: str) -> bool:
    key = name.strip().lower()
    return _ALIASES.get(key, key) in TASKS


def task_file(name: str) -> Path | None:
    """The file that declared the registered task ``name``, if a user's file did (else None)."""
    task = TASKS.get(_ALIASES.get(name, name))
    return next((path for path, t in _FILES.items() if t is task), None)


def _load_shipped() -> None:
    import yaml

    for path in sorted(shipped_tasks_dir().glob("*.yaml")):
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        register_task(parse_task(data, f"{path.parent.name}/{path.name}", path.parent))


_load_shipped()
