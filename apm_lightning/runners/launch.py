"""Run ``apm fit|predict`` for a runner: in child processes, one or several at once
(``run_jobs``), or in this process.

``subprocess`` (the default) isolates runs: a crash, a CUDA out-of-memory error or the kernel's
OOM killer takes down that run only, and each run starts with fresh memory. ``inprocess`` skips
the interpreter start-up (seconds per run), which is what the tests use. Either way a run that
does not finish raises :class:`RunFailed` with a one-line reason.

A runner asked to stop (SIGTERM from a scheduler or ``kill``, Ctrl-C, a hang-up) while a child
trains passes the signal on and waits: the child ends its batch, saves ``last.ckpt`` and exits, and the
runner then stops with :class:`RunStopped` instead of going on to the next run. The child runs in
its own session so that it hears each signal once, from its runner (a terminal's Ctrl-C goes to
the whole foreground process group, and a second SIGINT means "stop at once" to ``apm fit``).
A runner killed outright (``kill -9``, the OOM killer) cannot pass anything on, and its child, in a
session of its own, would train on unseen: on Linux the kernel sends the child SIGTERM when its
runner dies (``follow_runner``), so it saves ``last.ckpt`` and exits, and the next run of the same
command resumes it instead of finding the run directory locked by an orphan.
"""

from __future__ import annotations

import ctypes
import gc
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

LAUNCHERS = ("subprocess", "inprocess")
# Set in a child's environment: the pid of the runner it belongs to (see ``follow_runner``).
RUNNER_PID = "APM_RUNNER_PID"
PR_SET_PDEATHSIG = 1  # linux/prctl.h
# The signal a runner gets -> the one its child gets. A hang-up (the terminal closed) reached the
# child directly before it had its own session; it now stops it as a preemption does.
FORWARDED = {signal.SIGINT: signal.SIGINT, signal.SIGTERM: signal.SIGTERM}
if hasattr(signal, "SIGHUP"):
    FORWARDED[signal.SIGHUP] = signal.SIGTERM


class RunFailed(Exception):
    """A run that did not finish; the message says why (and where its log is)."""


class RunStopped(KeyboardInterrupt):
    """This process got SIGINT, SIGTERM or SIGHUP while a run was in progress, and that run has ended.
    A KeyboardInterrupt, so that no runner takes it for one failed run and starts the next;
    ``apm`` prints the message and exits with ``exit_code`` (128 + the signal's number)."""

    def __init__(self, signum: int, detail: str) -> None:
        self.exit_code = 128 + signum
        name = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
        super().__init__(f"stopped by {name}; {detail}; the same command continues where it stopped")


def run_apm(
    args: list[str],
    log_file: str | Path,
    launcher: str = "subprocess",
    env: Mapping[str, str] | None = None,
) -> None:
    """Run ``apm *args``; extra environment variables apply to that run only."""
    env = dict(env or {})
    if launcher == "inprocess":
        _run_inprocess(args, env)
    elif launcher == "subprocess":
        _run_subprocess(args, Path(log_file), env)
    else:
        raise ValueError(f"unknown launcher {launcher!r}: choose one of {', '.join(LAUNCHERS)}")


def describe_exit(code: int) -> str:
    if code < 0 or code > 128:
        number = -code if code < 0 else code - 128
        try:
            name = signal.Signals(number).name
        except ValueError:
            name = f"signal {number}"
        return f"killed by {name}" + (" (out of memory?)" if number == signal.SIGKILL else "")
    return f"exit status {code}"


def exit_and_reason(code: int, reason: str) -> str:
    """``describe_exit`` and the log's last line; a child killed before it wrote one (a signal
    during start-up) has no reason to add."""
    return f"{describe_exit(code)}: {reason}" if reason else describe_exit(code)


def _reason_from_log(log_file: Path, start: int = 0) -> str:
    with log_file.open("rb") as f:
        f.seek(start)
        text = f.read().decode(errors="replace")
    lines = [x.strip() for x in text.splitlines() if x.strip() and not x.startswith("$ apm ")]
    errors = [x for x in lines if x.startswith("apm: error:")]
    return (errors or lines or [""])[-1][:300]


def _child_environment(extra: dict[str, str]) -> dict[str, str]:
    """This process's environment plus ``extra``, without ``WANDB_SERVICE``: a child that
    inherits it logs through this process's W&B service, where a killed child's run stays open,
    and its resume then fails with "run ID ... is in use". Each child starts its own service.
    ``RUNNER_PID`` tells the child whose death should stop it (``follow_runner``)."""
    environment = {k: v for k, v in os.environ.items() if k != "WANDB_SERVICE"}
    return {**environment, **extra, RUNNER_PID: str(os.getpid())}


@dataclass
class Job:
    """One ``apm *args`` for ``run_jobs``; ``env`` applies to that run only."""

    args: list[str]
    log_file: Path
    env: dict[str, str] = field(default_factory=dict)


class _Child:
    """A job's process and its log (opened for appending: a retry keeps the earlier attempt's)."""

    def __init__(self, job: Job, env: dict[str, str], new_session: bool) -> None:
        self.job = job
        job.log_file.parent.mkdir(parents=True, exist_ok=True)
        self.start = job.log_file.stat().st_size if job.log_file.is_file() else 0
        self.log = job.log_file.open("a", encoding="utf-8")
        self.log.write(f"$ apm {shlex.join(job.args)}\n")
        self.log.flush()
        self.signalled = False
        try:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "apm_lightning", *job.args],
                stdout=self.log,
                stderr=subprocess.STDOUT,
                env=_child_environment({**job.env, **env}),
                start_new_session=new_session,
            )
        except BaseException:
            self.log.close()
            raise

    def signal(self, signum: int) -> None:
        if self.process.poll() is None:
            self.process.send_signal(FORWARDED[signum])
        self.signalled = True

    def failure(self, code: int) -> RunFailed | None:
        if code == 0:
            return None
        return RunFailed(f"{exit_and_reason(code, self.reason())} (log: {self.job.log_file})")

    def after_stop(self, code: int) -> str:
        """What became of this run when the runner was asked to stop."""
        if code == 0:
            return "had finished"
        reason = self.reason()
        # apm fit's last line after a stop that saved; "stopped by Ctrl-C before last.ckpt was
        # saved" (a second Ctrl-C) must not read as one.
        if "; last.ckpt was saved" in reason:
            return "saved last.ckpt"
        return f"ended ({exit_and_reason(code, reason)})"

    def reason(self) -> str:
        return _reason_from_log(self.job.log_file, self.start)


def slot_environment(slot: int, parallel: int) -> dict[str, str]:
    """The environment of a run in ``slot`` of ``parallel``: the CPU cores split between the
    slots (torch's intra-op threads; a variable this process already has is kept), and with
    several GPUs in ``$CUDA_VISIBLE_DEVICES`` one of them per slot. Nothing for one slot.

    Why split the cores: small matrices use threads poorly. On 2 cores two one-thread MiniLM
    training loops ran 1.18-1.25x faster together than one of two threads (two ``apm fit`` on
    MRPC 1.23x), while two runs of two threads each slow each other several times over
    (oversubscription)."""
    if parallel <= 1:
        return {}
    env: dict[str, str] = {}
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        if name not in os.environ:
            env[name] = str(max(1, cores // parallel))
    devices = [d for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    if len(devices) > 1:
        env["CUDA_VISIBLE_DEVICES"] = devices[slot % len(devices)].strip()
    return env


def run_jobs(
    jobs: Sequence[Job],
    parallel: int = 1,
    on_start: Callable[[int], None] | None = None,
    on_end: Callable[[int, RunFailed | None], None] | None = None,
) -> None:
    """Run ``jobs`` in child processes, up to ``parallel`` at once, in order. ``on_start(i)`` is
    called as job ``i`` starts and ``on_end(i, failure)`` as it ends (``failure`` None when it
    succeeded). A signal to this process (see the module's docstring) reaches every child in
    progress; no further job starts, and once they have ended ``RunStopped`` says what became
    of each."""
    received: list[int] = []  # every forwarded signal
    running: dict[int, tuple[int, _Child]] = {}  # job index -> (slot, child)

    def forward(signum: int, frame: object) -> None:
        received.append(signum)
        for _, child in running.values():
            child.signal(signum)

    # Handlers live in the main thread only; elsewhere the children stay in this process group
    # and hear a terminal's signals themselves. A signal this process ignores (nohup, a
    # background job's SIGINT) stays ignored.
    in_main = threading.current_thread() is threading.main_thread()
    previous = {}
    for signum in FORWARDED if in_main else ():
        if signal.getsignal(signum) is not signal.SIG_IGN:
            previous[signum] = signal.signal(signum, forward)
    stopped: list[tuple[_Child, int]] = []
    queue = list(enumerate(jobs))
    try:
        while running or (queue and not received):  # after a signal: wait for those running
            while queue and len(running) < parallel and not received:
                index, job = queue.pop(0)
                slot = min(set(range(parallel)) - {s for s, _ in running.values()})
                if on_start:
                    on_start(index)
                child = _Child(job, slot_environment(slot, parallel), new_session=in_main)
                running[index] = (slot, child)
                if received and not child.signalled:  # a signal while it was being started
                    child.signal(received[0])
            for index, (_, child) in list(running.items()):
                code = child.process.wait() if parallel == 1 else child.process.poll()
                if code is None:
                    continue
                del running[index]
                child.log.close()
                if received:
                    stopped.append((child, code))
                elif on_end:
                    on_end(index, child.failure(code))
            if running:
                time.sleep(0.1)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        for _, child in running.values():  # only when an error ends the loop: stop the others
            child.signal(signal.SIGTERM)
            child.process.wait()
            child.log.close()
    if received:
        raise RunStopped(received[0], _stop_detail(stopped))


def _stop_detail(stopped: list[tuple[_Child, int]]) -> str:
    if not stopped:
        return "no run was in progress"
    ended = [(child.after_stop(code), child.job.log_file) for child, code in stopped]
    if len(ended) == 1:
        return f"the run in progress {ended[0][0]} (log: {ended[0][1]})"
    if len({what for what, _ in ended}) == 1:
        logs = ", ".join(str(log) for _, log in ended)
        return f"the {len(ended)} runs in progress {ended[0][0]} (logs: {logs})"
    return "the runs in progress: " + "; ".join(f"one {what} (log: {log})" for what, log in ended)


def _run_subprocess(args: list[str], log_file: Path, env: dict[str, str]) -> None:
    failures: list[RunFailed | None] = []
    run_jobs([Job(args, log_file, env)], on_end=lambda _, failure: failures.append(failure))
    if failures and failures[0] is not None:
        raise failures[0]


def follow_runner() -> None:
    """In a run started by ``_run_subprocess``: ask the kernel for SIGTERM when the runner dies
    (Linux's ``PR_SET_PDEATHSIG``; Python's ``subprocess`` has no option for it, and a
    ``preexec_fn`` is unsafe in a runner with threads). Anywhere else, or in a process not started
    by a runner, nothing changes. The variable is removed, so processes this one starts (DDP
    ranks) do not take this process for a runner."""
    runner = os.environ.pop(RUNNER_PID, None)
    if not runner or not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
    except (OSError, AttributeError):  # a C library without prctl: run as before
        return
    # The runner died before the request, so nobody will send the signal. (A parent other than
    # the runner that is alive is a wrapper between them, e.g. a launcher script: run on.)
    if str(os.getppid()) != runner and not _alive(int(runner)):
        os.kill(os.getpid(), signal.SIGTERM)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, as another user's
        return True
    return True


def _run_inprocess(args: list[str], env: dict[str, str]) -> None:
    from apm_lightning.core.errors import APMError, user_error
    from apm_lightning.training.cli import run_lightning_cli

    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    try:
        run_lightning_cli(args)
    except SystemExit as err:  # the argument parser's way of refusing options
        if err.code in (128 + signal.SIGINT, 128 + signal.SIGTERM):  # it said whether it saved
            raise RunStopped(err.code - 128, "the run in progress stopped") from None
        if err.code not in (0, None):
            raise RunFailed(f"the options were refused (exit status {err.code})") from None
    except Exception as err:
        cause = user_error(err, APMError)
        reason = str(cause) if cause is not None else f"{type(err).__name__}: {err}"
        raise RunFailed(reason.splitlines()[0] if reason else type(err).__name__) from err
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        _release_memory()


def _release_memory() -> None:
    """After a run in this process (failed ones especially), give memory back before the next."""
    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()
