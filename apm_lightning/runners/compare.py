"""``apm compare``: autoencoding against autoregressive (and ELECTRA) pretraining, same budget.

    apm compare -c experiments/compare_objectives/cpu.yaml --out runs/compare

One study, from a YAML (see ``experiments/compare_objectives/``):
1. train one tokenizer on the corpus (``OUT/tokenizer``);
2. pretrain each objective's model (same size, same corpus, same number of tokens) with
   ``apm pretrain`` in ``OUT/pretrain/<objective>``; each exports a Hugging Face folder;
3. fine-tune every exported model on the GLUE tasks with several seeds (``apm glue`` in
   ``OUT/finetune/<objective>``);
4. write ``OUT/results.md``, ``OUT/results.csv``, the plots ``OUT/val_loss_vs_tokens.png`` and
   ``OUT/downstream.png``, and a W&B table when W&B is on.

Every step is an ordinary run with its own ``results.json``; running the command again skips
what is done and resumes what was interrupted.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any

import yaml

from apm_lightning.core.errors import APMError
from apm_lightning.core.recipes import resolve_config
from apm_lightning.reports.tables import markdown_table, write_csv
from apm_lightning.runners.launch import LAUNCHERS, RunFailed, run_apm

TEXT_OPTIONS = ("dataset", "dataset_split", "text_field", "document_split", "max_documents")


def registered_objectives() -> list[str]:
    """The pretraining objectives a study may name (``modules/objectives/``), in listing order."""
    from apm_lightning.modules.objectives import objective_names

    return objective_names()


def default_data_root() -> Path:
    env = os.environ.get("APM_DATA_DIR")
    # Relative to where the command runs (a checkout's root, beside ../shared), never to where
    # the package is installed.
    return Path(env) if env else Path("..", "shared", "data").resolve()


def _resolve(patterns: list[str], root: Path) -> list[str]:
    """Corpus paths are relative to the data root unless absolute."""
    return [p if os.path.isabs(os.path.expanduser(p)) else str(root / p) for p in patterns]


def load_study(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise APMError(f"study config not found: {path}")
    study = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    for key in ("tokenizer", "corpus", "objectives", "budget_tokens", "finetune"):
        if key not in study:
            raise APMError(
                f"{path}: the study needs a '{key}' section (see experiments/compare_objectives/cpu.yaml)"
            )
    names = registered_objectives()
    unknown = set(study["objectives"]) - set(names)
    if unknown:
        raise APMError(f"{path}: unknown objective(s) {', '.join(sorted(unknown))}; use {', '.join(names)}")
    return study


class CompareRunner:
    def __init__(
        self, study: dict[str, Any], out: Path, data_root: Path, wandb_mode: str, launcher: str = "subprocess"
    ) -> None:
        self.study = study
        self.launcher = launcher
        self.out = out
        self.data_root = data_root
        self.wandb_mode = wandb_mode
        corpus = study["corpus"]
        self.block_size = int(corpus.get("block_size", 128))
        self.batch_size = int(corpus.get("batch_size", 32))
        self.files = _resolve(list(corpus.get("files") or []), data_root)
        # The rest of the corpus section: where else text comes from (a hub or local datasets
        # dataset), read by both the tokenizer trainer and the corpus data module.
        self.text_options = {k: corpus[k] for k in TEXT_OPTIONS if corpus.get(k) is not None}
        if not self.files and "dataset" not in self.text_options:
            raise APMError("the study's corpus needs files (globs) or a dataset")
        self.steps = max(1, int(study["budget_tokens"]) // (self.block_size * self.batch_size))
        self.evaluations = int(study.get("evaluations", 8))

    # ----------------------------------------------------------------------- steps
    def tokenizer(self) -> Path:
        from apm_lightning.data.text_sources import TextSource
        from apm_lightning.data.tokenizer_training import train_tokenizer

        folder = self.out / "tokenizer"
        if (folder / "tokenizer.json").is_file():
            return folder
        spec = dict(self.study["tokenizer"])
        files = _resolve(list(spec.pop("files", self.files)), self.data_root)
        started = time.perf_counter()
        train_tokenizer(
            TextSource(files=files, **self.text_options).documents(),
            kind=spec.pop("kind", "wordpiece"),
            vocab_size=int(spec.pop("vocab_size", 8000)),
            out_dir=folder,
            overwrite=True,
            **spec,
        )
        print(f"apm compare: tokenizer: {time.perf_counter() - started:.0f} s ({folder})", flush=True)
        return folder

    def pretrain(self, objective: str, tokenizer: Path) -> dict[str, Any]:
        run_dir = self.out / "pretrain" / objective
        done = run_dir / "results.json"
        if done.is_file():
            return json.loads(done.read_text(encoding="utf-8"))
        spec = self.study["objectives"][objective] or {}
        args = ["fit"]
        for config in spec.get("configs", []):
            # A file (relative to the working directory) or a shipped recipe: experiments/x.yaml
            # names apm_lightning/configs/x.yaml from any folder.
            path = resolve_config(config)
            if not Path(path).is_file():
                raise APMError(f"objective {objective}: config {config} not found ('apm configs list')")
            args += ["-c", str(Path(path).resolve())]
        interval = max(1, self.steps // max(1, self.evaluations))
        args += [
            "--model.tokenizer",
            str(tokenizer),
            "--data.files",
            json.dumps(self.files),
            *[a for key, value in self.text_options.items() for a in (f"--data.{key}", str(value))],
            "--data.block_size",
            str(self.block_size),
            "--data.batch_size",
            str(self.batch_size),
            "--trainer.max_steps",
            str(self.steps),
            "--trainer.max_epochs",
            "-1",
            "--trainer.val_check_interval",
            str(interval),
            "--trainer.check_val_every_n_epoch",
            "null",
            "--trainer.default_root_dir",
            str(run_dir),
            "--wandb_mode",
            self.wandb_mode,
            "--run_name",
            f"compare-pretrain-{objective}",
            "--checkpoint_every_n_steps",
            str(interval),
            *[str(a) for a in self.study.get("pretrain_overrides", [])],
            *[str(a) for a in spec.get("overrides", [])],
        ]
        if (run_dir / "checkpoints" / "last.ckpt").is_file():
            args += ["--ckpt_path", "last"]
        print(f"apm compare: pretraining {objective}: {self.steps} steps ({run_dir})", flush=True)
        started = time.perf_counter()
        try:
            run_apm(args, self.out / "logs" / f"pretrain-{objective}.log", self.launcher)
        except RunFailed as err:
            raise APMError(f"pretraining {objective} failed: {err}") from None
        print(f"apm compare: pretraining {objective}: {time.perf_counter() - started:.0f} s", flush=True)
        return json.loads(done.read_text(encoding="utf-8"))

    def finetune(self, objective: str, hf_folder: str) -> dict[str, Any]:
        from apm_lightning.runners.glue import glue_main

        spec = self.study["finetune"]
        done = self.out / "finetune" / objective / "glue_score.json"
        if done.is_file():  # written last by apm glue: every run of this objective is done
            return json.loads(done.read_text(encoding="utf-8"))
        data_dir = spec.get("data_dir") or str(self.data_root / "glue")
        args = [
            "--model",
            hf_folder,
            "--tasks",
            ",".join(spec["tasks"]),
            "--seeds",
            str(spec.get("seeds", 3)),
            "--data-dir",
            data_dir,
            "--out",
            str(self.out / "finetune" / objective),
            "--no-submission",
            "--launcher",
            self.launcher,
            "--wandb_mode",
            self.wandb_mode,
        ]
        if spec.get("max_train_samples"):
            args += ["--max-train-samples", str(spec["max_train_samples"])]
        if spec.get("epochs"):
            args += ["--epochs", str(spec["epochs"])]
        args += [str(a) for a in spec.get("overrides", [])]
        print(f"apm compare: fine-tuning {objective} on {', '.join(spec['tasks'])}", flush=True)
        return glue_main(args)

    # ----------------------------------------------------------------------- the study
    def run(self) -> dict[str, Any]:
        self.out.mkdir(parents=True, exist_ok=True)
        missing = [p for p in self.files if not _glob_matches(p)]
        if missing:
            raise APMError(f"corpus files not found: {', '.join(missing)} (data root: {self.data_root})")
        tokenizer = self.tokenizer()
        rows = []
        for objective in [o for o in registered_objectives() if o in self.study["objectives"]]:
            pretrained = self.pretrain(objective, tokenizer)
            glue = self.finetune(objective, pretrained["hf_export"])
            rows.append(self.row(objective, pretrained, glue))
        return self.write(rows)

    def row(self, objective: str, pretrained: dict[str, Any], glue: dict[str, Any]) -> dict[str, Any]:
        row: dict[str, Any] = {
            "objective": objective,
            "parameters": _parameter_count(Path(pretrained["hf_export"])),
            "tokens_seen": pretrained["tokens_seen"],
            "pretrain_s": round(pretrained["train_wall_seconds"], 1),
            "tokens_per_s": round(pretrained["tokens_per_second"], 1),
            "val_loss": pretrained["val_loss"],
        }
        for key in ("masked_accuracy", "perplexity", "replaced_accuracy"):
            if key in pretrained["metrics"]:
                row[key] = pretrained["metrics"][key]
        means = []
        for task in self.study["finetune"]["tasks"]:
            info = glue["tasks"].get(task, {})
            seeds = _seed_scores(self.out / "finetune" / objective / "runs" / task)
            row[f"{task}_mean"] = round(100 * statistics.mean(seeds), 2) if seeds else None
            row[f"{task}_std"] = round(100 * statistics.stdev(seeds), 2) if len(seeds) > 1 else None
            row[f"{task}_seeds"] = " ".join(f"{100 * s:.1f}" for s in seeds) or info.get("note", "")
            if seeds:
                means.append(row[f"{task}_mean"])
        row["average"] = round(statistics.mean(means), 2) if means else None
        row["run_dir"] = str(self.out / "pretrain" / objective)
        return row

    def write(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        from apm_lightning.reports.plots import downstream_by_objective, validation_loss_vs_tokens

        tasks = self.study["finetune"]["tasks"]
        columns = ["objective", "parameters", "tokens_seen", "pretrain_s", "tokens_per_s", "val_loss"]
        columns += [
            c for c in ("masked_accuracy", "perplexity", "replaced_accuracy") if any(c in r for r in rows)
        ]
        for task in tasks:
            columns += [f"{task}_mean", f"{task}_std", f"{task}_seeds"]
        columns.append("average")
        write_csv(self.out / "results.csv", rows, [*columns, "run_dir"])
        curves = validation_loss_vs_tokens(
            [(r["objective"], Path(r["run_dir"]) / "csv" / "metrics.csv") for r in rows],
            self.out / "val_loss_vs_tokens.png",
        )
        bars = downstream_by_objective(
            {
                r["objective"]: _seed_scores_by_task(self.out / "finetune" / r["objective"], tasks)
                for r in rows
            },
            self.out / "downstream.png",
        )
        seeds = self.study["finetune"].get("seeds", 3)
        text = [
            f"# Pretraining objectives compared: {self.study.get('name', 'study')}",
            "",
            f"Same corpus ({', '.join(self.study['corpus'].get('files') or [self.text_options.get('dataset', '')])}), tokenizer ({self.study['tokenizer'].get('kind', 'wordpiece')}, "
            f"{self.study['tokenizer'].get('vocab_size', 8000)} tokens) and budget: {self.steps} steps of "
            f"{self.batch_size} x {self.block_size} tokens each. Fine-tuning: {', '.join(tasks)}, "
            f"{seeds} seeds; dev scores x100 (mean, sd over seeds, each seed). `val_loss` is each "
            "objective's own validation loss (not comparable across objectives; ELECTRA's adds "
            "50 x the discriminator's).",
            "",
            markdown_table(rows, columns),
            *(f"![{p.stem}]({p.name})" for p in (curves, bars) if p is not None),
        ]
        (self.out / "results.md").write_text("\n".join(text) + "\n", encoding="utf-8")
        self.log_wandb(rows, columns, [p for p in (curves, bars) if p is not None])
        print("\n".join(text), flush=True)
        for name in ("results.md", "results.csv", "val_loss_vs_tokens.png", "downstream.png"):
            if (self.out / name).is_file():
                print((self.out / name).resolve(), flush=True)
        return {"rows": rows, "columns": columns}

    def log_wandb(self, rows: list[dict[str, Any]], columns: list[str], plots: list[Path]) -> None:
        from apm_lightning.training.loggers import resolve_wandb_mode

        mode = resolve_wandb_mode(self.wandb_mode)
        if mode == "disabled":
            return
        import wandb

        run = wandb.init(
            project=os.environ.get("WANDB_PROJECT", "apm-lightning"),
            name=f"compare-{self.study.get('name', 'study')}",
            job_type="compare",
            dir=str(self.out),
            mode=mode,
            reinit="finish_previous",
        )
        table = wandb.Table(columns=columns, data=[[r.get(c) for c in columns] for r in rows])
        run.log({"results": table, **{f"plots/{p.stem}": wandb.Image(str(p)) for p in plots}})
        run.finish()


def _glob_matches(pattern: str) -> bool:
    import glob

    return bool(glob.glob(os.path.expanduser(pattern), recursive=True))


def _seed_scores(task_dir: Path) -> list[float]:
    scores = []
    for results in sorted(task_dir.glob("seed*/results.json")):
        main = json.loads(results.read_text(encoding="utf-8"))["metrics"].get("main")
        if main is not None:
            scores.append(main)
    return scores


def _seed_scores_by_task(finetune_dir: Path, tasks: list[str]) -> dict[str, list[float]]:
    return {task: _seed_scores(finetune_dir / "runs" / task) for task in tasks}


def _parameter_count(folder: Path) -> int:
    from safetensors import safe_open

    total = 0
    with safe_open(str(folder / "model.safetensors"), framework="pt") as f:
        for key in f.keys():
            shape = f.get_slice(key).get_shape()
            count = 1
            for size in shape:
                count *= size
            total += count
    return total


def compare_main(argv: list[str]) -> dict[str, Any]:
    p = argparse.ArgumentParser(
        prog="apm compare", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "-c",
        "--config",
        required=True,
        help="a study YAML (experiments/compare_objectives/); objectives: "
        + ", ".join(registered_objectives()),
    )
    p.add_argument("--out", required=True, help="output folder (running again continues it)")
    p.add_argument(
        "--data-root",
        default=None,
        help="folder with corpus/ and glue/ (default: $APM_DATA_DIR or ../shared/data)",
    )
    p.add_argument("--wandb_mode", default="auto", choices=("auto", "online", "offline", "disabled"))
    p.add_argument("--launcher", choices=LAUNCHERS, default="subprocess", help="where each run goes")
    args = p.parse_args(argv)
    study = load_study(resolve_config(args.config))
    root = Path(args.data_root) if args.data_root else default_data_root()
    return CompareRunner(study, Path(args.out), root, args.wandb_mode, args.launcher).run()
