"""Reports over run directories: tables (Markdown, CSV, W&B) and plots (``apm report``)."""
