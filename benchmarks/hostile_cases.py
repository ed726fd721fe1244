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
RTE = str(REPO / "experiments" / "glue" / "rte.yaml")
TINY = str(REPO / "experiments" / "models" / "tiny_bert.yaml")
QUIET = [
    "--wandb_mode=disabled",
    "--trainer.enable_progress_bar=false",
    "--trainer.enable_model_summary=false",
]
TINY_RUN = ["--data.max_train_samples", "24", "--data.max_eval_samples", "24", "--data.max_seq_length", "32"]
TINY_RUN += ["--data.max_predict_samples", "8", "--trainer.max_epochs", "1", *QUIET]
SECRET = "hunter2"
TOKEN = "abc123secret"
TINY_BERT = {  # the architecture of tiny_bert.yaml: what a remote-code folder must look like
    "model_type": "bert",
    "vocab_size": 30522,
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "max_position_embeddings": 512,
}

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
    check: Callable[[str], str | None] | None = None  # output -> a failure, or None
    cwd: Path | None = None


CASES: dict[str, tuple[str, Callable[[Path], Spec]]] = {}


def case(category: str):
    def register(fn):
        CASES[fn.__name__] = (category, fn)
        return fn

    return register


# ----------------------------------------------------------------------------- helpers
def env() -> dict[str, str]:
    e = {k: v for k, v in os.environ.items() if k not in ("APM_DATA_DIR", "APM_DEBUG")}
    e.update(
        HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", WANDB_MODE="disabled", TOKENIZERS_PARALLELISM="false"
    )
    e.update(APM_CACHE_DIR=str(W / "cache"), HF_MODULES_CACHE=str(W / "hf-modules"))
    e["PYTHONPATH"] = os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])
    return e


def apm_cmd(args: list[str]) -> list[str]:
    return [sys.executable, "-m", "apm_lightning", *args]


def fit_args(
    task: str, data_dir: Path, run: Path, *extra: str, command: str = "fit", model=(TINY,)
) -> list[str]:
    """``apm fit`` (or ``command``) of tiny_bert on ``task``; ``extra`` last, so it wins."""
    configs = ["-c", str(REPO / f"experiments/glue/{task}.yaml")] + [x for m in model for x in ("-c", m)]
    return [
        command,
        *configs,
        "--data.data_dir",
        str(data_dir),
        *TINY_RUN,
        "--trainer.default_root_dir",
        str(run),
        *extra,
    ]


def sst2_root(d: Path, train: bytes | None = None) -> Path:
    """A GLUE root with SST-2: the real dev file and 40 real training rows (or ``train``)."""
    folder = d / "glue" / "SST-2"
    folder.mkdir(parents=True)
    shutil.copy(GLUE / "SST-2" / "dev.tsv", folder / "dev.tsv")
    if train is None:
        train = (
            "\n".join((GLUE / "SST-2" / "train.tsv").read_text("utf-8").splitlines()[:41]).encode() + b"\n"
        )
    (folder / "train.tsv").write_bytes(train)
    return d / "glue"


def sst2_lines() -> list[str]:
    return (GLUE / "SST-2" / "train.tsv").read_text("utf-8").splitlines()[:41]


def refused_sst2(d: Path, train: bytes | None = None, *extra: str) -> Spec:
    root = sst2_root(d, train)
    return Spec(fit_args("sst2", root, d / "run", *extra), watch=[root], absent=[d / "run"])


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

    checkpoint = torch.load(
        W / "trained" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True
    )
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
@case("data")
def non_utf8_tsv(d: Path) -> Spec:
    return refused_sst2(d, "sentence\tlabel\nfine\t1\nle caf\xe9\t1\n".encode("latin-1"))


@case("data")
def utf16_tsv_without_bom(d: Path) -> Spec:
    return refused_sst2(d, "sentence\tlabel\nun café\t1\nbad\t0\n".encode("utf-16-le"))


@case("data")
def train_tsv_is_a_folder(d: Path) -> Spec:
    spec = refused_sst2(d)
    train = spec.watch[0] / "SST-2" / "train.tsv"
    train.unlink()
    train.mkdir()
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
def header_line_1mb(d: Path) -> Spec:
    return refused_sst2(d, ("x" * 1_000_000 + "\tlabel\nfine\t1\n").encode())


@case("data")
def wrong_column_count(d: Path) -> Spec:
    lines = sst2_lines()
    lines[7] += "\textra"
    return refused_sst2(d, ("\n".join(lines) + "\n").encode())


@case("data")
def missing_label_column(d: Path) -> Spec:
    lines = sst2_lines()
    lines[0] = "sentence\tstars"
    return refused_sst2(d, ("\n".join(lines) + "\n").encode())


@case("data")
def unknown_task(d: Path) -> Spec:
    return refused_rte(d, "--data.task", "sst3")


@case("data")
def stsb_score_not_a_number(d: Path) -> Spec:
    header = "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore"
    good = "0\tmain-captions\tMSRvid\t2012test\t0001\tnone\tnone\ta plane takes off .\ta plane is taking off .\t5.000"
    bad = good.replace("5.000", "five").replace("0\t", "1\t", 1)
    folder = d / "glue" / "STS-B"
    folder.mkdir(parents=True)
    (folder / "train.tsv").write_text("\n".join([header, good, bad]) + "\n")
    (folder / "dev.tsv").write_text("\n".join([header, good]) + "\n")
    return Spec(fit_args("stsb", d / "glue", d / "run"), watch=[d / "glue"], absent=[d / "run"])


@case("data")
def empty_train_file(d: Path) -> Spec:
    return refused_sst2(d, b"")


@case("data")
def batch_size_0(d: Path) -> Spec:
    return refused_rte(d, "--data.batch_size", "0")


@case("data")
def max_train_samples_negative(d: Path) -> Spec:
    return refused_rte(d, "--data.max_train_samples", "-5")


@case("data")
def max_seq_length_100000(d: Path) -> Spec:
    return refused_rte(d, "--data.max_seq_length", "100000")


# ----------------------------------------------------------------------------- config
def bad_config(d: Path, content: bytes) -> Spec:
    (d / "bad.yaml").write_bytes(content)
    return refused_rte(d, "-c", str(d / "bad.yaml"))


@case("config")
def binary_config_file(d: Path) -> Spec:
    return bad_config(d, bytes(range(256)) * 4)


@case("config")
def non_yaml_config_file(d: Path) -> Spec:
    return bad_config(d, b"trainer: [1,\n  data")


@case("config")
def unknown_option(d: Path) -> Spec:
    return refused_rte(d, "--data.bogus", "3")


@case("config")
def wrong_option_type(d: Path) -> Spec:
    return refused_rte(d, "--data.batch_size", "abc")


@case("config")
def backbone_and_backbone_config(d: Path) -> Spec:
    return refused_rte(d, "--model.backbone", str(d / "some-model"))


@case("config")
def accelerator_gpu_without_gpu(d: Path) -> Spec:
    return refused_rte(d, "--trainer.accelerator", "gpu")


@case("config")
def sweep_binary_config(d: Path) -> Spec:
    (d / "sweep.yaml").write_bytes(bytes(range(256)))
    return Spec(["sweep", "-c", str(d / "sweep.yaml"), "--out", str(d / "out")], absent=[d / "out"])


@case("config")
def sweep_every_trial_fails(d: Path) -> Spec:
    # No --data.data_dir, offline: every trial fails on the data; the study's record is kept.
    args = ["sweep", "-c", str(REPO / "experiments/sweeps/tiny_rte.yaml"), "--out", str(d / "out")]
    args += ["--launcher", "inprocess", "--n-trials", "1", "--wandb_mode", "disabled"]
    return Spec(args, check=contains("all 1 trial(s) this worker ran failed"))


# ----------------------------------------------------------------------------- checkpoint
def refused_ckpt(d: Path, ckpt: Path, command: str = "validate") -> Spec:
    args = fit_args("rte", GLUE, d / "out", "--ckpt_path", str(ckpt), command=command)
    return Spec(args, watch=[W / "trained", d], absent=[d / "out"], check=no_marker(d))


@case("checkpoint")
def truncated_ckpt(d: Path) -> Spec:
    (d / "broken.ckpt").write_bytes((W / "trained" / "checkpoints" / "last.ckpt").read_bytes()[:5000])
    spec = refused_ckpt(d, d / "broken.ckpt")
    spec.check = contains("broken.ckpt could not be read")
    return spec


@case("checkpoint")
def pickle_payload(d: Path) -> Spec:
    return refused_ckpt(d, hostile_copy(d / "pickle.ckpt", extra=Payload(d / "marker")))


@case("checkpoint")
def foreign_class_os_foo(d: Path) -> Spec:
    ckpt = hostile_copy(d / "os.ckpt", {"_class_path": "os.Foo"}, {"module": "os.Foo"})
    spec = refused_ckpt(d, ckpt)
    spec.check = contains("'os.Foo', which is not one of apm's")
    return spec


@case("checkpoint")
def trust_remote_code_ckpt(d: Path) -> Spec:
    return refused_ckpt(d, remote_code_ckpt(d), command="fit")


@case("checkpoint")
def export_trust_remote_code_ckpt(d: Path) -> Spec:
    ckpt = remote_code_ckpt(d)
    return Spec(["export", str(ckpt), str(d / "hf")], watch=[d], absent=[d / "hf"], check=no_marker(d))


@case("checkpoint")
def model_backbone_is_hostile_ckpt(d: Path) -> Spec:
    ckpt = remote_code_ckpt(d)
    args = fit_args("rte", GLUE, d / "out", "--model.backbone", str(ckpt), model=())
    return Spec(args, watch=[W / "trained", d], absent=[d / "out"], check=no_marker(d))


@case("checkpoint")
def resume_with_other_data_settings(d: Path) -> Spec:
    run = trained_copy(d)
    args = fit_args("rte", GLUE, run, "--ckpt_path", "last", "--data.max_seq_length", "24")
    return Spec(args, watch=[run], check=contains("data.max_seq_length was 32, now 24"))


# ----------------------------------------------------------------------------- directory
@case("directory")
def fresh_fit_into_used_run_dir(d: Path) -> Spec:
    run = trained_copy(d)
    return Spec(fit_args("rte", GLUE, run), watch=[run], check=contains("already holds a run"))


@case("directory")
def run_dir_is_a_file(d: Path) -> Spec:
    (d / "blocker").write_text("x")
    return Spec(fit_args("rte", GLUE, d / "blocker"), watch=[d])


@case("directory")
def export_overwrite_onto_run_dir(d: Path) -> Spec:
    run = trained_copy(d)
    args = ["export", str(run / "checkpoints" / "last.ckpt"), str(run), "--overwrite"]
    return Spec(args, watch=[run], check=contains("holds the checkpoint being exported"))


@case("directory")
def export_to_a_file(d: Path) -> Spec:
    (d / "out.txt").write_text("x")
    return Spec(["export", str(W / "trained" / "checkpoints" / "last.ckpt"), str(d / "out.txt")], watch=[d])


def evaluate_into_run_dir(d: Path, command: str) -> Spec:
    run = trained_copy(d)
    args = fit_args("rte", GLUE, run, "--ckpt_path", str(best_ckpt(run)), command=command)
    return Spec(args, expect=0, watch=[run])


@case("directory")
def predict_into_training_run_dir(d: Path) -> Spec:
    return evaluate_into_run_dir(d, "predict")


@case("directory")
def validate_into_training_run_dir(d: Path) -> Spec:
    return evaluate_into_run_dir(d, "validate")


@case("directory")
def glue_out_is_a_file(d: Path) -> Spec:
    (d / "out.txt").write_text("x")
    args = ["glue", "--model", TINY, "--tasks", "rte", "--data-dir", str(GLUE), "--out", str(d / "out.txt")]
    return Spec(args, watch=[d])


@case("directory")
def report_run_without_metrics_csv(d: Path) -> Spec:
    shutil.copytree(W / "trained", d / "runs" / "a")
    shutil.copytree(W / "trained", d / "runs" / "b")
    shutil.rmtree(d / "runs" / "b" / "csv")
    args = ["report", str(d / "runs"), "--out", str(d / "report"), "--wandb_mode", "disabled"]
    return Spec(args, expect=0, watch=[d / "runs"], check=contains("b has no csv/metrics.csv"))


# ----------------------------------------------------------------------------- signal
LONG_FIT = ["--trainer.max_epochs", "-1", "--trainer.max_steps", "500", "--checkpoint_every_n_steps", "1"]
LONG_FIT += ["--data.batch_size", "8", "--trainer.log_every_n_steps", "1"]


def last_ckpt_saved(run: Path, message: str) -> Callable[[str], str | None]:
    def check(out: str) -> str | None:
        if not (run / "checkpoints" / "last.ckpt").is_file():
            return "no last.ckpt"
        return None if message in out else f"output lacks {message!r}"

    return check


@case("signal")
def sigint_during_fit(d: Path) -> Spec:
    run = d / "run"
    return Spec(
        fit_args("rte", GLUE, run, *LONG_FIT),
        expect=130,
        signal=signal.SIGINT,
        wait_for=run / "checkpoints" / "last.ckpt",
        check=last_ckpt_saved(run, "apm: stopped by Ctrl-C; last.ckpt was saved"),
    )


@case("signal")
def sigterm_during_fit(d: Path) -> Spec:
    run = d / "run"
    return Spec(
        fit_args("rte", GLUE, run, *LONG_FIT),
        expect=143,
        signal=signal.SIGTERM,
        wait_for=run / "checkpoints" / "last.ckpt",
        check=last_ckpt_saved(run, "apm: stopped by SIGTERM; last.ckpt was saved"),
    )


@case("signal")
def kill9_then_resume(d: Path) -> Spec:
    import torch

    run = d / "run"
    rc, _, err, _ = launch(
        fit_args("rte", GLUE, run, *LONG_FIT), signal.SIGKILL, run / "checkpoints/last.ckpt"
    )
    if rc != -signal.SIGKILL:
        raise RuntimeError(f"the run to kill ended with {rc}: {err[-2000:]}")
    step = torch.load(run / "checkpoints/last.ckpt", weights_only=True)["global_step"]
    args = fit_args("rte", GLUE, run, *LONG_FIT, "--ckpt_path", "last", "--trainer.max_steps", str(step + 2))

    def each_step_once(_: str) -> str | None:
        import csv

        with open(run / "csv" / "metrics.csv", newline="") as f:
            steps = [int(r["step"]) for r in csv.DictReader(f) if r["train/loss"]]
        return (
            None if steps == list(range(step + 2)) else f"metrics.csv steps {steps}, not 0..{step + 1} once"
        )

    return Spec(args, expect=0, watch=[run], resume=True, check=each_step_once)


# ----------------------------------------------------------------------------- secret
def rte_copy(root: Path) -> Path:
    (root / "RTE").mkdir(parents=True)
    for name in ("train.tsv", "dev.tsv", "test.tsv"):
        lines = (GLUE / "RTE" / name).read_text("utf-8").splitlines()[:17]
        (root / "RTE" / name).write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root


@case("secret")
def secret_in_data_dir(d: Path) -> Spec:
    data, run = rte_copy(d / f"password={SECRET}"), d / "run"

    def nowhere(out: str) -> str | None:
        if SECRET in out:
            return "secret printed"
        leaks = [p.name for p in run.rglob("*") if p.is_file() and SECRET.encode() in p.read_bytes()]
        return f"secret in {leaks}" if leaks else None

    return Spec(fit_args("rte", data, run), expect=0, watch=[data], check=nowhere)


@case("secret")
def secret_in_bad_data_path(d: Path) -> Spec:
    spec = Spec(fit_args("rte", d / f"token={TOKEN}" / "missing", d / "run"), absent=[d / "run"])
    spec.check = lambda out: "secret printed" if TOKEN in out else contains("token=***")(out)
    return spec


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


def launch(args: list[str], sig: int | None = None, wait_for: Path | None = None, cwd: Path | None = None):
    """Run apm to the end, or send ``sig`` once ``wait_for`` exists; (rc, stdout, stderr, seconds)."""
    start = time.perf_counter()
    proc = subprocess.Popen(
        apm_cmd(args),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env(),
        cwd=cwd or W,
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
    d = W / name
    d.mkdir()
    spec = build(d)
    before = snapshot(spec.watch)
    rc, out, err, seconds = launch(spec.args, spec.signal, spec.wait_for, spec.cwd)
    after = snapshot(spec.watch)
    changed = [p for p in before if after.get(p) != before[p]]
    new = sorted(set(after) - set(before))
    errors = [x for x in err.splitlines() if x.startswith("apm: error:")]
    traceback = "Traceback (most recent call last)" in out + err
    problems = []
    if rc != spec.expect:
        problems.append(f"exit {rc}")
    if traceback:
        problems.append("traceback")
    if changed and not spec.resume:
        problems.append(f"changed {[os.path.relpath(p, W) for p in changed][:3]}")
    if spec.expect == 2:
        if len(errors) != 1 or err.strip().splitlines()[-1:] != errors:
            problems.append(f"{len(errors)} error lines")
        if new:
            problems.append(f"refused but wrote {[os.path.relpath(p, W) for p in new][:3]}")
        problems += [f"refused but created {p.name}" for p in spec.absent if p.exists()]
    elif errors:
        problems.append("error line on success")
    if spec.check is not None and (problem := spec.check(out + err)):
        problems.append(problem)
    line = errors[-1] if errors else (err.strip().splitlines() or [""])[-1]
    return dict(
        name=name, category=category, expect=spec.expect, rc=rc, traceback=traceback, seconds=seconds,
        changed=len(changed), resume=spec.resume, errors=len(errors), ok=not problems,
        problems="; ".join(problems), line=line[:160],
    )  # fmt: skip


def train_once() -> None:
    """The tiny_bert RTE run the checkpoint and directory cases reuse."""
    rc, _, err, seconds = launch(fit_args("rte", GLUE, W / "trained"))
    if rc != 0:
        raise SystemExit(f"training the shared checkpoint failed ({rc}):\n{err[-3000:]}")
    print(f"trained the shared tiny_bert checkpoint in {seconds:.0f}s", flush=True)


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
        for name, (category, _) in CASES.items():
            print(f"{category:10s} {name}")
        return 0
    unknown = [n for n in args.only if n not in CASES]
    if unknown:
        parser.error(f"unknown case(s) {unknown}; see --list")
    if not GLUE.is_dir():
        parser.error(f"GLUE data not found at {GLUE}")
    names = args.only or list(CASES)
    W = Path(tempfile.mkdtemp(prefix="apm-hostile-"))
    rows = []
    try:
        if any(CASES[n][0] in NEEDS_TRAINED or n == "secret_in_data_dir" for n in names):
            train_once()
        head = f"{'case':34s} {'category':10s} {'want':>4s} {'exit':>4s} {'tb':3s} {'secs':>6s} "
        head += f"{'changed':>7s} {'errs':>4s} result"
        print(head, flush=True)
        for name in names:
            r = run_case(name)
            rows.append(r)
            changed = f"{r['changed']}{'*' if r['resume'] else ''}"
            print(
                f"{r['name']:34s} {r['category']:10s} {r['expect']:4d} {r['rc']:4d} "
                f"{'yes' if r['traceback'] else 'no':3s} {r['seconds']:6.1f} {changed:>7s} {r['errors']:4d} "
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
    print("(changed: pre-existing files whose sha256 or mtime changed; * = a resume, which may append)")
    return 0 if passed == len(rows) else 1


if __name__ == "__main__":
    sys.exit(main())
