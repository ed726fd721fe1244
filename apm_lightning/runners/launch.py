"""Run one ``apm fit|predict`` for a runner, in a child process or in this one.

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
from collections.abc import Mapping
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


def _run_subprocess(args: list[str], log_file: Path, env: dict[str, str]) -> None:
    log_file.parent.mkdir(parents=True, exist_ok=True)
    start = log_file.stat().st_size if log_file.is_file() else 0
    with log_file.open("a", encoding="utf-8") as log:  # a retry keeps the earlier attempt's log
        log.write(f"$ apm {shlex.join(args)}\n")
        log.flush()
        received: list[int] = []  # every forwarded signal
        pending: list[int] = []  # those that came before the child existed
        child: subprocess.Popen | None = None

        def forward(signum: int, frame: object) -> None:
            received.append(signum)
            if child is None:
                pending.append(signum)
            elif child.poll() is None:
                child.send_signal(FORWARDED[signum])

        # Handlers live in the main thread only; elsewhere the child stays in this process
        # group and hears a terminal's signals itself. A signal this process ignores (nohup,
        # a background job's SIGINT) stays ignored.
        in_main = threading.current_thread() is threading.main_thread()
        previous = {}
        for signum in FORWARDED if in_main else ():
            if signal.getsignal(signum) is not signal.SIG_IGN:
                previous[signum] = signal.signal(signum, forward)
        try:
            child = subprocess.Popen(
                [sys.executable, "-m", "apm_lightning", *args],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=_child_environment(env),
                start_new_session=in_main,
            )
            for signum in pending:
                child.send_signal(FORWARDED[signum])
            code = child.wait()
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
    if received:
        reason = _reason_from_log(log_file, start)
        if code == 0:
            ended = "had finished"
        # apm fit's last line after a stop that saved; "stopped by Ctrl-C before last.ckpt was
        # saved" (a second Ctrl-C) must not read as one.
        elif "; last.ckpt was saved" in reason:
            ended = "saved last.ckpt"
        else:
            ended = f"ended ({exit_and_reason(code, reason)})"
        raise RunStopped(received[0], f"the run in progress {ended} (log: {log_file})")
    if code != 0:
        reason = _reason_from_log(log_file, start)
        raise RunFailed(f"{exit_and_reason(code, reason)} (log: {log_file})")


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
