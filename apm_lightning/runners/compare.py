"""``apm compare``: pretraining objectives (MLM, CLM, prefix LM, ELECTRA, span corruption...)
compared at equal training compute or equal tokens, at several budgets.

    apm compare -c experiments/compare_objectives/cpu.yaml --out runs/compare

One study, from a YAML (see ``experiments/compare_objectives/``):
1. train one tokenizer on the corpus (``OUT/tokenizer``);
2. measure each objective's training FLOPs per token on its own model (``OUT/flops.json``,
   ``compare_budget.py``) and turn each budget (``budgets`` with ``budget_kind: flops`` or
   ``tokens``; a single ``budget_tokens`` still works) into that objective's number of steps;
3. pretrain each (objective, budget) with ``apm pretrain`` in ``OUT/pretrain/<objective>/<budget>``;
   each exports a Hugging Face folder;
4. fine-tune every exported model on the GLUE tasks with several seeds (``apm glue`` in
   ``OUT/finetune/<objective>/<budget>``);
5. write ``OUT/results.md`` and ``OUT/results.csv`` (mean, sd, 95% confidence interval and seeds
   per objective, budget and task; whether each pair of objectives is separated at the largest
   budget), the curves ``OUT/score_vs_flops_<task>.png``, the plots ``OUT/val_loss_vs_tokens.png``
   and ``OUT/downstream.png`` (largest budget), and a W&B table when W&B is on
   (``compare_report.py``).

Every step is an ordinary run with its own ``results.json``; running the command again skips
what is done and resumes what was interrupted.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

import yaml

from apm_lightning.core.errors import APMError
from apm_lightning.core.files import write_json_atomic
from apm_lightning.core.recipes import resolve_config
from apm_lightning.runners.compare_budget import Budget, measure_objective, steps_for, study_budgets
from apm_lightning.runners.compare_report import study_row, write_report
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
    for key in ("tokenizer", "corpus", "objectives", "finetune"):
        if key not in study:
            raise APMError(
                f"{path}: the study needs a '{key}' section (see experiments/compare_objectives/cpu.yaml)"
            )
    study_budgets(study, str(path))  # refused now, before anything runs
    if study.get("launcher", "subprocess") not in LAUNCHERS:
        raise APMError(f"{path}: launcher must be one of {', '.join(LAUNCHERS)}, not {study['launcher']!r}")
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
        self.budgets = study_budgets(study)
        # corpus.batch_size is per process: a run on N GPUs (DDP) trains on N batches a step.
        self.processes = int(study.get("processes", 1))
        self.tokens_per_step = self.block_size * self.batch_size * self.processes
        self.evaluations = int(study.get("evaluations", 8))
        self.objectives = [o for o in registered_objectives() if o in study["objectives"]]

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

    def model_args(self, objective: str, tokenizer: Path) -> tuple[list[str], list[str]]:
        """The objective's configs with the study's tokenizer, and the overrides that follow
        every other option (the study's, then the objective's own)."""
        spec = self.study["objectives"][objective] or {}
        configs = []
        for config in spec.get("configs", []):
            # A file (relative to the working directory) or a shipped recipe: experiments/x.yaml
            # names apm_lightning/configs/x.yaml from any folder.
            path = resolve_config(config)
            if not Path(path).is_file():
                raise APMError(f"objective {objective}: config {config} not found ('apm configs list')")
            configs += ["-c", str(Path(path).resolve())]
        overrides = [str(a) for a in [*self.study.get("pretrain_overrides", []), *spec.get("overrides", [])]]
        return [*configs, "--model.tokenizer", str(tokenizer)], overrides

    def measure(self, tokenizer: Path) -> dict[str, dict[str, Any]]:
        """Each objective's training FLOPs per token (``compare_budget.py``), kept in
        ``OUT/flops.json`` and measured again when the objective's options change."""
        from apm_lightning.data.text_sources import TextSource

        path = self.out / "flops.json"
        known = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
        for objective in self.objectives:
            head, overrides = self.model_args(objective, tokenizer)
            args = [*head, *overrides]
            if (
                known.get(objective, {}).get("args") == args
                and known[objective]["block_size"] == self.block_size
            ):
                continue
            started = time.perf_counter()
            documents = TextSource(files=self.files, **self.text_options).documents()
            known[objective] = {**measure_objective(args, documents, self.block_size), "args": args}
            write_json_atomic(path, known)
            print(
                f"apm compare: {objective}: {known[objective]['train_flops_per_token']:.4g} training "
                f"FLOPs per token ({time.perf_counter() - started:.0f} s to measure)",
                flush=True,
            )
        return {o: known[o] for o in self.objectives}

    def folder(self, stage: str, objective: str, budget: Budget) -> Path:
        """OUT/<stage>/<objective>/<budget>; OUT/<stage>/<objective> for a budget_tokens study."""
        base = self.out / stage / objective
        return base / budget.label if budget.label else base

    def steps(self, objective: str, budget: Budget, measured: dict[str, dict[str, Any]]) -> int:
        return steps_for(budget, measured[objective]["train_flops_per_token"], self.tokens_per_step)

    def pretrain(self, objective: str, budget: Budget, steps: int, tokenizer: Path) -> dict[str, Any]:
        # Every (objective, budget) is its own run from scratch. A smaller budget could reuse a
        # larger run's checkpoint only if the two were the same run up to that step, and they
        # are not: the learning rate warms up over a share of the run and decays linearly to
        # zero at its last step, so at step k a 3x longer run has a different learning rate
        # (and different weights) than the shorter run ending at k.
        run_dir = self.folder("pretrain", objective, budget)
        done = run_dir / "results.json"
        if done.is_file():
            return json.loads(done.read_text(encoding="utf-8"))
        head, overrides = self.model_args(objective, tokenizer)
        interval = max(1, steps // max(1, self.evaluations))
        name = f"compare-pretrain-{objective}" + (f"-{budget.label}" if budget.label else "")
        args = [
            "fit",
            *head,
            "--data.files",
            json.dumps(self.files),
            *[a for key, value in self.text_options.items() for a in (f"--data.{key}", str(value))],
            "--data.block_size",
            str(self.block_size),
            "--data.batch_size",
            str(self.batch_size),
            "--trainer.max_steps",
            str(steps),
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
            name,
            "--checkpoint_every_n_steps",
            str(interval),
            *(["--trainer.devices", str(self.processes)] if "processes" in self.study else []),
            *overrides,
        ]
        if (run_dir / "checkpoints" / "last.ckpt").is_file():
            args += ["--ckpt_path", "last"]
        print(f"apm compare: pretraining {objective}: {steps} steps ({run_dir})", flush=True)
        started = time.perf_counter()
        log = self.out / "logs" / f"{name.removeprefix('compare-')}.log"
        try:
            run_apm(args, log, self.launcher)
        except RunFailed as err:
            raise APMError(f"pretraining {objective} failed: {err}") from None
        print(f"apm compare: pretraining {objective}: {time.perf_counter() - started:.0f} s", flush=True)
        return json.loads(done.read_text(encoding="utf-8"))

    def finetune(self, objective: str, budget: Budget, hf_folder: str) -> dict[str, Any]:
        from apm_lightning.runners.glue import glue_main

        spec = self.study["finetune"]
        out = self.folder("finetune", objective, budget)
        done = out / "glue_score.json"
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
            str(out),
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
        print(f"apm compare: fine-tuning {objective} on {', '.join(spec['tasks'])} ({out})", flush=True)
        return glue_main(args)

    # ----------------------------------------------------------------------- the study
    def check_corpus(self) -> None:
        missing = [p for p in self.files if not _glob_matches(p)]
        if missing:
            raise APMError(f"corpus files not found: {', '.join(missing)} (data root: {self.data_root})")

    def run(self) -> dict[str, Any]:
        self.check_corpus()
        self.out.mkdir(parents=True, exist_ok=True)
        tokenizer = self.tokenizer()
        measured = self.measure(tokenizer)
        rows = []
        # Smallest budget first: every objective's first point exists before any long run starts.
        for budget in self.budgets:
            for objective in self.objectives:
                steps = self.steps(objective, budget, measured)
                pretrained = self.pretrain(objective, budget, steps, tokenizer)
                glue = self.finetune(objective, budget, pretrained["hf_export"])
                finetuned = self.folder("finetune", objective, budget)
                rows.append(
                    study_row(self, objective, budget, measured[objective], pretrained, glue, finetuned)
                )
        return write_report(self, rows, measured)

    def plan(self) -> dict[str, Any]:
        """The tokenizer and the FLOPs measurement only, then each run's steps, tokens and
        training FLOPs (printed): what a study will train, before it trains."""
        self.check_corpus()
        self.out.mkdir(parents=True, exist_ok=True)
        measured = self.measure(self.tokenizer())
        runs = []
        for budget in self.budgets:
            for objective in self.objectives:
                steps = self.steps(objective, budget, measured)
                tokens = steps * self.tokens_per_step
                flops = tokens * measured[objective]["train_flops_per_token"]
                runs.append(
                    {"objective": objective, "budget": budget.value, "steps": steps, "tokens": tokens}
                )
                print(
                    f"apm compare: plan: {objective} at {budget.kind} {budget.value:.3g}: {steps} steps, "
                    f"{tokens:,} tokens, {flops:.3g} training FLOPs",
                    flush=True,
                )
        return {"runs": runs, "flops": measured}


def _glob_matches(pattern: str) -> bool:
    import glob

    return bool(glob.glob(os.path.expanduser(pattern), recursive=True))


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
    p.add_argument(
        "--launcher",
        choices=LAUNCHERS,
        default=None,
        help="where each run goes (default: the study's 'launcher', else subprocess)",
    )
    p.add_argument(
        "--plan",
        action="store_true",
        help="train the tokenizer and measure each objective's FLOPs per token, print every run's steps "
        "and tokens, and stop before pretraining",
    )
    args = p.parse_args(argv)
    study = load_study(resolve_config(args.config))
    root = Path(args.data_root) if args.data_root else default_data_root()
    launcher = args.launcher or study.get("launcher", "subprocess")
    runner = CompareRunner(study, Path(args.out), root, args.wandb_mode, launcher)
    return runner.plan() if args.plan else runner.run()
