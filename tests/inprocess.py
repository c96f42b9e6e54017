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
        else:  # made by the command: as a fresh process would leave it to the next
            for handler in lg.handlers:
                handler.close()
            lg.handlers.clear()
            lg.setLevel(logging.NOTSET)
            lg.disabled = False
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


def _clear_hydra() -> None:
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig

    GlobalHydra.instance().clear()
    HydraConfig.instance().cfg = None


def call(
    module: str, args: list[str], env: dict[str, str], cwd: Path
) -> subprocess.CompletedProcess:
    """`python -m module *args` with `env` and `cwd`, run in this process."""
    main = importlib.import_module(module).main
    out, err = io.StringIO(), io.StringIO()
    saved_env, saved_cwd, saved_argv = dict(os.environ), os.getcwd(), sys.argv
    saved_logging, saved_torch = _logging_state(), _torch_state()
    saved_signals = {s: signal.getsignal(s) for s in _SIGNALS}
    code = 0
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
            warnings.showwarning = _show  # to sys.stderr, as a process does (not pytest's list)
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
    return subprocess.CompletedProcess(
        [sys.executable, "-m", module, *args], code, out.getvalue(), err.getvalue()
    )
