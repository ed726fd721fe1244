"""``SQuADModule``: what the extractive and the generative SQuAD modules share.

The SQuAD version a module answers (bound from the data or restored from a checkpoint, and
named in ``results.json`` as ``squad_v1``/``squad_v2``), and the questions of a split, which the
data module holds with their contexts.
"""

from __future__ import annotations

from typing import Any

from apm_lightning.core.errors import APMError
from apm_lightning.data.squad_files import QAExample
from apm_lightning.modules.base import APMModule


class SQuADModule(APMModule):
    # Set by _bind_version (the data) or restore_extras (a checkpoint).
    version: int | None = None

    @property
    def results_label(self) -> str | None:
        return f"squad_v{self.version}" if self.version else None

    def _bind_version(self, version: int) -> None:
        # A v2.0 model also answers v1.1 questions; a v1.1 model never learned to abstain.
        if self.version is None or self.version == version:
            self.version = version
        elif self.version == 1:
            raise APMError("this model was trained on SQuAD v1.1 but the data is v2.0; train a v2.0 model")

    def _questions(self, split: str) -> list[QAExample]:
        datamodule = self.trainer.datamodule
        if datamodule is None or not hasattr(datamodule, "examples"):
            raise APMError("question answering needs a SQuADDataModule (it holds the contexts)")
        return datamodule.examples(split)

    def restore_extras(self, info: dict[str, Any]) -> None:
        task = info.get("task")
        if task not in (None, "squad_v1", "squad_v2"):  # read from a file: checked, never trusted
            raise APMError(
                f"the checkpoint names SQuAD task {str(task)[:40]!r}; expected squad_v1 or squad_v2"
            )
        if task and self.version == 2 and task == "squad_v1":
            raise APMError(
                "the checkpoint was trained on SQuAD v1.1 but the data is v2.0; train a v2.0 model"
            )
        if task:
            self.version = int(task[-1])
