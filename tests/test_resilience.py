"""Crash and resume: SIGKILL at seeded random moments, then resume=<run dir>; the final metrics
must equal, bit for bit, those of the same run never interrupted. Also SIGTERM preemption,
atomic checkpoint writes and damaged checkpoints."""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import run_cli

from nnlab.checkpoint_io import AtomicCheckpointIO
from nnlab.errors import file_error
from nnlab.runs import PREEMPTED_EXIT_CODE, Run, read_status

# Shuffled batches, dropout (random numbers), several epochs, a periodic checkpoint every 7 steps.
RUN = [
    "experiment=sine_mlp",
    "trainer.accelerator=cpu",
    "trainer.deterministic=true",
    "trainer.max_epochs=6",
    "data.shuffle=true",
    "model.dropout=0.2",
    "model.hidden_sizes=[64,64]",
    "checkpoint.every_n_train_steps=7",
    "logger=csv",
]
KEYS = ("val/mse", "val/mae", "test/mse", "test/mae", "best_epoch", "global_step", "epochs")


def start(outputs: Path, cwd: Path, *args: str) -> subprocess.Popen:
    env = {**os.environ, "NNLAB_OUTPUT_DIR": str(outputs), "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "nnlab.train", *args, "print_config=false"],
        env=env,
        cwd=cwd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for_checkpoints(
    run_root: Path, count: int, proc: subprocess.Popen, timeout: float = 300
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        ckpts = list((run_root / "checkpoints").rglob("*.ckpt")) if run_root.exists() else []
        if len(ckpts) >= count:
            return
        time.sleep(0.05)


@pytest.mark.slow
@pytest.mark.parametrize(
    "loop",
    [["task.loop=lightning"], ["task.loop=fused", "task.micro_batches=3"]],
    ids=["lightning", "fused"],
)
def test_killed_runs_resume_to_bitwise_equal_metrics(tmp_path, loop):
    run_args = [*RUN, *loop]
    reference = run_cli(*run_args, outputs=tmp_path / "reference", cwd=tmp_path).metrics()

    outputs = tmp_path / "killed"
    rng = random.Random(2026)  # the kill moments are random, but the same in every test run
    proc = start(outputs, tmp_path, *run_args)
    kills = 0
    while True:
        runs = list(outputs.glob("runs/*/*"))
        if runs:
            wait_for_checkpoints(runs[0], 1, proc)
            time.sleep(rng.uniform(0.0, 1.5))  # mid-epoch, mid-write or between: wherever it falls
        else:
            time.sleep(0.1)
            if proc.poll() is None:
                continue
        if proc.poll() is not None:
            break
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kills += 1
        (run,) = list(outputs.glob("runs/*/*"))
        if kills >= 3:
            break
        proc = start(outputs, tmp_path, f"resume={run}")
    if proc.poll() is None:
        proc.wait()
    (run,) = list(outputs.glob("runs/*/*"))
    if read_status(run).get("status") != "completed":
        run_cli(f"resume={run}", outputs=outputs, cwd=tmp_path)
    assert kills >= 1, "the run finished before any kill: make it longer"
    resumed = json.loads((run / "metrics.json").read_text())
    assert read_status(run)["resumed"] >= 1
    for key in KEYS:
        assert resumed[key] == reference[key], (key, resumed[key], reference[key])


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_and_marks_the_run_preempted(tmp_path):
    outputs = tmp_path / "outputs"
    args = [
        *RUN,
        "trainer.max_epochs=1000",
        "checkpoint.every_n_train_steps=100000",
    ]
    proc = start(outputs, tmp_path, *args)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not list(outputs.glob("runs/*/*/csv/metrics.csv")):
        time.sleep(0.1)
    time.sleep(1.0)
    sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    assert time.monotonic() - sent < 10
    assert proc.returncode == PREEMPTED_EXIT_CODE, stderr[-2000:]
    (run,) = list(outputs.glob("runs/*/*"))
    status = read_status(run)
    assert status["status"] == "preempted" and "resume=" in status["error"]
    assert not (run / "metrics.json").exists()
    checkpoint = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert checkpoint["global_step"] > 0
    # and it resumes from there
    run_cli(
        f"resume={run}",
        "trainer.max_epochs=" + str(checkpoint["epoch"] + 2),
        outputs=outputs,
        cwd=tmp_path,
    )
    assert read_status(run)["status"] == "completed"


def epoch_rows(run: Path) -> list[dict]:
    """The CSV logger's per-epoch rows (train/loss, val/*) of a run, in epoch order."""
    import csv

    rows: dict[int, dict] = {}
    with (run / "csv" / "metrics.csv").open() as f:
        for row in csv.DictReader(f):
            if row.get("epoch"):
                merged = rows.setdefault(int(row["epoch"]), {})
                merged.update({k: v for k, v in row.items() if v and k != "step"})
    return [rows[e] for e in sorted(rows)]


@pytest.mark.slow
def test_preempted_at_epoch_ends_again_and_again_resumes_to_equal_metrics(tmp_path):
    """The fused loop on in-memory data takes a whole epoch as one Lightning batch, so every
    signal lands on an epoch's last batch: Lightning resumes a checkpoint saved there wrongly
    (the epoch's end is skipped, and after a second preemption an epoch is trained twice).
    Preempted three times, the run must still equal the one never interrupted, epoch by epoch."""
    recipe = ["experiment=sine_lstm", "trainer.max_epochs=24", "task.loop=fused"]
    recipe += ["checkpoint.every_n_train_steps=0", "logger=csv", "callbacks=none"]
    reference = run_cli(*recipe, outputs=tmp_path / "reference", cwd=tmp_path)
    outputs = tmp_path / "preempted"
    proc, run, rows = start(outputs, tmp_path, *recipe), None, 0
    for _ in range(3):
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and proc.poll() is None:
            runs = list(outputs.glob("runs/*/*"))
            if runs and (runs[0] / "csv" / "metrics.csv").exists():
                run = runs[0]
                if len(epoch_rows(run)) > rows + 1:  # training, past where it was resumed
                    break
            time.sleep(0.1)
        assert proc.poll() is None, "the run ended before its signal: make it longer"
        proc.send_signal(signal.SIGUSR1)
        _, stderr = proc.communicate(timeout=120)
        assert proc.returncode == PREEMPTED_EXIT_CODE, stderr[-3000:]
        assert read_status(run)["status"] == "preempted"
        rows = len(epoch_rows(run))
        proc = start(outputs, tmp_path, f"resume={run}")
    _, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0, stderr[-3000:]
    assert read_status(run)["resumed"] == 3
    resumed = json.loads((run / "metrics.json").read_text())
    expected = reference.metrics()
    for key in ("val/mse", "test/mse", "best_epoch", "global_step", "epochs"):
        assert resumed[key] == expected[key], (key, resumed[key], expected[key])
    got, want = epoch_rows(run), epoch_rows(reference.run_dir())
    assert [r["epoch"] for r in got] == [r["epoch"] for r in want]
    for key in ("train/loss", "val/mse"):  # every epoch's end ran once, with its start's sums
        assert [r.get(key) for r in got] == [r.get(key) for r in want], key


def test_atomic_checkpoint_write_keeps_the_old_file_when_interrupted(tmp_path, monkeypatch):
    path = tmp_path / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"state_dict": {"w": torch.ones(3)}}, path)

    def broken_save(obj, f, *a, **k):
        f.write(b"PK\x03\x04 half a checkpoint")
        raise KeyboardInterrupt  # the process dies mid-write

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"state_dict": {"w": torch.zeros(3)}}, path)
    monkeypatch.undo()
    assert torch.equal(torch.load(path, weights_only=True)["state_dict"]["w"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]  # no temporary file left


def test_a_checkpoint_that_cannot_be_written_is_named_with_the_space_left(tmp_path, monkeypatch):
    path = tmp_path / "last.ckpt"

    def disk_full(obj, f, *a, **k):
        f.write(b"PK\x03\x04 the start of a checkpoint")
        raise RuntimeError(
            "[enforce fail at inline_container.cc:672] . unexpected pos 6324 vs 6320"
        )

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(OSError) as raised:
        AtomicCheckpointIO().save_checkpoint({"state_dict": {}}, path)
    assert raised.value.filename == str(path)
    assert "unexpected pos" in raised.value.strerror and "MiB free" in raised.value.strerror
    assert list(tmp_path.iterdir()) == []  # neither a checkpoint nor a temporary file
    message = str(file_error(raised.value))
    assert (
        message.startswith(f"{path}: writing the checkpoint failed")
        and "NNLAB_OUTPUT_DIR" in message
    )


def test_resume_skips_a_damaged_checkpoint_and_names_it(tmp_path, caplog):
    outputs = tmp_path / "outputs"
    run = run_cli(*RUN, "trainer.max_epochs=2", outputs=outputs, cwd=tmp_path).run_dir()
    last = run / "checkpoints" / "last.ckpt"
    last.write_bytes(last.read_bytes()[:100])  # truncated
    os.utime(last)  # and the newest
    chosen = Run(run).resume_checkpoint()
    assert chosen != last and chosen.suffix == ".ckpt"
    assert any(str(last) in r.message for r in caplog.records)
    result = run_cli(f"resume={run}", "trainer.max_epochs=3", outputs=outputs, cwd=tmp_path)
    assert "Skipping damaged checkpoint" in result.output and str(last) in result.output
    assert read_status(run)["status"] == "completed"


def test_nan_loss_stops_with_the_step_and_keeps_checkpoints(tmp_path):
    outputs = tmp_path / "outputs"
    result = run_cli(
        "experiment=sine_mlp",
        "trainer.accelerator=cpu",
        "task.optimizer.lr=1e30",
        "trainer.max_epochs=50",
        outputs=outputs,
        cwd=tmp_path,
        check=False,
    )
    assert result.returncode == 2
    assert "training loss became" in result.output and "step" in result.output
    run = result.run_dir()
    assert read_status(run)["status"] == "failed" and not (run / "metrics.json").exists()
