"""Sweeps as users run them: parallel trials (joblib), a crashing trial, Optuna search with a
resumable SQLite study, nnlab-report, and distributed (DDP) training on CPU processes."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import compose_config
from inprocess import call

from nnlab.runs import read_status

QUICK = ["debug=limit", "logger=none", "callbacks=none", "print_config=false"]


def nnlab(args: list[str], outputs: Path, cwd: Path, module: str = "nnlab.train"):
    """`python -m module args` (in this process: tests/inprocess.py)."""
    env = {**os.environ, "NNLAB_OUTPUT_DIR": str(outputs), "PYTHONUNBUFFERED": "1"}
    return call(module, list(args), env=env, cwd=cwd)


def sweep_dirs(outputs: Path) -> list[Path]:
    return sorted(p for p in outputs.glob("multiruns/*/*") if p.is_dir())


@pytest.fixture(scope="module")
def joblib_sweep(tmp_path_factory):
    """Three sine_mlp trials, two at a time; the third has a window longer than the series."""
    tmp = tmp_path_factory.mktemp("joblib")
    outputs = tmp / "outputs"
    proc = nnlab(
        [
            "-m",
            "experiment=sine_mlp",
            "hydra/launcher=joblib",
            "hydra.launcher.n_jobs=2",
            "data.window=2,4,100000",
            *QUICK,
        ],
        outputs,
        tmp,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (sweep,) = sweep_dirs(outputs)
    return sweep


@pytest.mark.slow
def test_joblib_sweep_holds_every_trial_and_survives_a_crash(joblib_sweep):
    trials = sorted(p.parent.parent for p in joblib_sweep.glob("*/.hydra/overrides.yaml"))
    assert [t.name for t in trials] == ["0", "1", "2"]
    for trial in trials[:2]:
        assert read_status(trial)["status"] == "completed"
        assert (trial / "metrics.json").is_file() and (trial / "checkpoints/last.ckpt").is_file()
    failed = read_status(trials[2])
    assert failed["status"] == "failed" and "data.window" in failed["error"]
    assert not (trials[2] / "metrics.json").exists()
    windows = [json.loads((t / "metrics.json").read_text()) for t in trials[:2]]
    assert windows[0]["val/mse"] != windows[1]["val/mse"]  # different trials, different runs


@pytest.mark.slow
def test_report_on_a_real_sweep(joblib_sweep, tmp_path):
    out = tmp_path / "report"
    proc = nnlab([f"sweep={joblib_sweep}", f"out={out}"], tmp_path, tmp_path, module="nnlab.report")
    assert proc.returncode == 0, proc.stderr
    rows = list(csv.DictReader((out / "leaderboard.csv").open()))
    assert [r["status"] for r in rows] == ["completed", "completed", "failed"]
    assert "data.window" in rows[2]["error"] and rows[2]["rank"] == ""
    metrics = {t: json.loads((joblib_sweep / t / "metrics.json").read_text()) for t in ("0", "1")}
    # Best first: the lower val/mse (the optimized metric) ranks 1; values are the real ones.
    best = min(metrics, key=lambda t: metrics[t]["val/mse"])
    assert rows[0]["trial"] == best and rows[0]["rank"] == "1"
    for row in rows[:2]:
        m = metrics[row["trial"]]
        assert float(row["val/mse"]) == pytest.approx(m["val/mse"], rel=1e-5)
        assert float(row["test/mse"]) == pytest.approx(m["test/mse"], rel=1e-5)
        assert int(row["best_epoch"]) == m["best_epoch"]
        assert float(row["wall_time_s"]) == pytest.approx(m["wall_time_s"], rel=1e-5)
    assert {r["data.window"] for r in rows} == {"2", "4", "100000"}
    assert "| 1 |" in (out / "leaderboard.md").read_text()
    assert (out / "val_mse_vs_params.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # TensorBoard HPARAMS: one session per completed trial, with its hyperparameters and metrics.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    for trial, m in metrics.items():
        acc = EventAccumulator(str(out / "tensorboard" / f"trial_{trial}"))
        acc.Reload()
        content = acc.PluginTagToContent("hparams")["_hparams_/session_start_info"]
        start = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info
        window = next(r["data.window"] for r in rows if r["trial"] == trial)
        assert start.hparams["data.window"].number_value == float(window)
        assert acc.Scalars("val/mse")[0].value == pytest.approx(m["val/mse"], rel=1e-5)
    assert not (out / "tensorboard" / "trial_2").exists()  # the failed trial has no metrics


def test_sweeps_started_together_get_their_own_directories(tmp_path):
    """Two sweeps started in the same second resolve different sweep directories."""
    code = (
        "import sys; from pathlib import Path; from conftest import compose_config; "
        "cfg = compose_config(['experiment=sine_mlp'], Path('.')); print(cfg.hydra.sweep.dir)"
    )
    env = {**os.environ, "NNLAB_OUTPUT_DIR": str(tmp_path / "outputs")}
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).parent), env.get("PYTHONPATH", "")])
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code], env=env, cwd=tmp_path, stdout=subprocess.PIPE, text=True
        )  # fmt: skip
        for _ in range(2)
    ]
    dirs = [p.communicate(timeout=300)[0].strip() for p in procs]
    assert all(d.startswith(str(tmp_path / "outputs" / "multiruns")) for d in dirs), dirs
    assert "sine_mlp" in dirs[0] and dirs[0] != dirs[1]


@pytest.mark.slow
def test_optuna_search_resumes_from_its_sqlite_study(tmp_path):
    optuna = pytest.importorskip("optuna")
    outputs = tmp_path / "outputs"
    args = ["experiment=sine_mlp", "hparams_search=sine_mlp_optuna", "hydra.sweeper.n_trials=2"]
    args += QUICK
    for _ in range(2):  # the second command continues the study the first one started
        proc = nnlab(args, outputs, tmp_path)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    db = outputs / "optuna" / "sine_mlp_optuna.db"
    study = optuna.load_study(study_name="sine_mlp_optuna", storage=f"sqlite:///{db}")
    assert len(study.trials) == 4
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)
    assert study.direction == optuna.study.StudyDirection.MINIMIZE
    # Every trial is a run directory of one of the two sweeps, with the value it returned.
    sweeps = sweep_dirs(outputs)
    assert len(sweeps) == 2
    values = sorted(
        json.loads((s / t / "metrics.json").read_text())["val/mse"]
        for s in sweeps
        for t in ("0", "1")
    )
    assert sorted(t.value for t in study.trials) == pytest.approx(values, rel=1e-6)


def test_search_direction_follows_monitor_mode(tmp_path):
    cfg = compose_config(
        ["experiment=sine_mlp", "hparams_search=sine_mlp_optuna", "monitor_mode=max"], tmp_path
    )
    assert cfg.hydra.sweeper.direction == "maximize"
    cfg = compose_config(["experiment=sine_mlp", "hparams_search=sine_mlp_optuna"], tmp_path)
    assert cfg.hydra.sweeper.direction == "minimize" and cfg.optimized_metric == "val/mse"
    assert cfg.hydra.sweeper.storage == f"sqlite:///{Path('outputs').absolute()}/optuna/sine_mlp_optuna.db"  # fmt: skip


@pytest.mark.slow
def test_ddp_cpu_writes_once_and_ranks_see_disjoint_shards(tmp_path):
    outputs = tmp_path / "outputs"
    env = {**os.environ, "NNLAB_OUTPUT_DIR": str(outputs), "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "nnlab.train", "experiment=sine_mlp", "trainer=ddp_cpu"]
    cmd += ["debug=limit", "logger=none", "callbacks=[data_shards]"]
    cmd += ["print_config=false"]
    proc = subprocess.Popen(cmd, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    output, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, output[-4000:]
    (run,) = [p.parent for p in outputs.glob("runs/*/*/.hydra")]
    # Rank 0 (the process we started; Lightning started rank 1) wrote the run's files, once.
    status = read_status(run)
    assert status["status"] == "completed" and status["pid"] == proc.pid
    assert output.count("Run directory: ") == 1
    assert json.loads((run / "metrics.json").read_text())["epochs"] == 2
    assert len(list((run / "checkpoints").glob("epoch*.ckpt"))) == 1
    check_disjoint_shards(run)


def check_disjoint_shards(run: Path) -> None:
    ranks = [json.loads((run / "shards" / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["global_rank"] for r in ranks] == [0, 1]
    for r in ranks:
        assert r["world_size"] == 2 and r["sampler"] in ("MemoryBatcher", "DistributedSampler")
        assert r["mismatched_batches"] == 0  # the batches were the samples the sampler named
    for epoch in ranks[0]["epochs"]:
        a, b = (set(r["epochs"][epoch]) for r in ranks)
        assert a and b and not a & b, f"epoch {epoch}: ranks share samples {sorted(a & b)[:5]}"


def test_ddp_presets_compose(tmp_path):
    cfg = compose_config(["experiment=sine_mlp", "trainer=ddp", "trainer.num_nodes=2"], tmp_path)
    assert cfg.trainer.strategy == "ddp" and cfg.trainer.accelerator == "gpu"
    cfg = compose_config(
        ["experiment=sine_mlp", "trainer=ddp", "trainer.devices=4", "trainer.num_nodes=2"]
        + ["cluster=slurm", "hydra.launcher.gpus_per_node=4", "hydra.launcher.partition=gpu"],
        tmp_path,
    )
    launcher = cfg.hydra.launcher
    assert launcher.tasks_per_node == 4 and launcher.nodes == 2 and launcher.gpus_per_node == 4
    assert launcher._target_.endswith("SlurmLauncher") and launcher.partition == "gpu"
    assert cfg.trainer.plugins[0]._target_ == "nnlab.cluster.SubmititSLURMEnvironment"
    cfg = compose_config(["experiment=sine_mlp", "trainer=ddp_cpu", "cluster=local"], tmp_path)
    assert cfg.hydra.launcher.tasks_per_node == 2
    assert cfg.hydra.launcher._target_.endswith("LocalLauncher")


def test_nnlab_takes_over_submitits_requeue_signal():
    submitit = pytest.importorskip("submitit")
    from lightning.pytorch.trainer.connectors.signal_connector import _SignalConnector

    from nnlab.cluster import SubmititSLURMEnvironment

    # What submitit installs in each job it starts: its own handler for USR2.
    handler = submitit.core.job_environment.SignalHandler.__new__(
        submitit.core.job_environment.SignalHandler
    )
    previous = signal.signal(signal.SIGUSR2, handler.bypass)
    try:
        assert _SignalConnector._has_already_handler(signal.SIGUSR2)  # Lightning would back off
        env = SubmititSLURMEnvironment()
        # nnlab's Preemption callback requeues on USR2 (at a batch boundary); Lightning does not
        assert env.nnlab_requeue_signal == signal.SIGUSR2 and not env.auto_requeue
        assert not _SignalConnector._has_already_handler(signal.SIGUSR2)  # submitit's is gone
        mine = signal.signal(signal.SIGUSR2, lambda *a: None)
        SubmititSLURMEnvironment()  # a handler that is not submitit's is left alone
        assert signal.getsignal(signal.SIGUSR2) is not signal.SIG_DFL
        del mine
    finally:
        signal.signal(signal.SIGUSR2, previous)


def test_a_job_is_requeued_at_most_max_requeues_times(tmp_path, monkeypatch):
    """SLURM counts a job's requeues in SLURM_RESTART_COUNT; at hydra.launcher.max_num_timeout
    the job is not requeued again (a run that never fits its time limit would come back
    forever), and scontrol is not called."""
    from nnlab.cluster import SubmititSLURMEnvironment

    calls = tmp_path / "calls"
    scontrol = tmp_path / "bin" / "scontrol"
    scontrol.parent.mkdir()
    scontrol.write_text(f'#!/bin/sh\necho "$@" >> {calls}\n')
    scontrol.chmod(0o755)
    monkeypatch.setenv("PATH", f"{scontrol.parent}:{os.environ['PATH']}")
    monkeypatch.setenv("SLURM_JOB_ID", "42")
    monkeypatch.delenv("SLURM_ARRAY_JOB_ID", raising=False)
    env = SubmititSLURMEnvironment(requeue_signal="USR2", max_requeues=3)
    monkeypatch.setenv("SLURM_RESTART_COUNT", "2")
    assert env.requeue() is None
    assert calls.read_text().split() == ["requeue", "42"]
    monkeypatch.setenv("SLURM_RESTART_COUNT", "3")
    problem = env.requeue()
    assert "requeued 3 times already" in problem and "max_num_timeout=3" in problem
    assert calls.read_text().split() == ["requeue", "42"]  # not called again
