"""nnlab's sweeper (nnlab/search/) as users run it: real small searches of sine_mlp through
nnlab-train's main (in the test's process; a real process where a test kills it), with the
study read back from its storage."""

from __future__ import annotations

import csv
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

optuna = pytest.importorskip("optuna")

from inprocess import call  # noqa: E402
from optuna.distributions import (  # noqa: E402
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.trial import TrialState  # noqa: E402

from nnlab.errors import UserError  # noqa: E402
from nnlab.search.space import grid, search_space  # noqa: E402

BIN = Path(os.environ.get("NNLAB_JOURNEY_BIN") or Path(sys.executable).parent)
QUICK = ["debug=limit", "logger=none", "callbacks=none", "print_config=false"]
SEARCH = ["experiment=sine_mlp", "hydra/sweeper=nnlab", "optimized_metric=val/mse"]
SEARCH += ["monitor=val/mse"]


def nnlab_train(*args: str, cwd: Path, timeout: float = 900) -> subprocess.CompletedProcess:
    """nnlab-train (in this process: tests/inprocess.py)."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "NNLAB_OUTPUT_DIR")}
    env.update(PYTHONUNBUFFERED="1", NNLAB_OUTPUT_DIR=str(cwd / "outputs"))
    return call("nnlab.train", list(args), env=env, cwd=cwd)


def nnlab_report(sweep: Path, cwd: Path) -> subprocess.CompletedProcess:
    return call(
        "nnlab.report", [f"sweep={sweep}", "tensorboard=false"], env=dict(os.environ), cwd=cwd
    )


def ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, (
        f"exit {proc.returncode}\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}"
    )
    return proc


def the_sweep(cwd: Path) -> Path:
    (sweep,) = sorted(p for p in (cwd / "outputs").glob("multiruns/*/*") if p.is_dir())
    return sweep


def load(sweep: Path):
    info = json.loads((sweep / "search.json").read_text())
    from nnlab.search.storage import open_storage

    return optuna.load_study(study_name=info["study_name"], storage=open_storage(info["storage"]))


def test_search_space_syntax_becomes_optuna_distributions():
    space, fixed = search_space(
        [
            "a=interval(0.1, 0.5)",
            "b=tag(log, interval(1e-4, 1e-2))",
            "c=choice(16, 32)",
            "d=range(2, 16, step=2)",
            "e=tag(log, interval(1, 64))",
            "f=3",
            "g=[10],[32,32]",
        ]
    )
    assert space["a"] == FloatDistribution(0.1, 0.5)
    assert space["b"] == FloatDistribution(1e-4, 1e-2, log=True)
    assert space["c"] == CategoricalDistribution([16, 32])
    assert space["d"] == IntDistribution(2, 14, step=2)  # Hydra's range: 16 excluded
    assert space["e"] == FloatDistribution(1.0, 64.0, log=True)  # Hydra: intervals are floats
    assert space["g"] == CategoricalDistribution(["[10]", "[32,32]"])
    assert fixed == {"f": "3"}
    assert grid({"c": space["c"], "d": space["d"]}) == {
        "c": [16, 32],
        "d": [2, 4, 6, 8, 10, 12, 14],
    }
    with pytest.raises(UserError, match="hydra.sweeper.params.a: the grid sampler"):
        grid({"a": space["a"]})
    with pytest.raises(UserError, match="^x: .*a log interval needs 0 < a < b"):
        search_space(["x=tag(log, interval(0, 1))"])


@pytest.mark.slow
def test_an_asynchronous_pruned_search(tmp_path):
    """Two workers, trials of unequal length (trainer.max_epochs in the space) and the median
    pruner: the next trial starts as soon as one ends while the other still runs; every trial
    reported its val/mse after each epoch it trained; pruned trials stopped early, kept their
    checkpoints and metrics, and say `pruned` in status.json and in the study."""
    args = [*SEARCH, "hydra/sweeper/sampler=grid", "hydra.sweeper.n_trials=6"]
    args += ["hydra.sweeper.n_jobs=2", "hydra.sweeper.pruner=median"]
    args += ["hydra.sweeper.pruner_args={n_startup_trials:1,n_warmup_steps:1}"]
    args += ["trainer.max_epochs=choice(1,6)", "task.optimizer.lr=choice(1e-2,1e-4,1e-6)"]
    proc = ok(nnlab_train("-m", *args, *QUICK, cwd=tmp_path))
    sweep = the_sweep(tmp_path)
    study = load(sweep)
    trials = study.trials
    assert len(trials) == 6
    assert {t.state for t in trials} <= {TrialState.COMPLETE, TrialState.PRUNED}
    # asynchronous: some trial c started after a finished but while b (started before c) ran
    spans = [(t.datetime_start, t.datetime_complete) for t in trials]
    assert any(a[1] <= c[0] < b[1] and b[0] < c[0] for a in spans for b in spans for c in spans), (
        spans
    )
    for s, _ in spans:  # never more than n_jobs at once
        assert sum(1 for (s2, e2) in spans if s2 <= s < e2) <= 2
    for t in trials:
        run = Path(t.user_attrs["run_dir"])
        status = json.loads((run / "status.json").read_text())
        metrics = json.loads((run / "metrics.json").read_text())
        epochs = metrics["epochs"]  # Lightning's current_epoch after fitting: epochs trained
        assert sorted(t.intermediate_values) == list(range(epochs))
        # the best epoch's report is the best checkpoint's val/mse, which metrics.json holds
        best = min(t.intermediate_values.values())
        assert best == pytest.approx(metrics["val/mse"], rel=1e-4)
        assert list((run / "checkpoints").glob("epoch*.ckpt"))
        if t.state == TrialState.PRUNED:
            assert status["status"] == "pruned"
            # stopped after the validation that pruned it (which may be its last epoch's)
            assert metrics["pruned_at_epoch"] == epochs - 1
            assert epochs <= int(t.params["trainer.max_epochs"])
        else:
            assert status["status"] == "completed"
            assert t.value == pytest.approx(metrics["val/mse"], rel=1e-6)
    # which trials the median pruner stops depends on which finished first (the workers' timing);
    # test_a_pruned_trial_stops_at_once prunes deterministically
    if any(t.state == TrialState.PRUNED for t in trials):
        assert "pruned after epoch" in proc.stdout + proc.stderr
    # nnlab-report: parameter importances of both swept parameters, and the plots
    ok(nnlab_report(sweep, cwd=tmp_path))
    with open(sweep / "report" / "importance.csv", newline="") as f:
        importance = {r["parameter"]: float(r["importance"]) for r in csv.DictReader(f)}
    # (the parameters that vary among completed trials; the three 1-epoch trials differ in lr)
    assert "task.optimizer.lr" in importance
    assert set(importance) <= {"trainer.max_epochs", "task.optimizer.lr"}
    assert sum(importance.values()) == pytest.approx(1.0, abs=1e-3)
    for plot in ("history.png", "importance.png", "parallel_coordinates.png"):
        assert (sweep / "report" / plot).stat().st_size > 1000, plot


def test_a_pruned_trial_stops_at_once_and_the_search_exits_0(tmp_path):
    """The threshold pruner prunes a learning rate too small to learn (its val/mse stays ~0.24)
    at its first check, after the third epoch: that trial trained 3 of 6 epochs, saved its checkpoints and metrics, is
    `pruned` in status.json and PRUNED in the study; the command exits 0."""
    args = [*SEARCH, "hydra/sweeper/sampler=grid", "hydra.sweeper.pruner=threshold"]
    args += ["hydra.sweeper.pruner_args={upper:0.15,n_warmup_steps:2}", "trainer.max_epochs=6"]
    args += ["task.optimizer.lr=choice(1e-2,1e-9)"]
    ok(nnlab_train("-m", *args, *QUICK, cwd=tmp_path))
    study = load(the_sweep(tmp_path))
    by_lr = {t.params["task.optimizer.lr"]: t for t in study.trials}
    bad, good = by_lr[1e-9], by_lr[1e-2]
    assert bad.state == TrialState.PRUNED and good.state == TrialState.COMPLETE
    run = Path(bad.user_attrs["run_dir"])
    assert json.loads((run / "status.json").read_text())["status"] == "pruned"
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["pruned_at_epoch"] == 2 and metrics["epochs"] == 3
    assert (run / "checkpoints" / "last.ckpt").is_file()
    assert sorted(bad.intermediate_values) == [0, 1, 2] and bad.intermediate_values[2] > 0.15
    good_metrics = json.loads((Path(good.user_attrs["run_dir"]) / "metrics.json").read_text())
    assert good_metrics["epochs"] == 6 and "pruned_at_epoch" not in good_metrics

    # nnlab-report: the study's trials, and the best trial's command, which trains it again
    sweep = the_sweep(tmp_path)
    ok(nnlab_report(sweep, cwd=tmp_path))
    with open(sweep / "report" / "trials.csv", newline="") as f:
        rows = {int(r["number"]): r for r in csv.DictReader(f)}
    assert {n: r["state"] for n, r in rows.items()} == {
        bad.number: "pruned",
        good.number: "complete",
    }
    assert rows[bad.number]["epochs"] == "3" and rows[good.number]["epochs"] == "6"
    assert float(rows[good.number]["val/mse"]) == pytest.approx(good.value, rel=1e-6)
    assert float(rows[bad.number]["val/mse"]) == pytest.approx(bad.intermediate_values[2])
    assert (sweep / "report" / "history.png").stat().st_size > 0
    best = (sweep / "report" / "best.md").read_text()
    (rerun,) = [line for line in best.splitlines() if line.startswith("nnlab-train ")]
    assert "task.optimizer.lr=0.01" in rerun and "-m" not in shlex.split(rerun)
    (tmp_path / "rerun").mkdir()
    again = ok(nnlab_train(*shlex.split(rerun)[1:], cwd=tmp_path / "rerun"))
    (run,) = (tmp_path / "rerun" / "outputs").glob("runs/*/*")
    assert json.loads((run / "metrics.json").read_text())["val/mse"] == pytest.approx(
        good.value, rel=1e-5
    ), again.stdout[-2000:]


def test_a_journal_study_continues_with_the_same_command(tmp_path):
    journal = tmp_path / "studies" / "sine.journal"
    args = [*SEARCH, f"hydra.sweeper.storage=journal:{journal}", "hydra.sweeper.study_name=js"]
    args += ["hydra.sweeper.n_trials=2", "task.optimizer.lr=tag(log,interval(1e-3,1e-2))"]
    for _ in range(2):
        ok(nnlab_train("-m", *args, *QUICK, cwd=tmp_path))
    from nnlab.search.storage import open_storage

    study = optuna.load_study(study_name="js", storage=open_storage(f"journal:{journal}"))
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 4
    assert all(1e-3 <= t.params["task.optimizer.lr"] <= 1e-2 for t in study.trials)


def test_several_objectives(tmp_path):
    args = ["experiment=sine_mlp", "hydra/sweeper=nnlab", "optimized_metric=[val/mse,test/mae]"]
    args += ["hydra.sweeper.direction=[minimize,minimize]", "hydra.sweeper.n_trials=3"]
    args += ["task.optimizer.lr=tag(log,interval(1e-3,1e-2))"]
    ok(nnlab_train("-m", *args, *QUICK, cwd=tmp_path))
    study = load(the_sweep(tmp_path))
    assert len(study.directions) == 2 and len(study.trials) == 3
    for t in study.trials:
        metrics = json.loads((Path(t.user_attrs["run_dir"]) / "metrics.json").read_text())
        assert t.values == pytest.approx([metrics["val/mse"], metrics["test/mae"]], rel=1e-6)
    front = sorted(t.number for t in study.best_trials)
    # no trial of the front is beaten on both metrics by another trial
    for t in study.best_trials:
        assert not any(
            all(o <= v for o, v in zip(u.values, t.values, strict=True)) and u.values != t.values
            for u in study.trials
        )
    sweep = the_sweep(tmp_path)
    ok(nnlab_report(sweep, cwd=tmp_path))
    with open(sweep / "report" / "pareto_front.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert sorted(int(r["number"]) for r in rows) == front
    assert all(r["command"].startswith("nnlab-train ") for r in rows)
    assert "Pareto front of val/mse, test/mae" in (sweep / "report" / "best.md").read_text()


@pytest.mark.parametrize(
    "setting,message",
    [
        (
            "hydra.sweeper.pruner=bogus",
            "error: hydra.sweeper.pruner: got 'bogus'; expected one of 'none', 'median', "
            "'percentile', 'successive_halving', 'hyperband' or 'threshold'; set "
            "hydra.sweeper.pruner=... to such a value",
        ),
        (
            "hydra.sweeper.pruner_args={warmup:1}",
            "error: hydra.sweeper.pruner_args.warmup: not a setting of the median pruner; it has "
            "interval_steps, n_min_trials, n_startup_trials, n_warmup_steps",
        ),
        (
            "hydra.sweeper.direction=[minimize,minimize]",
            "error: hydra.sweeper.direction: 2 directions for 1 metrics (optimized_metric: "
            "val/mse); give one direction per metric",
        ),
        (
            "hydra.sweeper.n_jobs=0",
            "error: hydra.sweeper.n_jobs: got 0; expected a number >= 1; set "
            "hydra.sweeper.n_jobs=... to such a value",
        ),
    ],
)
def test_bad_search_settings_are_one_error_line(tmp_path, setting, message):
    args = [*SEARCH, "hydra.sweeper.pruner=median", "task.optimizer.lr=interval(1e-3,1e-2)"]
    proc = nnlab_train("-m", *args, setting, *QUICK, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-1] == message
    assert not list((tmp_path / "outputs").glob("multiruns/*/*/0"))  # no trial started


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["basic", "joblib"])
def test_a_grid_sweep_killed_9_resumes_with_the_same_command(tmp_path, launcher):
    """`kill -9` of the sweeping process while its second trial trains; the same command (with
    the same hydra.sweep.dir) keeps the finished trial untouched, runs the unfinished ones, and
    every trial completes."""
    sweep = tmp_path / "sweep"
    # epochs enough that the kill, within 0.2 s of trial 1's start, lands before it ends
    args = ["-m", "experiment=sine_mlp", "seed=1,2,3", "trainer.max_epochs=40"]
    args += [f"hydra.sweep.dir={sweep}", *QUICK]
    if launcher == "joblib":  # one worker: trial 1 waits for trial 0
        args += ["hydra/launcher=joblib", "hydra.launcher.n_jobs=1"]
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "NNLAB_OUTPUT_DIR")}
    env.update(
        PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1", NNLAB_OUTPUT_DIR=str(tmp_path / "outputs")
    )
    proc = subprocess.Popen(
        [str(BIN / "nnlab-train"), *args],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # its joblib workers too go with the kill below
    )
    deadline = time.monotonic() + 600
    while not (sweep / "1" / "status.json").is_file():
        assert proc.poll() is None and time.monotonic() < deadline, "the sweep ended early"
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert (sweep / "0" / "metrics.json").is_file() and not (sweep / "2").exists()
    first = (sweep / "0" / "metrics.json").read_bytes()
    again = ok(nnlab_train(*args, cwd=tmp_path))
    log = again.stdout + again.stderr
    assert log.count("completed before; kept") == 1
    assert (sweep / "0" / "metrics.json").read_bytes() == first  # not trained again
    for job in ("0", "1", "2"):
        status = json.loads((sweep / job / "status.json").read_text())
        assert status["status"] == "completed", (job, status)
        assert json.loads((sweep / job / "metrics.json").read_text())["epochs"] == 40
    assert json.loads((sweep / "1" / "status.json").read_text()).get("resumed", 0) >= 1


@pytest.mark.slow
def test_a_pruned_member_of_a_packed_group_leaves_it(tmp_path):
    """Three learning rates trained as one stacked model (hydra/launcher=packed); the threshold
    pruner stops the one too small to learn after its third epoch. It is `pruned` in its
    status.json and in the study, with its metrics and checkpoints; the others go on unchanged:
    every trial reported the same values as in the same search without a pruner, and the
    completed ones end with the same metrics."""
    base = [*SEARCH, "hydra/sweeper/sampler=grid", "hydra/launcher=packed"]
    base += ["hydra.sweeper.n_jobs=3", "trainer.max_epochs=6"]
    base += ["task.optimizer.lr=choice(1e-2,3e-3,1e-9)", *QUICK]
    pruner = [
        "hydra.sweeper.pruner=threshold",
        "hydra.sweeper.pruner_args={upper:0.15,n_warmup_steps:2}",
    ]
    runs = {}
    for name, extra in (("pruned", pruner), ("unpruned", [])):
        (tmp_path / name).mkdir()
        proc = ok(nnlab_train("-m", *base, *extra, cwd=tmp_path / name))
        assert "Training 3 trials as one stacked model" in proc.stdout + proc.stderr
        study = load(the_sweep(tmp_path / name))
        runs[name] = {t.params["task.optimizer.lr"]: t for t in study.trials}
    assert all(t.state == TrialState.COMPLETE for t in runs["unpruned"].values())
    pruned = runs["pruned"]
    assert pruned[1e-9].state == TrialState.PRUNED and pruned[1e-2].state == TrialState.COMPLETE
    for lr, t in pruned.items():
        same = runs["unpruned"][lr]
        steps = sorted(t.intermediate_values)
        assert steps == list(range(len(steps)))
        for step in steps:
            assert t.intermediate_values[step] == pytest.approx(
                same.intermediate_values[step], rel=1e-6
            )
        run = Path(t.user_attrs["run_dir"])
        metrics = json.loads((run / "metrics.json").read_text())
        status = json.loads((run / "status.json").read_text())["status"]
        assert list((run / "checkpoints").glob("epoch*.ckpt"))
        if t.state == TrialState.PRUNED:
            assert status == "pruned" and metrics["epochs"] == len(steps) < 6
            assert metrics["pruned_at_epoch"] == steps[-1]
        else:
            assert status == "completed" and steps == list(range(6))
            want = json.loads((Path(same.user_attrs["run_dir"]) / "metrics.json").read_text())
            for key in ("val/mse", "test/mse", "best_epoch", "global_step"):
                assert metrics[key] == pytest.approx(want[key], rel=1e-6), key


@pytest.mark.slow
def test_a_search_killed_9_continues_in_its_sweep_directory(tmp_path):
    """A search with its study in the sweep directory (the default storage), killed while its
    second trial trains: the same command with that hydra.sweep.dir continues the study. The
    killed trial is told FAIL, new trials get new job numbers, and the finished trial's
    directory is left as it was."""
    sweep = tmp_path / "sweep"
    args = ["-m", *SEARCH, "hydra.sweeper.n_trials=2", "trainer.max_epochs=3"]
    args += ["task.optimizer.lr=tag(log,interval(1e-3,1e-2))", f"hydra.sweep.dir={sweep}", *QUICK]
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "NNLAB_OUTPUT_DIR")}
    env.update(
        PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1", NNLAB_OUTPUT_DIR=str(tmp_path / "outputs")
    )
    proc = subprocess.Popen(
        [str(BIN / "nnlab-train"), *args],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 600
    while not (sweep / "1" / "status.json").is_file():
        assert proc.poll() is None and time.monotonic() < deadline, "the search ended early"
        time.sleep(0.2)
    proc.kill()
    proc.wait()
    first = (sweep / "0" / "metrics.json").read_bytes()
    ok(nnlab_train(*args, cwd=tmp_path))
    study = load(sweep)
    assert [t.state for t in study.trials] == [
        TrialState.COMPLETE,
        TrialState.FAIL,
        TrialState.COMPLETE,
        TrialState.COMPLETE,
    ]
    assert [t.user_attrs["job"] for t in study.trials] == [0, 1, 2, 3]
    assert (sweep / "0" / "metrics.json").read_bytes() == first
    assert not (sweep / "1" / "metrics.json").exists()
    for job in ("2", "3"):
        assert json.loads((sweep / job / "status.json").read_text())["status"] == "completed"


@pytest.mark.slow
def test_trials_as_submitit_jobs_report_to_the_study_themselves(tmp_path):
    """cluster=local: each trial is a submitit job, a process of its own as on SLURM, two at a
    time. The trials report to the study's journal file from their own processes, and the
    pruner stops the one that does not learn."""
    journal = tmp_path / "study.journal"
    args = [*SEARCH, "cluster=local", "hydra/sweeper/sampler=grid", "hydra.sweeper.n_jobs=2"]
    args += [f"hydra.sweeper.storage=journal:{journal}", "hydra.sweeper.pruner=threshold"]
    args += ["hydra.sweeper.pruner_args={upper:0.15,n_warmup_steps:2}", "trainer.max_epochs=4"]
    args += ["task.optimizer.lr=choice(1e-2,1e-9)"]
    ok(nnlab_train("-m", *args, *QUICK, cwd=tmp_path))
    sweep = the_sweep(tmp_path)
    assert list((sweep / ".submitit").iterdir())  # submitit's job folders
    study = load(sweep)
    by_lr = {t.params["task.optimizer.lr"]: t for t in study.trials}
    assert by_lr[1e-9].state == TrialState.PRUNED and by_lr[1e-2].state == TrialState.COMPLETE
    assert sorted(by_lr[1e-9].intermediate_values) == [0, 1, 2]
    assert sorted(by_lr[1e-2].intermediate_values) == [0, 1, 2, 3]
    pids = set()
    for t in study.trials:
        status = json.loads((Path(t.user_attrs["run_dir"]) / "status.json").read_text())
        assert status["status"] == ("pruned" if t.state == TrialState.PRUNED else "completed")
        pids.add(status["pid"])
    assert len(pids) == 2  # each trial in a process of its own


@pytest.mark.slow
def test_batch_synchronous_workers_wait_for_the_batch(tmp_path):
    """asynchronous: false (Hydra's behaviour, the benchmark's baseline): batches of n_jobs
    trials, each batch asked for when the whole previous one has been told."""
    args = [*SEARCH, "hydra/sweeper/sampler=grid", "hydra.sweeper.n_jobs=2"]
    args += ["hydra.sweeper.asynchronous=false", "trainer.max_epochs=choice(1,4)"]
    args += ["task.optimizer.lr=choice(1e-2,3e-3)"]
    ok(nnlab_train("-m", *args, *QUICK, cwd=tmp_path))
    trials = sorted(load(the_sweep(tmp_path)).trials, key=lambda t: t.datetime_start)
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 4
    first, second = trials[:2], trials[2:]
    assert max(t.datetime_start for t in first) < min(t.datetime_complete for t in first)
    assert min(t.datetime_start for t in second) >= max(t.datetime_complete for t in first)
