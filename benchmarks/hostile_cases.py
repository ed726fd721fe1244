"""Hostile cases (issue 10): real `apm` processes fed bad data, bad configs, hostile checkpoints,
used or impossible output folders, signals and secrets. Each row says whether apm answered as it
should: the expected exit code (2 for a refusal, 130 for SIGINT, 143 for SIGTERM), no Python
traceback, exactly one `apm: error:` line for a refusal (none otherwise), no earlier file changed
(sha256 + mtime of every file in the folders the case touches, before and after; a resume may
append), and the case's own check (no marker file from hostile code, no secret in any output...).

    python benchmarks/hostile_cases.py                      # all cases, a table, totals
    python benchmarks/hostile_cases.py --list               # the cases
    python benchmarks/hostile_cases.py --only pickle_payload --keep

Needs ../shared/data/glue. One tiny_bert RTE checkpoint is trained first and reused. Everything
happens in a temporary folder, removed at the end unless --keep. Exit code 0 when every row passes.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
GLUE = REPO.parent / "shared" / "data" / "glue"
TINY = str(REPO / "experiments" / "models" / "tiny_bert.yaml")
QUIET = "--wandb_mode=disabled --trainer.enable_progress_bar=false --trainer.enable_model_summary=false"
TINY_RUN = f"--data.max_train_samples 24 --data.max_eval_samples 24 --data.max_seq_length 32 {QUIET}"
TINY_RUN = f"{TINY_RUN} --data.max_predict_samples 8 --trainer.max_epochs 1".split()
SECRET, TOKEN = "hunter2", "abc123secret"
# The architecture of tiny_bert.yaml: what a remote-code folder must look like.
TINY_BERT = dict(model_type="bert", vocab_size=30522, hidden_size=32, num_hidden_layers=2)
TINY_BERT.update(num_attention_heads=2, intermediate_size=64, max_position_embeddings=512)

W: Path = Path()  # the work folder (set in main)


@dataclass
class Spec:
    """What a case runs and what it expects."""

    args: list[str]  # apm's arguments
    expect: int = 2
    watch: list[Path] = field(default_factory=list)  # folders (or files) whose files must not change
    absent: list[Path] = field(default_factory=list)  # paths a refusal must not create
    resume: bool = False  # a legitimate resume: watched files may change
    signal: int | None = None  # sent once `wait_for` exists
    wait_for: Path | None = None
    checks: list[Callable[[str], str | None]] = field(default_factory=list)  # output -> a failure or None


CASES: dict[str, tuple[str, Callable[[Path], Spec]]] = {}


def case(category: str):
    def register(fn):
        CASES[fn.__name__] = (category, fn)
        return fn

    return register


# ----------------------------------------------------------------------------- helpers
def env() -> dict[str, str]:
    e = {k: v for k, v in os.environ.items() if k not in ("APM_DATA_DIR", "APM_DEBUG")}
    e.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", WANDB_MODE="disabled")
    e.update(TOKENIZERS_PARALLELISM="false")
    e.update(APM_CACHE_DIR=str(W / "cache"), HF_MODULES_CACHE=str(W / "hf-modules"))
    e["PYTHONPATH"] = os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])
    return e


def apm_cmd(args: list[str]) -> list[str]:
    return [sys.executable, "-m", "apm_lightning", *args]


def fit_args(task: str, data: Path, run: Path, *extra: str, command: str = "fit", model=(TINY,)) -> list:
    """``apm fit`` (or ``command``) of tiny_bert on ``task``; ``extra`` last, so it wins."""
    configs = ["-c", str(REPO / f"experiments/glue/{task}.yaml")] + [x for m in model for x in ("-c", m)]
    fixed = ["--data.data_dir", str(data), *TINY_RUN, "--trainer.default_root_dir", str(run)]
    return [command, *configs, *fixed, *extra]


def sst2_root(d: Path, train: bytes | None = None) -> Path:
    """A GLUE root with SST-2: the real dev file and 40 real training rows (or ``train``)."""
    folder = d / "glue" / "SST-2"
    folder.mkdir(parents=True)
    shutil.copy(GLUE / "SST-2" / "dev.tsv", folder / "dev.tsv")
    if train is None:
        train = ("\n".join(sst2_lines()) + "\n").encode()
    (folder / "train.tsv").write_bytes(train)
    return d / "glue"


def sst2_lines() -> list[str]:
    return (GLUE / "SST-2" / "train.tsv").read_text("utf-8").splitlines()[:41]


def refused_sst2(d: Path, train: bytes | None = None) -> Spec:
    root = sst2_root(d, train)
    return Spec(fit_args("sst2", root, d / "run"), watch=[root], absent=[d / "run"])


def refused_rte(d: Path, *extra: str) -> Spec:
    return Spec(fit_args("rte", GLUE, d / "run", *extra), absent=[d / "run"])


def trained_copy(d: Path) -> Path:
    run = d / "run"
    shutil.copytree(W / "trained", run)
    return run


def best_ckpt(run: Path) -> Path:
    return run / "checkpoints" / Path(json.loads((run / "results.json").read_text())["best_checkpoint"]).name


def hostile_copy(out: Path, hparams: dict | None = None, apm_info: dict | None = None, extra=None) -> Path:
    """The trained last.ckpt with some of its strings replaced (or an extra pickled object)."""
    import torch

    checkpoint = torch.load(W / "trained/checkpoints/last.ckpt", map_location="cpu", weights_only=True)
    checkpoint["hyper_parameters"].update(hparams or {})
    checkpoint["apm"].update(apm_info or {})
    if extra is not None:
        checkpoint["extra"] = extra
    torch.save(checkpoint, out)
    return out


def remote_code_folder(d: Path, marker: Path) -> Path:
    """A Hugging Face folder whose config.json ``auto_map`` points at code that writes ``marker``."""
    folder = d / "evil-model"
    folder.mkdir(parents=True)
    config = dict(TINY_BERT, auto_map={k: "modeling_evil.EvilModel" for k in ("AutoModel", "AutoConfig")})
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "modeling_evil.py").write_text(
        f"from pathlib import Path\nPath({str(marker)!r}).write_text('code from a checkpoint ran')\n"
        "from transformers import BertModel\nclass EvilModel(BertModel):\n    pass\n"
    )
    return folder


def remote_code_ckpt(d: Path) -> Path:
    evil = str(remote_code_folder(d, d / "marker"))
    hparams = {"backbone": evil, "backbone_config": None, "trust_remote_code": True}
    return hostile_copy(d / "remote.ckpt", hparams, {"identity": {"backbone": evil, "backbone_config": None}})


class Payload:
    """Unpickled without weights_only, this runs ``exec`` and writes the marker."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('pickle ran')",))


def no_marker(d: Path) -> Callable[[str], str | None]:
    def check(_: str) -> str | None:
        if (d / "marker").exists():
            return "hostile code ran (marker written)"
        if any((W / "hf-modules").rglob("*evil*")):
            return "remote code copied into HF_MODULES_CACHE"
        return None

    return check


def contains(text: str) -> Callable[[str], str | None]:
    return lambda out: None if text in out else f"output lacks {text!r}"


# ----------------------------------------------------------------------------- data
def sst2_body(edit: Callable[[list[str]], None]) -> bytes:
    lines = sst2_lines()
    edit(lines)
    return ("\n".join(lines) + "\n").encode()


SST2_TRAIN = {  # case: the bytes of SST-2/train.tsv (or what makes them)
    "non_utf8_tsv": "sentence\tlabel\nfine\t1\nle caf\xe9\t1\n".encode("latin-1"),
    "utf16_tsv_without_bom": "sentence\tlabel\nun café\t1\nbad\t0\n".encode("utf-16-le"),
    "header_line_1mb": ("x" * 1_000_000 + "\tlabel\nfine\t1\n").encode(),
    "wrong_column_count": lambda: sst2_body(lambda lines: lines.__setitem__(7, lines[7] + "\textra")),
    "missing_label_column": lambda: sst2_body(lambda lines: lines.__setitem__(0, "sentence\tstars")),
    "empty_train_file": b"",
}
for _name, _body in SST2_TRAIN.items():
    CASES[_name] = ("data", lambda d, body=_body: refused_sst2(d, body() if callable(body) else body))


@case("data")
def train_tsv_is_a_folder(d: Path) -> Spec:
    spec = refused_sst2(d)
    (spec.watch[0] / "SST-2/train.tsv").unlink()
    (spec.watch[0] / "SST-2/train.tsv").mkdir()
    return spec


@case("data")
def train_tsv_symlink_loop(d: Path) -> Spec:
    spec = refused_sst2(d)
    folder = spec.watch[0] / "SST-2"
    (folder / "train.tsv").unlink()
    (folder / "train.tsv").symlink_to(folder / "loop.tsv")
    (folder / "loop.tsv").symlink_to(folder / "train.tsv")
    return spec


@case("data")
def stsb_score_not_a_number(d: Path) -> Spec:
    header = "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore"
    good = "0\tmain-captions\tMSRvid\t2012test\t0001\tnone\tnone\ta plane takes off .\ta plane flies .\t5.000"
    bad = good.replace("5.000", "five").replace("0\t", "1\t", 1)
    (d / "glue/STS-B").mkdir(parents=True)
    (d / "glue/STS-B/train.tsv").write_text("\n".join([header, good, bad]) + "\n")
    (d / "glue/STS-B/dev.tsv").write_text("\n".join([header, good]) + "\n")
    return Spec(fit_args("stsb", d / "glue", d / "run"), watch=[d / "glue"], absent=[d / "run"])


RTE_OPTIONS = {  # case: (category, options refused on RTE)
    "unknown_task": ("data", "--data.task sst3"),
    "batch_size_0": ("data", "--data.batch_size 0"),
    "max_train_samples_negative": ("data", "--data.max_train_samples -5"),
    "max_seq_length_100000": ("data", "--data.max_seq_length 100000"),
    "unknown_option": ("config", "--data.bogus 3"),
    "wrong_option_type": ("config", "--data.batch_size abc"),
    "accelerator_gpu_without_gpu": ("config", "--trainer.accelerator gpu"),
}
for _name, (_category, _options) in RTE_OPTIONS.items():
    CASES[_name] = (_category, lambda d, options=_options: refused_rte(d, *options.split()))


# ----------------------------------------------------------------------------- config
@case("config")
def binary_config_file(d: Path) -> Spec:
    (d / "bad.yaml").write_bytes(bytes(range(256)) * 4)
    return refused_rte(d, "-c", str(d / "bad.yaml"))


@case("config")
def non_yaml_config_file(d: Path) -> Spec:
    (d / "bad.yaml").write_bytes(b"trainer: [1,\n  data")
    return refused_rte(d, "-c", str(d / "bad.yaml"))


@case("config")
def backbone_and_backbone_config(d: Path) -> Spec:
    return refused_rte(d, "--model.backbone", str(d / "some-model"))  # tiny_bert has a backbone_config


@case("config")
def sweep_binary_config(d: Path) -> Spec:
    (d / "sweep.yaml").write_bytes(bytes(range(256)))
    return Spec(["sweep", "-c", str(d / "sweep.yaml"), "--out", str(d / "out")], absent=[d / "out"])


@case("config")
def sweep_every_trial_fails(d: Path) -> Spec:
    # No --data.data_dir, offline: every trial fails on the data (the study's record is kept).
    args = ["sweep", "-c", str(REPO / "experiments/sweeps/tiny_rte.yaml"), "--out", str(d / "out")]
    args += "--launcher inprocess --n-trials 1 --wandb_mode disabled".split()
    return Spec(args, checks=[contains("all 1 trial(s) this worker ran failed")])


# ----------------------------------------------------------------------------- checkpoint
def refused_ckpt(d: Path, ckpt: Path, *checks, command: str = "validate") -> Spec:
    args = fit_args("rte", GLUE, d / "out", "--ckpt_path", str(ckpt), command=command)
    return Spec(args, watch=[W / "trained", d], absent=[d / "out"], checks=[no_marker(d), *checks])


@case("checkpoint")
def truncated_ckpt(d: Path) -> Spec:
    (d / "broken.ckpt").write_bytes((W / "trained/checkpoints/last.ckpt").read_bytes()[:5000])
    return refused_ckpt(d, d / "broken.ckpt", contains("broken.ckpt could not be read"))


@case("checkpoint")
def pickle_payload(d: Path) -> Spec:
    ckpt = hostile_copy(d / "pickle.ckpt", extra=Payload(d / "marker"))
    return refused_ckpt(d, ckpt, contains("Unsupported global: GLOBAL exec"))


@case("checkpoint")
def foreign_class_os_foo(d: Path) -> Spec:
    ckpt = hostile_copy(d / "os.ckpt", {"_class_path": "os.Foo"}, {"module": "os.Foo"})
    return refused_ckpt(d, ckpt, contains("'os.Foo', which is not one of apm's"))


@case("checkpoint")
def trust_remote_code_ckpt(d: Path) -> Spec:
    return refused_ckpt(d, remote_code_ckpt(d), contains("trust_remote_code true"), command="fit")


@case("checkpoint")
def export_trust_remote_code_ckpt(d: Path) -> Spec:
    args = ["export", str(remote_code_ckpt(d)), str(d / "hf")]
    return Spec(args, watch=[d], absent=[d / "hf"], checks=[no_marker(d)])


@case("checkpoint")
def model_backbone_is_hostile_ckpt(d: Path) -> Spec:
    args = fit_args("rte", GLUE, d / "out", "--model.backbone", str(remote_code_ckpt(d)), model=())
    return Spec(args, watch=[W / "trained", d], absent=[d / "out"], checks=[no_marker(d)])


@case("checkpoint")
def resume_with_other_data_settings(d: Path) -> Spec:
    run = trained_copy(d)
    args = fit_args("rte", GLUE, run, "--ckpt_path", "last", "--data.max_seq_length", "24")
    return Spec(args, watch=[run], checks=[contains("data.max_seq_length was 32, now 24")])


# ----------------------------------------------------------------------------- directory
@case("directory")
def fresh_fit_into_used_run_dir(d: Path) -> Spec:
    run = trained_copy(d)
    return Spec(fit_args("rte", GLUE, run), watch=[run], checks=[contains("already holds a run")])


@case("directory")
def run_dir_is_a_file(d: Path) -> Spec:
    (d / "blocker").write_text("x")
    return Spec(fit_args("rte", GLUE, d / "blocker"), watch=[d])


@case("directory")
def export_overwrite_onto_run_dir(d: Path) -> Spec:
    run = trained_copy(d)
    args = ["export", str(run / "checkpoints/last.ckpt"), str(run), "--overwrite"]
    return Spec(args, watch=[run], checks=[contains("holds the checkpoint being exported")])


@case("directory")
def export_to_a_file(d: Path) -> Spec:
    (d / "out.txt").write_text("x")
    return Spec(["export", str(W / "trained/checkpoints/last.ckpt"), str(d / "out.txt")], watch=[d])


def evaluate_into_run_dir(d: Path, command: str) -> Spec:
    """The training run's records stay byte-identical; the command adds only its own files."""
    run = trained_copy(d)
    args = fit_args("rte", GLUE, run, "--ckpt_path", str(best_ckpt(run)), command=command)
    return Spec(args, expect=0, watch=[run])


CASES["predict_into_training_run_dir"] = ("directory", lambda d: evaluate_into_run_dir(d, "predict"))
CASES["validate_into_training_run_dir"] = ("directory", lambda d: evaluate_into_run_dir(d, "validate"))


@case("directory")
def glue_out_is_a_file(d: Path) -> Spec:
    (d / "out.txt").write_text("x")
    args = ["glue", "--model", TINY, "--tasks", "rte", "--data-dir", str(GLUE), "--out", str(d / "out.txt")]
    return Spec(args, watch=[d])


@case("directory")
def report_run_without_metrics_csv(d: Path) -> Spec:
    """Not an error: the report is written, with one warning for the run without a CSV log."""
    shutil.copytree(W / "trained", d / "runs/a")
    shutil.copytree(W / "trained", d / "runs/b")
    shutil.rmtree(d / "runs/b/csv")
    args = ["report", str(d / "runs"), "--out", str(d / "report"), "--wandb_mode", "disabled"]
    return Spec(args, expect=0, watch=[d / "runs"], checks=[contains("b has no csv/metrics.csv")])


# ----------------------------------------------------------------------------- signal
LONG_FIT = "--trainer.max_epochs -1 --trainer.max_steps 500 --checkpoint_every_n_steps 1"
LONG_FIT = f"{LONG_FIT} --data.batch_size 8 --trainer.log_every_n_steps 1".split()


def stopped(d: Path, sig: int, code: int, message: str) -> Spec:
    """A long fit stopped by ``sig`` once its first last.ckpt exists: it saves last.ckpt again."""
    last = d / "run/checkpoints/last.ckpt"
    missing = lambda _: None if last.is_file() else "no last.ckpt"  # noqa: E731
    checks = [missing, contains(f"apm: stopped by {message}; last.ckpt was saved")]
    return Spec(fit_args("rte", GLUE, d / "run", *LONG_FIT), code, signal=sig, wait_for=last, checks=checks)


CASES["sigint_during_fit"] = ("signal", lambda d: stopped(d, signal.SIGINT, 130, "Ctrl-C"))
CASES["sigterm_during_fit"] = ("signal", lambda d: stopped(d, signal.SIGTERM, 143, "SIGTERM"))


@case("signal")
def kill9_then_resume(d: Path) -> Spec:
    """SIGKILL mid-run (no handler runs), then the same command with --ckpt_path last."""
    run, steps = d / "run", 30
    fit = fit_args("rte", GLUE, run, *LONG_FIT, "--trainer.max_steps", str(steps))
    rc, _, err, _ = launch(fit, signal.SIGKILL, run / "checkpoints/last.ckpt")
    if rc != -signal.SIGKILL:
        raise RuntimeError(f"the run to kill ended with {rc} before the kill: {err[-2000:]}")

    def each_step_once(_: str) -> str | None:
        with open(run / "csv/metrics.csv", newline="") as f:
            logged = [int(r["step"]) for r in csv.DictReader(f) if r["train/loss"]]
        return None if logged == list(range(steps)) else f"metrics.csv steps {logged}, not 0..{steps - 1}"

    return Spec([*fit, "--ckpt_path", "last"], expect=0, watch=[run], resume=True, checks=[each_step_once])


# ----------------------------------------------------------------------------- secret
@case("secret")
def secret_in_data_dir(d: Path) -> Spec:
    """A password in the data path: in no output and no file of the run (checkpoint bytes too)."""
    data, run = d / f"password={SECRET}", d / "run"
    (data / "RTE").mkdir(parents=True)
    for name in ("train.tsv", "dev.tsv", "test.tsv"):
        lines = (GLUE / "RTE" / name).read_text("utf-8").splitlines()[:17]
        (data / "RTE" / name).write_text("\n".join(lines) + "\n", encoding="utf-8")

    def nowhere(out: str) -> str | None:
        leaks = [p.name for p in run.rglob("*") if p.is_file() and SECRET.encode() in p.read_bytes()]
        return "secret printed" if SECRET in out else f"secret in {leaks}" if leaks else None

    return Spec(fit_args("rte", data, run), expect=0, watch=[data], checks=[nowhere])


@case("secret")
def secret_in_bad_data_path(d: Path) -> Spec:
    printed = lambda out: "secret printed" if TOKEN in out else None  # noqa: E731
    args = fit_args("rte", d / f"token={TOKEN}" / "missing", d / "run")
    return Spec(args, absent=[d / "run"], checks=[printed, contains("token=***")])


# ----------------------------------------------------------------------------- the runner
def snapshot(paths: list[Path]) -> dict[str, tuple[str, int]]:
    """sha256 and mtime of every file under ``paths`` (symbolic links: their target text)."""
    files = {}
    for top in paths:
        walk = [(str(top.parent), [], [top.name])] if top.is_file() else os.walk(top)
        for folder, _, names in walk:
            for name in names:
                p = os.path.join(folder, name)
                st = os.lstat(p)
                data = os.readlink(p).encode() if os.path.islink(p) else Path(p).read_bytes()
                files[p] = (hashlib.sha256(data).hexdigest(), st.st_mtime_ns)
    return files


def launch(args: list[str], sig: int | None = None, wait_for: Path | None = None):
    """Run apm to the end, or send ``sig`` once ``wait_for`` exists; (rc, stdout, stderr, seconds)."""
    start = time.perf_counter()
    proc = subprocess.Popen(
        apm_cmd(args),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env(),
        cwd=W,
        # Ctrl-C as a terminal delivers it (a background job ignores SIGINT otherwise).
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    if sig is not None:
        deadline = time.monotonic() + 600
        while not wait_for.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        if proc.poll() is None:
            proc.send_signal(sig)
    out, err = proc.communicate(timeout=900)
    return proc.returncode, out, err, time.perf_counter() - start


def run_case(name: str) -> dict:
    category, build = CASES[name]
    (d := W / name).mkdir()
    row = dict(name=name, category=category, expect=2, rc=-1, traceback=False, seconds=0.0, changed=0)
    row.update(resume=False, errors=0, lines=0, ok=False, problems="", line="")
    try:
        spec = build(d)
    except Exception as err:  # the case could not be set up: a failed row, not a crashed table
        return {**row, "problems": f"setup failed: {err!r}"[:300]}
    before = snapshot(spec.watch)
    rc, out, err, seconds = launch(spec.args, spec.signal, spec.wait_for)
    after = snapshot(spec.watch)
    changed = [os.path.relpath(p, W) for p in before if after.get(p) != before[p]]
    new = [os.path.relpath(p, W) for p in sorted(set(after) - set(before))]
    lines = err.strip().splitlines()
    errors = [x for x in lines if x.startswith("apm: error:")]
    traceback = "Traceback (most recent call last)" in out + err
    problems = [f"exit {rc}"] if rc != spec.expect else []
    problems += ["traceback"] if traceback else []
    problems += [f"changed {changed[:3]}"] if changed and not spec.resume else []
    if spec.expect == 2:  # a refusal: one error line, last; nothing written
        problems += [f"{len(errors)} error lines"] if len(errors) != 1 or lines[-1:] != errors else []
        problems += [f"refused but wrote {new[:3]}"] if new else []
        problems += [f"refused but created {p.name}" for p in spec.absent if p.exists()]
    elif errors:
        problems.append("error line on success")
    problems += [p for check in spec.checks if (p := check(out + err))]
    row.update(expect=spec.expect, rc=rc, traceback=traceback, seconds=seconds, changed=len(changed))
    row.update(resume=spec.resume, errors=len(errors), lines=len(lines), ok=not problems)
    row.update(problems="; ".join(problems), line=(errors or lines or [""])[-1][:160])
    return row


def train_once() -> None:
    """The tiny_bert RTE run the checkpoint and directory cases reuse."""
    rc, _, err, seconds = launch(fit_args("rte", GLUE, W / "trained"))
    if rc != 0:
        raise SystemExit(f"training the shared checkpoint failed ({rc}):\n{err[-3000:]}")
    print(f"trained the shared tiny_bert checkpoint in {seconds:.0f}s", flush=True)


CATEGORIES = ("data", "config", "checkpoint", "directory", "signal", "secret")
NEEDS_TRAINED = {"checkpoint", "directory"}


def main() -> int:
    global W
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--list", action="store_true", help="list the cases and exit")
    parser.add_argument("--only", action="append", default=[], help="run this case (repeatable)")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    parser.add_argument("-v", "--verbose", action="store_true", help="print each case's last stderr line")
    args = parser.parse_args()
    if args.list:
        for name in sorted(CASES, key=lambda n: CATEGORIES.index(CASES[n][0])):
            print(f"{CASES[name][0]:10s} {name}")
        return 0
    unknown = [n for n in args.only if n not in CASES]
    if unknown:
        parser.error(f"unknown case(s) {unknown}; see --list")
    if not GLUE.is_dir():
        parser.error(f"GLUE data not found at {GLUE}")
    names = args.only or sorted(CASES, key=lambda n: CATEGORIES.index(CASES[n][0]))  # stable sort
    W = Path(tempfile.mkdtemp(prefix="apm-hostile-"))
    rows = []
    try:
        if any(CASES[n][0] in NEEDS_TRAINED or n == "secret_in_data_dir" for n in names):
            train_once()
        head = f"{'case':34s} {'category':10s} {'want':>4s} {'exit':>4s} {'tb':3s} {'secs':>6s} "
        head += f"{'changed':>7s} {'errs':>4s} {'lines':>5s} result"
        print(head, flush=True)
        for name in names:
            r = run_case(name)
            rows.append(r)
            changed = f"{r['changed']}{'*' if r['resume'] else ''}"
            print(
                f"{r['name']:34s} {r['category']:10s} {r['expect']:4d} {r['rc']:4d} "
                f"{'yes' if r['traceback'] else 'no':3s} {r['seconds']:6.1f} {changed:>7s} {r['errors']:4d} {r['lines']:5d} "
                f"{'PASS' if r['ok'] else 'FAIL: ' + r['problems']}",
                flush=True,
            )
            if args.verbose or not r["ok"]:
                print(f"    {r['line']}", flush=True)
    finally:
        if args.keep:
            print(f"work folder kept: {W}")
        else:
            shutil.rmtree(W, ignore_errors=True)
    passed = sum(r["ok"] for r in rows)
    total_seconds = sum(r["seconds"] for r in rows)
    print(
        f"\n{passed}/{len(rows)} passed, {len(rows) - passed} failed, {total_seconds:.0f}s in apm processes"
    )
    print("(tb: a Python traceback in stdout/stderr; changed: pre-existing files whose sha256 or mtime")
    print(" changed, * = a resume, which may append; errs: 'apm: error:' lines; lines: all stderr lines)")
    return 0 if passed == len(rows) else 1


if __name__ == "__main__":
    sys.exit(main())
