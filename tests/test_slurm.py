"""Against a real SLURM cluster (scripts/slurm_cluster.sh start): sweeps submitted with submitit,
a cancelled job, and DDP under srun. Skipped when no cluster answers."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_sweeps import QUICK, check_disjoint_shards, sweep_dirs

from nnlab.runs import read_status


def _cluster_up() -> str | None:
    if not shutil.which("sinfo"):
        return "no sinfo: SLURM is not installed (see scripts/slurm_cluster.sh)"
    try:
        out = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=20)  # fmt: skip
    except (OSError, subprocess.SubprocessError) as exc:
        return f"sinfo failed: {exc}"
    if out.returncode != 0 or not {"idle", "mixed", "allocated"} & set(out.stdout.split()):
        return f"no SLURM node up (sinfo: {out.stdout.strip() or out.stderr.strip()}); start one with scripts/slurm_cluster.sh start"  # fmt: skip
    return None


_why = _cluster_up()
pytestmark = [pytest.mark.slurm, pytest.mark.skipif(_why is not None, reason=_why or "")]


def env_for(outputs: Path) -> dict[str, str]:
    return {**os.environ, "NNLAB_OUTPUT_DIR": str(outputs), "PYTHONUNBUFFERED": "1"}


def sacct_state(job_id: str) -> str:
    out = subprocess.run(["sacct", "-n", "-X", "-P", "-o", "State", "-j", job_id], capture_output=True, text=True)  # fmt: skip
    return out.stdout.split()[0] if out.stdout.split() else ""


def test_two_trial_sweep_on_slurm(tmp_path):
    outputs = tmp_path / "outputs"
    cmd = [sys.executable, "-m", "nnlab.train", "-m", "cluster=slurm", "experiment=sine_mlp"]
    cmd += ["seed=1,2", "hydra.launcher.mem_gb=1", *QUICK]
    proc = subprocess.run(cmd, env=env_for(outputs), cwd=tmp_path, capture_output=True, text=True, timeout=900)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (sweep,) = sweep_dirs(outputs)
    assert list(sweep.glob(".submitit/*"))  # submitit's job files sit beside the trials
    for trial in ("0", "1"):
        status = read_status(sweep / trial)
        assert status["status"] == "completed"
        for _ in range(60):  # the accounting daemon records the job's end a little later
            if sacct_state(status["slurm_job_id"]) != "RUNNING":
                break
            time.sleep(1)
        assert sacct_state(status["slurm_job_id"]) == "COMPLETED"
        metrics = json.loads((sweep / trial / "metrics.json").read_text())
        assert metrics["epochs"] == 2 and metrics["val/mse"] > 0


def test_cancelled_job_is_reported_failed(tmp_path):
    outputs = tmp_path / "outputs"
    cmd = [sys.executable, "-m", "nnlab.train", "-m", "cluster=slurm", "experiment=sine_mlp"]
    cmd += ["seed=1", "hydra.launcher.mem_gb=1", *QUICK, "trainer.max_epochs=100000"]
    proc = subprocess.Popen(cmd, env=env_for(outputs), cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    try:
        status_path = None
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:  # wait until the trial runs on the node
            found = list(outputs.glob("multiruns/*/*/0/status.json"))
            if found and read_status(found[0].parent).get("slurm_job_id"):
                status_path = found[0]
                break
            time.sleep(1)
        assert status_path is not None, "the job never started"
        job = read_status(status_path.parent)["slurm_job_id"]
        subprocess.run(["scancel", job], check=True)
        output, _ = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0  # the sweep says one of its jobs did not complete
    assert "UncompletedJobError" in output or "CANCELLED" in output
    for _ in range(30):  # sacct learns of the cancellation within seconds
        if sacct_state(job).startswith("CANCELLED"):
            break
        time.sleep(1)
    assert sacct_state(job).startswith("CANCELLED")
    run = status_path.parent
    assert not (run / "metrics.json").exists()
    report = subprocess.run(
        [sys.executable, "-m", "nnlab.report", f"sweep={run.parent}", "tensorboard=false"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert report.returncode == 0, report.stderr
    (row,) = csv.DictReader((run.parent / "report" / "leaderboard.csv").open())
    assert row["status"] == "failed", row


def test_ddp_under_srun_ranks_see_disjoint_data(tmp_path):
    run = tmp_path / "ddp"
    cmd = ["srun", "-N1", "--ntasks-per-node=2", "--cpus-per-task=1", "--mem=2G"]
    cmd += [sys.executable, "-m", "nnlab.train", "experiment=sine_mlp", "trainer=ddp_cpu"]
    cmd += ["debug=limit", "logger=none", "callbacks=[data_shards]"]
    # Every task resolves the run directory on its own: give it, so both ranks share one.
    cmd += ["print_config=false", f"hydra.run.dir={run}"]
    proc = subprocess.run(cmd, env=env_for(tmp_path / "outputs"), cwd=tmp_path, capture_output=True, text=True, timeout=900)  # fmt: skip
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-4000:]
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in output
    status = read_status(run)
    assert status["status"] == "completed" and status["slurm_job_id"]
    assert output.count("Run directory: ") == 1  # rank 0 alone reports and writes
    assert json.loads((run / "metrics.json").read_text())["epochs"] == 2
    check_disjoint_shards(run)


def _elapsed_s(job: str) -> int:
    """A running job's elapsed time (squeue's [days-][hours:]minutes:seconds)."""
    text = subprocess.run(["squeue", "-h", "-j", job, "-o", "%M"], capture_output=True, text=True).stdout.strip()  # fmt: skip
    days, _, clock = text.rpartition("-")
    seconds = 0
    for part in clock.split(":"):
        seconds = seconds * 60 + int(part)
    return seconds + int(days or 0) * 86400


def test_a_job_signalled_before_its_time_limit_is_requeued_and_continues(tmp_path):
    """SLURM's own time-limit signal (sbatch --signal, 120 s before the limit): once the job is
    training, the test lowers its time limit so that SLURM signals it at its next check (within
    about 30 s; the job trains for over a minute) and kills it a minute or more later. nnlab
    saves last.ckpt at a batch boundary and requeues the job; the requeued job (its limit raised
    again when its log says it was requeued, so it is signalled once) continues in the same run
    directory (resume counted, wall time added up), and the final metrics equal those of the
    same training without interruption."""
    recipe = ["experiment=sine_lstm", "trainer.max_epochs=2000", "checkpoint.every_n_train_steps=0"]
    recipe += ["logger=none", "callbacks=none", "print_config=false", "trainer.enable_progress_bar=false"]  # fmt: skip
    outputs = tmp_path / "outputs"
    cmd = [sys.executable, "-m", "nnlab.train", "-m", "cluster=slurm", *recipe]
    cmd += ["hydra.launcher.timeout_min=30", "hydra.launcher.signal_delay_s=120"]
    cmd += ["hydra.launcher.mem_gb=1", "hydra.launcher.cpus_per_task=1"]
    # one thread each: the job and the reference run side by side (two threads each on two
    # cores made them ~15x slower)
    env = {**env_for(outputs), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    # The same training, uninterrupted, alongside.
    ref_log = tmp_path / "ref.log"
    with ref_log.open("w") as out:
        env = {**env_for(tmp_path / "ref"), "OMP_NUM_THREADS": "1"}
        ref = subprocess.Popen([sys.executable, "-m", "nnlab.train", *recipe], env=env, cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT)  # fmt: skip
    limited = raised = False
    deadline = time.monotonic() + 1500
    while proc.poll() is None and time.monotonic() < deadline:
        logs = list(outputs.glob("multiruns/*/*/0/train.log"))
        if not limited and logs and "Training loop:" in logs[0].read_text():
            # the handler is in place (its callback's setup logs this): the limit in whole
            # minutes, 60-120 s from now, within the 120 s signal delay
            job = read_status(logs[0].parent)["slurm_job_id"]
            minutes = _elapsed_s(job) // 60 + 2
            subprocess.run(["scontrol", "update", f"JobId={job}", f"TimeLimit={minutes}"], check=True)  # fmt: skip
            limited = True
        elif limited and not raised and logs and "SLURM job requeued" in logs[0].read_text():
            # its limit back up whether or not SLURM holds it (below): signalled once
            subprocess.run(["scontrol", "update", f"JobId={job}", "TimeLimit=30"], check=True)  # fmt: skip
            raised = True
        # SLURM holds a requeued job back for minutes (reason BeginTime): start it at once
        pending = subprocess.run(["squeue", "-h", "-t", "PD", "-o", "%i %r"], capture_output=True, text=True).stdout  # fmt: skip
        for job, reason in (line.split() for line in pending.splitlines() if line.strip()):
            if reason == "BeginTime":
                subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], capture_output=True)  # fmt: skip
        time.sleep(1)
    output, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, output[-4000:]
    assert limited and raised, "the job never logged its training loop or its requeue"
    assert ref.wait(timeout=900) == 0, ref_log.read_text()[-3000:]
    (ref_run,) = (tmp_path / "ref").glob("runs/*/*/metrics.json")
    (sweep,) = sweep_dirs(outputs)
    trial = sweep / "0"
    status = read_status(trial)
    assert status["status"] == "completed", status
    assert status.get("resumed", 0) >= 1, status  # signalled and requeued at least once
    log = (trial / "train.log").read_text()
    assert "SLURM job requeued" in log and "continuing from" in log
    metrics = json.loads((trial / "metrics.json").read_text())
    expected = json.loads(ref_run.read_text())
    for key in ("val/mse", "test/mse", "epochs", "global_step", "best_epoch"):
        assert metrics[key] == expected[key], key
    assert metrics["wall_time_s"] >= 20  # the sessions' times add up


def test_a_pruned_search_on_slurm(tmp_path):
    """nnlab's sweeper with its trials as SLURM jobs: each job reports to the study's journal
    file itself, the pruner stops the trial that does not learn, asynchronously two at a time;
    the pruned job ends `pruned`, its SLURM job COMPLETED, and the command exits 0."""
    pytest.importorskip("optuna")
    from optuna.trial import TrialState

    from nnlab.search.storage import open_storage

    outputs, journal = tmp_path / "outputs", tmp_path / "study.journal"
    cmd = [sys.executable, "-m", "nnlab.train", "-m", "cluster=slurm", "experiment=sine_mlp"]
    cmd += ["hydra/sweeper=nnlab", "hydra/sweeper/sampler=grid", "hydra.sweeper.n_jobs=2"]
    cmd += ["optimized_metric=val/mse", "monitor=val/mse", f"hydra.sweeper.storage=journal:{journal}"]  # fmt: skip
    cmd += ["hydra.sweeper.pruner=threshold", "hydra.sweeper.pruner_args={upper:0.15,n_warmup_steps:2}"]  # fmt: skip
    cmd += ["trainer.max_epochs=4", "task.optimizer.lr=choice(1e-2,1e-9)", "hydra.launcher.mem_gb=1"]  # fmt: skip
    cmd += ["debug=limit", "logger=none", "callbacks=none", "print_config=false"]
    proc = subprocess.run(cmd, env=env_for(outputs), cwd=tmp_path, capture_output=True, text=True, timeout=900)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (sweep,) = sweep_dirs(outputs)
    import optuna

    info = json.loads((sweep / "search.json").read_text())
    study = optuna.load_study(study_name=info["study_name"], storage=open_storage(info["storage"]))
    by_lr = {t.params["task.optimizer.lr"]: t for t in study.trials}
    assert by_lr[1e-9].state == TrialState.PRUNED and by_lr[1e-2].state == TrialState.COMPLETE
    assert sorted(by_lr[1e-9].intermediate_values) == [0, 1, 2]
    for t in study.trials:
        status = read_status(Path(t.user_attrs["run_dir"]))
        assert status["status"] == ("pruned" if t.state == TrialState.PRUNED else "completed")
        assert status["slurm_job_id"]
