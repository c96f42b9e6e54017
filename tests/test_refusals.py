"""A refusal leaves everything as it was (issue 26 item 6): the checks and the directory guards
run before Hydra or nnlab writes anything, so every file of an existing run or sweep is
byte-identical after a refused command."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from conftest import run_cli, train_in_process

from nnlab.runs import Run


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("finished")
    return run_cli(
        "experiment=sine_mlp", "debug=limit", "trainer.accelerator=cpu", "logger=none",
        outputs=root / "out", cwd=root,
    ).run_dir()  # fmt: skip


@pytest.fixture
def run_dir(finished, tmp_path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(finished, copy)
    return copy


def snapshot(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


train = train_in_process


def test_a_finished_run_is_never_trained_into_again(run_dir, tmp_path, monkeypatch, capfd):
    before = snapshot(run_dir)
    argv = ["experiment=sine_mlp", "debug=limit", f"hydra.run.dir={run_dir}"]
    code, output = train(argv, tmp_path, monkeypatch, capfd)
    assert code == 2, output[-2000:]
    assert output.splitlines()[-1] == (
        f"error: hydra.run.dir: {run_dir} holds a finished run, which is never trained into "
        f"again; continue it with resume={run_dir}, or choose another directory"
    )
    assert snapshot(run_dir) == before


def test_a_refused_resume_changes_nothing(run_dir, tmp_path, monkeypatch, capfd):
    before = snapshot(run_dir)
    code, output = train([f"resume={run_dir}", "model=recurrent"], tmp_path, monkeypatch, capfd)
    assert code == 2 and "resume: `model=recurrent` would change what the run is" in output
    assert snapshot(run_dir) == before
    assert Run(run_dir).state()[0] == "completed"


def test_a_busy_run_directory_is_refused_before_anything_is_written(
    run_dir, tmp_path, monkeypatch, capfd
):
    (run_dir / "metrics.json").unlink()  # a run still training
    holder = Run(run_dir)
    holder.lock()
    before = snapshot(run_dir)
    try:
        argv = ["experiment=sine_mlp", "seed=7", f"hydra.run.dir={run_dir}"]
        code, output = train(argv, tmp_path, monkeypatch, capfd)
    finally:
        holder.unlock()
    assert code == 2 and f"error: hydra.run.dir: {run_dir} is in use by process" in output
    assert snapshot(run_dir) == before  # .hydra/overrides.yaml keeps the first run's seed


@pytest.mark.parametrize("launcher", ["basic", "packed"])
def test_a_sweep_directory_in_use_is_refused(launcher, tmp_path, monkeypatch, capfd):
    sweep = tmp_path / "sweep"
    (sweep / "0").mkdir(parents=True)
    (sweep / "0" / "status.json").write_text('{"status": "running"}\n')
    holder = Run(sweep)
    holder.lock("hydra.sweep.dir")
    before = snapshot(sweep)
    try:
        argv = ["-m", f"hydra/launcher={launcher}", "experiment=sine_mlp", "seed=1,2",
                f"hydra.sweep.dir={sweep}"]  # fmt: skip
        code, output = train(argv, tmp_path, monkeypatch, capfd)
    finally:
        holder.unlock()
    assert code == 2 and f"error: hydra.sweep.dir: {sweep} is in use by process" in output
    assert snapshot(sweep) == before


@pytest.mark.parametrize("launcher", ["basic", "packed"])
@pytest.mark.slow
def test_a_sweep_rerun_with_other_settings_keeps_nothing_old(
    launcher, tmp_path, monkeypatch, capfd
):
    sweep = tmp_path / "sweep"
    common = ["-m", f"hydra/launcher={launcher}", "experiment=sine_mlp", "debug=limit",
              "logger=none", f"hydra.sweep.dir={sweep}", "print_config=false"]  # fmt: skip
    code, output = train([*common, "seed=1,2"], tmp_path, monkeypatch, capfd)
    assert code == 0, output[-3000:]
    before = snapshot(sweep)
    code, output = train([*common, "seed=3,2"], tmp_path, monkeypatch, capfd)
    assert code == 2, output[-3000:]
    assert output.splitlines()[-1].startswith("error: hydra.sweep.dir: trial #0 (")
    assert "holds a finished run of another config (data.seed: 1 -> 3)" in output
    assert snapshot(sweep) == before
    code, output = train([*common, "seed=1,2"], tmp_path, monkeypatch, capfd)  # the same: kept
    assert code == 0, output[-3000:]
