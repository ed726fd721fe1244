"""The CLI's checks before anything runs: an explicit checkpoint is verified before LightningCLI
reads its hyper-parameters, and every stage's input (data splits, sequence lengths, the
checkpoint ``--ckpt_path last`` resolves to, a resume's settings) before anything is written.
"""

from __future__ import annotations

from pathlib import Path

from lightning.pytorch.utilities import rank_zero_only

import apm_lightning.modules  # noqa: F401  (registers apm's modules: the classes a checkpoint may name)
from apm_lightning.core.errors import APMError
from apm_lightning.core.trust import (
    check_model_args,
    checkpoint_hparams,
    checkpoint_model_name,
    merge_model_args,
    verify_checkpoint,
    warn_replaced,
)
from apm_lightning.training.checkpointing import (
    remove_stale_temporaries,
)
from apm_lightning.training.preflight import check_sequence_length
from apm_lightning.training.resume_check import check_resume
from apm_lightning.training.slurm import newest_resume_checkpoint

SPECIAL_CKPT_PATHS = ("last", "best", "hpc", "registry")


class CheckpointChecks:
    """APMCLI's checks (a mixin: it uses the LightningCLI's config, model and data module)."""

    def _parse_ckpt_path(self) -> None:
        """LightningCLI reads a checkpoint's hyper-parameters into the model config before
        anything else; check the file first, so a corrupt or foreign checkpoint gets one clear
        line instead of an unpickling error or a config parse failure."""
        sub = self.config.get("subcommand")
        ckpt = self.config[sub].get("ckpt_path") if sub else None
        if not ckpt or ckpt in SPECIAL_CKPT_PATHS or Path(ckpt).is_dir():
            return  # 'last' is resolved (and verified) once the run directory is known
        checkpoint = verify_checkpoint(ckpt, allow_unsafe=self.config[sub].get("allow_unsafe_checkpoints"))
        # The class it names must be one of apm's (never imported by its name).
        stored = checkpoint_model_name(checkpoint, ckpt)
        model = self.config[sub].get("model") or {}
        wanted = model.get("class_path")
        if stored and wanted and stored != wanted:
            raise APMError(
                f"the checkpoint holds a {stored.rsplit('.', 1)[-1]} model, not a "
                f"{wanted.rsplit('.', 1)[-1]}; use the config it was trained with"
            )
        # LightningCLI's own version re-reads the file with weights_only=True whatever the user
        # allowed, and takes every value from it; here the checkpoint's settings are data: code
        # permission and model paths stay the user's, and a replaced option is named.
        hparams = checkpoint_hparams(checkpoint)
        if not hparams:
            return
        init_args = model.get("init_args") or {}
        given = init_args.as_dict() if hasattr(init_args, "as_dict") else dict(init_args)
        hparams, replaced = merge_model_args(hparams, given, ckpt)
        warn_replaced(replaced, rank_zero_only.rank == 0)
        model_config = (
            {"class_path": stored or wanted, "dict_kwargs": hparams} if stored or wanted else hparams
        )
        self.config = self.parser.parse_object({sub: {"model": model_config}}, self.config)

    # --- checks before anything runs: bad input fails here, with nothing written -----------
    def _check(self, stage: str) -> None:
        check = getattr(self.datamodule, "check", None)
        if check is not None:
            check(stage)
        check_sequence_length(self.model, self.datamodule)
        model_check = getattr(self.model, "check_data", None)
        if model_check is not None:  # a model that takes one kind of data says so now
            model_check(self.datamodule)
        config = self.config_init[self.subcommand]
        ckpt = config.get("ckpt_path")
        if ckpt == "last":  # the newest last*.ckpt, or a newer save of SLURM's requeue signal
            found = newest_resume_checkpoint(self.last_checkpoint.dirpath, config.trainer.default_root_dir)
            ckpt = str(found) if found else None
            if found is not None and found.name.startswith("hpc_ckpt_"):
                config.ckpt_path = ckpt  # Lightning's 'last' only looks in checkpoints/
        if not ckpt or ckpt in SPECIAL_CKPT_PATHS:
            return
        if Path(ckpt).is_dir():
            # DeepSpeed and sharded FSDP checkpoints are folders their strategies load with full
            # unpickling: only on the user's word.
            if not config.allow_unsafe_checkpoints:
                raise APMError(
                    f"checkpoint {ckpt} is a folder (DeepSpeed or sharded FSDP), which its strategy "
                    "loads with full unpickling; pass --allow_unsafe_checkpoints true if you trust it"
                )
            return
        checkpoint = verify_checkpoint(ckpt, allow_unsafe=config.allow_unsafe_checkpoints)
        # 'last' was not seen when the config was parsed: the same trust checks as an explicit path.
        checkpoint_model_name(checkpoint, ckpt)
        check_model_args(checkpoint_hparams(checkpoint), dict(self.model.hparams), ckpt)
        if stage == "fit":  # a resume: same data and trainer settings as the checkpoint's run
            check_resume(checkpoint, ckpt, self.datamodule, config.trainer)

    def before_fit(self) -> None:
        self._check("fit")
        if rank_zero_only.rank == 0:  # set from the environment before the ranks are set up
            remove_stale_temporaries(self.last_checkpoint.dirpath)
        config = self._config_dict()
        for logger in self.trainer.loggers:
            logger.log_hyperparams({"config": config})

    def before_validate(self) -> None:
        self._check("validate")

    def before_test(self) -> None:
        self._check("test")

    def before_predict(self) -> None:
        self._check("predict")
