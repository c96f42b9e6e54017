"""A command's `main()` called in the test's own process, as `python -m <module> ARGS` would run
it: its own argv, environment and working directory, its output captured, its exit code from
SystemExit (1 and a traceback for an exception, as Python's), and the process-wide state a run
changes (environment, logging, signal handlers, warnings, torch's global switches, Hydra's
globals) put back afterwards, so that the next test sees what a fresh process would."""

from __future__ import annotations

import contextlib
import importlib
import io
import logging
import os
import signal
import subprocess
import sys
import tempfile
import traceback
import warnings
from pathlib import Path

# Python's own warning filters at start-up (no -W, no PYTHONWARNINGS): what a command's
# process starts with, in place of pytest's.
_PYTHON_FILTERS = [
    ("default", None, DeprecationWarning, "__main__", 0),
    ("ignore", None, DeprecationWarning, None, 0),
    ("ignore", None, PendingDeprecationWarning, None, 0),
    ("ignore", None, ImportWarning, None, 0),
    ("ignore", None, ResourceWarning, None, 0),
]
_SIGNALS = [s for s in (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2, signal.SIGINT)]


def _show(message, category, filename, lineno, file=None, line=None) -> None:
    sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))


def _logging_state():
    loggers = {
        name: (lg.level, lg.disabled, lg.propagate, list(lg.handlers))
        for name, lg in logging.Logger.manager.loggerDict.items()
        if isinstance(lg, logging.Logger)
    }
    root = logging.getLogger()
    return loggers, (root.level, list(root.handlers))


def _restore_logging(state) -> None:
    loggers, (level, handlers) = state
    root = logging.getLogger()
    for handler in set(root.handlers) - set(handlers):
        handler.close()
    root.handlers[:] = handlers
    root.setLevel(level)
    for name, lg in logging.Logger.manager.loggerDict.items():
        if not isinstance(lg, logging.Logger):
            continue
        if name in loggers:
            lg.level, lg.disabled, lg.propagate, kept = loggers[name]
            for handler in set(lg.handlers) - set(kept):
                handler.close()
            lg.handlers[:] = kept
        else:  # made by the command (its level as the library set it on import stays)
            for handler in lg.handlers:
                handler.close()
            lg.handlers.clear()
    logging.Logger.manager._clear_cache()


def _torch_state():
    if "torch" not in sys.modules:
        return None
    import torch

    return (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
        torch.get_num_threads(),
        torch.get_default_dtype(),
        torch.get_float32_matmul_precision(),
        torch.is_anomaly_enabled(),
    )


def _restore_torch(state) -> None:
    import torch

    if state is None:
        state = (False, False, torch.get_num_threads(), torch.float32, "highest", False)
    deterministic, warn_only, threads, dtype, precision, anomaly = state
    torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    torch.set_default_dtype(dtype)
    torch.set_float32_matmul_precision(precision)
    torch.autograd.set_detect_anomaly(anomaly)


def _stop_worker_pools() -> None:
    """loky's reusable process pool (the joblib launcher's, a search's workers) ends with its
    process; here it would outlive the call, its workers in the call's (deleted) directory."""
    reusable = sys.modules.get("joblib.externals.loky.reusable_executor")
    if reusable is not None and getattr(reusable, "_executor", None) is not None:
        reusable._executor.shutdown(wait=True, kill_workers=True)
        reusable._executor = None


def _clear_hydra() -> None:
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig

    GlobalHydra.instance().clear()
    HydraConfig.instance().cfg = None


def call(
    module: str, args: list[str], env: dict[str, str], cwd: Path
) -> subprocess.CompletedProcess:
    """`python -m module *args` with `env` and `cwd`, run in this process. Its output is taken
    at the file descriptors, as a pipe to a process would take it: what the processes it starts
    (a search's workers, a sweep's jobs) and C code print is in it too."""
    main = importlib.import_module(module).main
    saved_env, saved_cwd, saved_argv = dict(os.environ), os.getcwd(), sys.argv
    saved_logging, saved_torch = _logging_state(), _torch_state()
    saved_signals = {s: signal.getsignal(s) for s in _SIGNALS}
    code = 0
    with tempfile.TemporaryDirectory(prefix="nnlab-call-") as folder:
        files = [Path(folder) / name for name in ("stdout", "stderr")]
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        saved_fds = [os.dup(1), os.dup(2)]
        for fd, path in zip((1, 2), files, strict=True):
            target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
            os.dup2(target, fd)
            os.close(target)
        out, err = (
            io.TextIOWrapper(
                io.FileIO(fd, "w", closefd=False),
                encoding="utf-8",
                errors="replace",
                line_buffering=True,
                write_through=True,
            )  # fmt: skip
            for fd in (1, 2)
        )
        # PYTHONPATH is read when Python starts: its entries join sys.path for the call, and
        # the modules imported from them leave sys.modules after it (another test's my_data.py)
        extra = [
            str(Path(cwd, p).resolve()) for p in env.get("PYTHONPATH", "").split(os.pathsep) if p
        ]
        sys.path[:0] = extra
        modules_before = set(sys.modules)
        try:
            os.environ.clear()
            os.environ.update(env)
            os.chdir(cwd)
            sys.argv = [module.rsplit(".", 1)[-1], *args]
            with (
                contextlib.redirect_stdout(out),
                contextlib.redirect_stderr(err),
                warnings.catch_warnings(),
            ):
                warnings.filters[:] = list(_PYTHON_FILTERS)
                warnings.showwarning = _show  # to sys.stderr, as a process does (not pytest's)
                try:
                    main()
                except SystemExit as exc:  # as the interpreter turns it into an exit status
                    if exc.code is None:
                        code = 0
                    elif isinstance(exc.code, int):
                        code = exc.code
                    else:
                        print(exc.code, file=sys.stderr)
                        code = 1
                except Exception:
                    traceback.print_exc()
                    code = 1
        finally:
            out.flush()
            err.flush()
            for fd, saved in zip((1, 2), saved_fds, strict=True):
                os.dup2(saved, fd)
                os.close(saved)
            os.environ.clear()
            os.environ.update(saved_env)
            os.chdir(saved_cwd)
            sys.argv = saved_argv
            _restore_logging(saved_logging)
            _restore_torch(saved_torch)
            for s, handler in saved_signals.items():
                if handler is not None:
                    signal.signal(s, handler)
            _clear_hydra()
            _stop_worker_pools()
            del sys.path[: len(extra)]
            for name in set(sys.modules) - modules_before:
                where = getattr(sys.modules[name], "__file__", None) or ""
                if any(where.startswith(folder + os.sep) for folder in extra):
                    del sys.modules[name]
        stdout, stderr = (path.read_text(errors="replace") for path in files)
    return subprocess.CompletedProcess([sys.executable, "-m", module, *args], code, stdout, stderr)


# -- nnlab's commands inside a shell script, run in this process ----------------------------------
COMMANDS = {
    "nnlab-train": "nnlab.train",
    "nnlab-eval": "nnlab.evaluate",
    "nnlab-predict": "nnlab.predict",
    "nnlab-export": "nnlab.export",
    "nnlab-report": "nnlab.report",
}
# Each command on the script's PATH hands its words, working directory and environment to the
# test's process and waits on a FIFO for its exit status; the test's process runs it (`call`)
# and writes what it printed where the shim cats it from.
SHIM = """#!/usr/bin/env bash
req=$(mktemp -d "$NNLAB_SHIM_REQUESTS/req.XXXXXX")
printf '%s' "{module}" > "$req/module"
printf '%s' "$PWD" > "$req/cwd"
printf '%s\\0' "$@" > "$req/args"
env -0 > "$req/env"
mkfifo "$req/status"
touch "$req/ready"
code=$(cat "$req/status")
cat "$req/stdout"
cat "$req/stderr" >&2
exit "$code"
"""


def shell(
    script: list[str], cwd: Path, env: dict[str, str], timeout: float
) -> subprocess.CompletedProcess:
    """`subprocess.run(script)` (a shell command line) with nnlab's commands on its PATH run in
    this process: a shell script's own steps (variables, pipes, cat) as a user's shell runs
    them, the commands without starting Python, torch and Lightning each time."""
    import time

    with tempfile.TemporaryDirectory(prefix="nnlab-shims-") as folder:
        shims, requests = Path(folder, "bin"), Path(folder, "requests")
        shims.mkdir()
        requests.mkdir()
        for name, module in COMMANDS.items():
            (shims / name).write_text(SHIM.replace("{module}", module))
            (shims / name).chmod(0o755)
        env = {**env, "NNLAB_SHIM_REQUESTS": str(requests)}
        env["PATH"] = f"{shims}{os.pathsep}{env.get('PATH', '')}"
        with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
            proc = subprocess.Popen(script, cwd=cwd, env=env, stdout=out, stderr=err, text=True)
            deadline = time.monotonic() + timeout
            done: set[Path] = set()
            while proc.poll() is None:
                if time.monotonic() > deadline:
                    proc.kill()
                    proc.wait()
                    raise subprocess.TimeoutExpired(script, timeout)
                for ready in sorted(requests.glob("req.*/ready")):
                    if ready.parent not in done:
                        done.add(ready.parent)
                        _serve(ready.parent)
                time.sleep(0.005)
            out.seek(0)
            err.seek(0)
            return subprocess.CompletedProcess(script, proc.returncode, out.read(), err.read())


def _serve(request: Path) -> None:
    words = (request / "args").read_bytes().split(b"\0")[:-1]
    pairs = (item.partition(b"=") for item in (request / "env").read_bytes().split(b"\0") if item)
    env = {k.decode(): v.decode() for k, _, v in pairs}
    env.pop("NNLAB_SHIM_REQUESTS", None)
    result = call(
        (request / "module").read_text(),
        [w.decode() for w in words],
        env=env,
        cwd=Path((request / "cwd").read_text()),
    )
    (request / "stdout").write_text(result.stdout)
    (request / "stderr").write_text(result.stderr)
    with open(request / "status", "w") as status:  # the shim waits on this FIFO
        status.write(str(result.returncode))
