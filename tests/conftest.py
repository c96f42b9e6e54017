"""Shared fixtures: Hydra composition of the real configs, and a runner for the real CLI."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

# Under pytest-xdist (`make test`: one worker per core) each worker gets its share of the cores
# for torch's threads, here and in the commands the tests start (they inherit the variable):
# two workers each running two threads on two cores made a recurrent step many times slower.
# Set before torch is imported, which reads it once. An OMP_NUM_THREADS of your own is kept.
if (_workers := int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0"))) > 1:
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // _workers)))

from nnlab import CONF_DIR  # noqa: E402
from nnlab.resolvers import register_resolvers  # noqa: E402

register_resolvers()
EXPERIMENTS = sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml"))


def compose_config(
    overrides: list[str], output_dir: Path, config_name: str = "train"
) -> DictConfig:
    """The config nnlab-train would see, with this run's output directory set to `output_dir`."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name, overrides=overrides, return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(output_dir)
        cfg.hydra.job.num = 0
    HydraConfig.instance().set_config(cfg)
    return cfg


def _file_handlers() -> set[tuple[logging.Logger, logging.Handler]]:
    loggers = [logging.getLogger(), *logging.Logger.manager.loggerDict.values()]
    return {
        (logger, h)
        for logger in loggers
        if isinstance(logger, logging.Logger)
        for h in logger.handlers
        if isinstance(h, logging.FileHandler)
    }


@pytest.fixture(autouse=True)
def no_leaked_log_files():
    """A command run in-process (`nnlab.train.main()` in test_bad_input.py) leaves Hydra's job
    log handler (`<run dir>/train.log`) on the root logger, which a real process never notices
    as it exits. A later test's log record would reopen that file after its tmp_path is gone
    (passed tests' directories are deleted) and fail with FileNotFoundError."""
    before = _file_handlers()
    yield
    for logger, handler in _file_handlers() - before:
        logger.removeHandler(handler)
        handler.close()


@pytest.fixture
def data_dir(tmp_path) -> Path:
    """Tiny MNIST and Fashion-MNIST in torchvision's raw IDX layout."""
    from mnist_files import write_mnist

    root = tmp_path / "data"
    write_mnist(root, "mnist")
    write_mnist(root, "fashion_mnist")
    return root


@pytest.fixture
def make_cfg(tmp_path):
    def make(*overrides: str) -> DictConfig:
        return compose_config(list(overrides), tmp_path / "run")

    yield make
    GlobalHydra.instance().clear()


class CLIResult:
    def __init__(self, proc: subprocess.CompletedProcess, outputs: Path):
        self.returncode, self.stdout, self.stderr = proc.returncode, proc.stdout, proc.stderr
        self.outputs = outputs

    @property
    def output(self) -> str:
        return self.stdout + self.stderr

    def run_dirs(self) -> list[Path]:
        return sorted(p.parent for p in self.outputs.glob("runs/*/*/.hydra"))

    def run_dir(self) -> Path:
        dirs = self.run_dirs()
        assert len(dirs) == 1, f"expected one run directory, found {dirs}\n{self.output[-3000:]}"
        return dirs[0]

    def metrics(self) -> dict:
        return json.loads((self.run_dir() / "metrics.json").read_text())


def train_in_process(argv: list[str], tmp_path: Path, monkeypatch, capfd) -> tuple[int, str]:
    """nnlab-train's main in this process (quicker than a process per case): (exit code, what it
    printed). `-m` goes before the overrides, as a user types it."""
    import nnlab.train

    monkeypatch.setenv("NNLAB_OUTPUT_DIR", str(tmp_path / "out"))
    monkeypatch.chdir(tmp_path)
    flags = [a for a in argv if a == "-m"]
    rest = [a for a in argv if a != "-m"]
    monkeypatch.setattr(sys, "argv", ["nnlab-train", *flags, "trainer.accelerator=cpu", *rest])
    with pytest.raises(SystemExit) as exit_info:
        nnlab.train.main()
        raise SystemExit(0)
    out, err = capfd.readouterr()
    return exit_info.value.code, (out + err).strip()


# Set to 1 to run every `run_cli` call as its own process (what the in-process calls stand for).
ALWAYS_SUBPROCESS = os.environ.get("NNLAB_TEST_SUBPROCESS") == "1"


def run_cli(
    *args: str,
    outputs: Path,
    cwd: Path,
    module: str = "nnlab.train",
    check: bool = True,
    env: dict | None = None,
    timeout: float = 600,
    process: bool = False,
) -> CLIResult:
    """Run `python -m <module> args...` as a user would, run directories under `outputs`.

    In this process (`inprocess.call`: the command's `main()` with its own argv, environment,
    working directory and captured output; seconds quicker than starting Python, torch and
    Lightning again), unless `process` is set: tests about the process itself (signals, exit
    on kill, imports at start-up, several processes at once) or NNLAB_TEST_SUBPROCESS=1."""
    full_env = {
        **os.environ,
        "NNLAB_OUTPUT_DIR": str(outputs),
        "PYTHONUNBUFFERED": "1",
        "HYDRA_FULL_ERROR": "0",
        **(env or {}),
    }
    extra = ["print_config=false"] if module == "nnlab.train" and "--help" not in args else []
    if process or ALWAYS_SUBPROCESS:
        proc = subprocess.run(
            [sys.executable, "-m", module, *args, *extra],
            capture_output=True,
            text=True,
            env=full_env,
            timeout=timeout,
            cwd=cwd,
        )
    else:
        from inprocess import call

        proc = call(module, [*args, *extra], env=full_env, cwd=cwd)
    result = CLIResult(proc, outputs)
    if check:
        assert proc.returncode == 0, f"exit {proc.returncode}\n{result.output[-5000:]}"
    return result


@pytest.fixture
def cli(tmp_path):
    """Run an nnlab console command as a user would, outputs under a temp dir."""

    def run(*args: str, **kwargs) -> CLIResult:
        return run_cli(*args, outputs=tmp_path / "outputs", cwd=tmp_path, **kwargs)

    return run
