from apm_lightning.cli import entry_point

entry_point()
