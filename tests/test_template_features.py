"""What a lightning-hydra-template user reaches for: `debug=default` (one full epoch on the CPU,
DEBUG logging, anomaly detection), the rich progress bar as a callback choice, and the
`train=false` / `test=false` switches."""

from __future__ import annotations

import json

import pytest
import yaml

QUICK = ["experiment=sine_mlp", "logger=none", "callbacks=none"]


def test_debug_default_with_the_rich_progress_bar(cli):
    result = cli(
        "experiment=sine_mlp",
        "debug=default",
        "callbacks=[default,rich_progress_bar]",
        "logger=none",
    )
    run = result.run_dir()
    config = yaml.safe_load((run / "config.resolved.yaml").read_text())
    assert config["trainer"]["max_epochs"] == 1 and config["trainer"]["detect_anomaly"] is True
    assert config["callbacks"]["rich_progress_bar"]["_target_"].endswith("RichProgressBar")
    assert result.metrics()["epochs"] == 1
    log = (run / "train.log").read_text()
    assert "[DEBUG]" in log  # the root logger at DEBUG: nnlab's and the libraries' debug lines
    assert "━" in result.output  # rich draws its bar with box characters; tqdm's has none


def test_train_false_evaluates_a_checkpoint_and_test_false_skips_the_test_split(cli, tmp_path):
    trained = cli(*QUICK, "trainer.max_epochs=3").metrics()
    best = trained["best_checkpoint"]
    result = cli(*QUICK, "train=false", f"ckpt_path={best}", "name=evaluated")
    (evaluated,) = [r for r in result.run_dirs() if "evaluated" in r.name]
    metrics = json.loads((evaluated / "metrics.json").read_text())
    # the same weights on the same splits: the same numbers, and nothing trained
    assert metrics["test/mse"] == trained["test/mse"] and metrics["val/mse"] == trained["val/mse"]
    assert metrics["global_step"] == 0 and not list(evaluated.glob("checkpoints/epoch*"))

    untested = cli(*QUICK, "trainer.max_epochs=1", "test=false", "name=untested")
    (run,) = [r for r in untested.run_dirs() if "untested" in r.name]
    metrics = json.loads((run / "metrics.json").read_text())
    assert "val/mse" in metrics and not [k for k in metrics if k.startswith("test/")]


def test_the_switches_take_booleans_only(cli):
    result = cli(*QUICK, "train=maybe", check=False)
    assert result.returncode == 2
    assert "error: train: got 'maybe'; expected true or false (YAML booleans only)" in result.output


@pytest.mark.slow
def test_eval_of_a_checkpoint_alone(cli, tmp_path):
    """`nnlab-eval ckpt=PATH` with no run directory: the checkpoint holds its run's config, from
    which the data and the task are rebuilt; through the installed command, the run's own
    directory moved away first so that nothing can come from it."""
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    import torch

    trained = cli(*QUICK, "trainer.max_epochs=2")
    metrics = trained.metrics()
    alone = tmp_path / "alone"
    alone.mkdir()
    ckpt = alone / "model.ckpt"
    shutil.copy(metrics["best_checkpoint"], ckpt)
    shutil.move(str(trained.run_dir()), tmp_path / "moved")  # no run directory to read

    def nnlab_eval(*args: str) -> subprocess.CompletedProcess:
        command = Path(sys.executable).parent / "nnlab-eval"
        return subprocess.run(
            [str(command), *args], capture_output=True, text=True, cwd=tmp_path, timeout=600
        )

    proc = nnlab_eval(f"ckpt={ckpt}", "accelerator=cpu")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    record = json.loads((alone / "model.eval_metrics.json").read_text())
    assert record["test/mse"] == metrics["test/mse"]  # the run's test of its best checkpoint
    assert record["checkpoint"] == str(ckpt) and record["split"] == "test"
    # an override of the saved config is checked by the schema, as nnlab-train's are
    proc = nnlab_eval(f"ckpt={ckpt}", "data.batch_size=0")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("error: data.batch_size: got 0")
    # a checkpoint without the run's config (saved before nnlab kept it) is one clear line
    saved = torch.load(ckpt, map_location="cpu", weights_only=False)
    del saved["nnlab_config"]
    torch.save(saved, alone / "old.ckpt")
    proc = nnlab_eval(f"ckpt={alone / 'old.ckpt'}")
    assert proc.returncode == 2
    assert "holds no run config" in proc.stderr and "pass run=" in proc.stderr
    assert sorted(p.name for p in alone.iterdir()) == ["model.ckpt", "model.eval_metrics.json", "old.ckpt"]  # fmt: skip


def test_log_level_names_are_coloured_on_a_terminal_only(monkeypatch):
    import io
    import logging

    from nnlab.console import ColourFormatter

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    record = logging.LogRecord("nnlab.train", logging.WARNING, __file__, 1, "careful", None, None)
    fmt = "[%(levelname)s] - %(message)s"
    monkeypatch.delenv("NO_COLOR", raising=False)
    assert ColourFormatter(fmt, stream=Terminal()).format(record) == "[\x1b[33mWARNING\x1b[0m] - careful"  # fmt: skip
    assert record.levelname == "WARNING"  # the file handler's line stays plain
    assert ColourFormatter(fmt, stream=io.StringIO()).format(record) == "[WARNING] - careful"
    monkeypatch.setenv("NO_COLOR", "1")
    assert ColourFormatter(fmt, stream=Terminal()).format(record) == "[WARNING] - careful"


@pytest.mark.slow
def test_a_run_on_a_terminal_prints_coloured_levels_and_a_plain_train_log(tmp_path):
    """nnlab-train's console (conf/train.yaml: hydra.job_logging) through a pseudo-terminal;
    the same command in a pipe prints no colour codes."""
    import os
    import pty
    import subprocess
    import sys
    from pathlib import Path

    command = [str(Path(sys.executable).parent / "nnlab-train"), *QUICK, "trainer.max_epochs=1"]
    command += ["print_config=false", "trainer.accelerator=cpu"]
    env = {k: v for k, v in os.environ.items() if k != "NO_COLOR"}
    env["NNLAB_OUTPUT_DIR"] = str(tmp_path / "out")
    master, terminal = pty.openpty()
    proc = subprocess.Popen(command, stdout=terminal, stderr=terminal, env=env, cwd=tmp_path)
    os.close(terminal)
    chunks = []
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # the terminal closed: the command ended
            break
        if not chunk:
            break
        chunks.append(chunk)
    assert proc.wait(timeout=600) == 0
    output = b"".join(chunks).decode(errors="replace")
    assert "[\x1b[32mINFO\x1b[0m] - Run directory:" in output, output[-2000:]
    (log,) = (tmp_path / "out").glob("runs/*/*/train.log")
    assert "[INFO] - Run directory:" in log.read_text() and "\x1b[" not in log.read_text()
    piped = subprocess.run(command, capture_output=True, text=True, env=env, cwd=tmp_path)
    assert piped.returncode == 0 and "[INFO] - Run directory:" in piped.stdout
    assert "\x1b[32m" not in piped.stdout
