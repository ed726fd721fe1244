"""Options every in-test run takes: no W&B, no progress bar, no model summary (quiet logs)."""

QUIET = [
    "--wandb_mode=disabled",
    "--trainer.enable_progress_bar=false",
    "--trainer.enable_model_summary=false",
]
