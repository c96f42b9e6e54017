"""A user's journey through the installed commands, each one a subprocess in a scratch directory:
train -> eval -> predict -> export -> resume -> sweep -> report -> Optuna search with a crashing
trial -> DDP sweep, asserting exit codes, the files left behind and the numbers in them.

The commands come from NNLAB_JOURNEY_BIN when it is set (`make test` sets it to a virtual
environment with nnlab installed from its wheel, not editable, so that a wheel missing its configs
fails here), else from the environment running the tests.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

# a user's whole journey, command after command, each a process of its own: minutes
pytestmark = pytest.mark.slow
BIN = Path(os.environ.get("NNLAB_JOURNEY_BIN") or Path(sys.executable).parent)
QUICK = ["logger=none", "print_config=false", "callbacks=none"]
# sine_mlp for 8 epochs: the one-step MSE on the (standardised) series is well below 0.2 then;
# predicting the mean would give ~1.
SINE = ["experiment=sine_mlp", "trainer.max_epochs=8"]


def command(name: str, *args: str, cwd: Path, timeout: float = 600, **kw):
    """Run an installed console command as a user would (no PYTHONPATH, no source tree)."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "NNLAB_OUTPUT_DIR")}
    env.update(PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1", NNLAB_OUTPUT_DIR=str(cwd / "outputs"))
    env.update(kw.pop("env", {}))
    return subprocess.run(
        [str(BIN / name), *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=timeout,
        **kw,
    )


def ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, (
        f"exit {proc.returncode}\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}"
    )
    return proc


def runs(root: Path) -> list[Path]:
    return sorted(p.parent for p in (root / "outputs").glob("runs/*/*/config.resolved.yaml"))


def the_completed_run(root: Path) -> Path:
    """The one run that finished (the user-error tests leave failed ones beside it)."""
    (run,) = [r for r in runs(root) if (r / "metrics.json").is_file()]
    return run


def trials(root: Path) -> list[Path]:
    (sweep,) = sorted(p for p in (root / "outputs").glob("multiruns/*/*") if p.is_dir())
    return sorted((p for p in sweep.iterdir() if p.name.isdigit()), key=lambda p: int(p.name))


def status(run: Path) -> dict:
    return json.loads((run / "status.json").read_text())


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """One finished sine_mlp run in a scratch directory."""
    root = tmp_path_factory.mktemp("journey")
    ok(command("nnlab-train", *SINE, *QUICK, cwd=root))
    return root


def test_the_commands_come_from_an_installed_nnlab(trained):
    """The commands run nnlab from where they are installed, configs included; not from this
    checkout (a wheel without its configs fails here)."""
    python = BIN / "python"
    code = "import nnlab; print(nnlab.__file__); print(nnlab.CONF_DIR)"
    proc = ok(
        subprocess.run([str(python), "-c", code], capture_output=True, text=True, cwd=trained)
    )
    module, conf = proc.stdout.split()
    assert (Path(conf) / "train.yaml").is_file()
    if os.environ.get("NNLAB_JOURNEY_BIN"):
        assert "site-packages" in module, module


def test_train_then_eval_predict_export(trained):
    run = the_completed_run(trained)
    metrics = json.loads((run / "metrics.json").read_text())
    assert status(run)["status"] == "completed"
    assert metrics["test/mse"] < 0.2 and metrics["epochs"] == 8
    assert (run / "checkpoints" / "last.ckpt").is_file()

    ok(command("nnlab-eval", f"run={run}", cwd=trained))
    evaluated = json.loads((run / "eval_metrics.json").read_text())
    assert evaluated["test/mse"] == pytest.approx(metrics["test/mse"], rel=1e-6)

    out = trained / "predicted"
    ok(command("nnlab-predict", f"run={run}", "steps=12", f"out={out}", cwd=trained))
    with open(out / "predictions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert sum(r["kind"] == "forecast" for r in rows) == 12
    one_step = [r for r in rows if r["kind"] == "one_step" and r["target"]]
    errors = [(float(r["prediction"]) - float(r["target"])) ** 2 for r in one_step]
    assert len(one_step) > 50 and sum(errors) / len(errors) < 0.5  # in the series' own units

    ok(command("nnlab-export", f"run={run}", "format=torchscript", cwd=trained))
    record = json.loads((run / "export" / "export.json").read_text())
    assert (run / "export" / "model.torchscript.pt").is_file()
    assert record["max_abs_diff"] <= 1e-5


def test_resume_continues_the_same_run(trained):
    run = the_completed_run(trained)
    before = status(run)
    ok(command("nnlab-train", f"resume={run}", "trainer.max_epochs=10", cwd=trained))
    after = status(run)
    metrics = json.loads((run / "metrics.json").read_text())
    assert runs(trained) == [run]  # no new run directory
    assert after["status"] == "completed" and after["resumed"] == 1
    assert after["started"] == before["started"] and metrics["epochs"] == 10
    assert after["wall_time_s"] > before["wall_time_s"]  # the sessions add up


def test_user_errors_exit_2_with_one_line(trained):
    for name, args in [
        ("nnlab-eval", ["run=does/not/exist"]),
        ("nnlab-predict", ["run=does/not/exist"]),
        ("nnlab-export", ["nonsense=1"]),
        ("nnlab-train", ["trainer.max_epochs=-5"]),
        ("nnlab-train", ["trainer=ddp_cpu", "trainer.strategy=ddp_spawn"]),
        ("nnlab-train", ["trainer.no_such_key=1"]),  # Hydra's own errors too
        ("nnlab-train", ["experiment=no_such_preset"]),
        ("nnlab-report", ["sweep=does/not/exist"]),
    ]:
        proc = command(name, *args, cwd=trained)
        assert proc.returncode == 2, (name, args, proc.stderr[-2000:])
        last = proc.stderr.strip().splitlines()[-1]
        assert last.startswith("error: ") and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    for name in ("nnlab-train", "nnlab-eval", "nnlab-predict", "nnlab-export", "nnlab-report"):
        assert ok(command(name, "--help", cwd=trained)).stdout.strip()


def test_a_sweep_and_its_report(tmp_path):
    ok(command("nnlab-train", "-m", *SINE, "seed=1,2,3", *QUICK, cwd=tmp_path))
    found = trials(tmp_path)
    assert [t.name for t in found] == ["0", "1", "2"]
    values = [json.loads((t / "metrics.json").read_text())["val/mse"] for t in found]
    assert len(set(values)) == 3 and max(values) < 0.3
    sweep = found[0].parent
    ok(command("nnlab-report", f"sweep={sweep}", cwd=tmp_path))
    with open(sweep / "report" / "leaderboard.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert sorted(float(r["val/mse"]) for r in rows) == pytest.approx(sorted(values), rel=1e-5)


CRASHY_SEARCH = """# @package _global_
# A user's own search: four windows on a grid, one longer than the series (known only when the
# data is read: the up-front check of the search space passes it).
defaults:
  - override /hydra/sweeper: optuna
  - override /hydra/sweeper/sampler: grid
optimized_metric: val/mse
hydra:
  mode: MULTIRUN
  sweeper:
    _target_: hydra_plugins.nnlab_plugins.OptunaSweeper
    direction: minimize
    study_name: crashy
    storage: ${nnlab.sqlite:${paths.log_dir}/optuna/crashy.db}
    n_trials: 4
    n_jobs: 1
    max_failure_rate: 1.0
    params:
      data.window: choice(4, 6, 8, 100000)
"""


def test_an_optuna_search_survives_a_crashing_trial(tmp_path):
    """Four grid points, one of them a window longer than the series: that trial
    fails (its error in its status.json and in the report), the other three complete, the
    study holds all four, and the command exits 0."""
    optuna = pytest.importorskip("optuna")
    search = tmp_path / "my_conf" / "hparams_search"
    search.mkdir(parents=True)
    (search / "crashy.yaml").write_text(CRASHY_SEARCH)
    args = ["--config-dir", str(tmp_path / "my_conf"), "experiment=sine_mlp"]
    args += ["hparams_search=crashy", "trainer.max_epochs=2", *QUICK]
    ok(command("nnlab-train", *args, cwd=tmp_path))
    found = trials(tmp_path)
    states = {t.name: status(t) for t in found}
    assert len(found) == 4
    failed = [s for s in states.values() if s["status"] == "failed"]
    assert len(failed) == 1 and "data.window" in failed[0]["error"]
    db = tmp_path / "outputs" / "optuna" / "crashy.db"
    study = optuna.load_study(study_name="crashy", storage=f"sqlite:///{db}")
    kinds = sorted(t.state.name for t in study.trials)
    assert kinds == ["COMPLETE", "COMPLETE", "COMPLETE", "FAIL"]
    ok(command("nnlab-report", f"sweep={found[0].parent}", cwd=tmp_path))
    report = (found[0].parent / "report" / "leaderboard.md").read_text()
    assert "failed" in report and "data.window" in report


def test_a_grid_search_whose_last_trial_fails_ends_cleanly(tmp_path):
    """Every grid point fails, so the last one told to Optuna is a failure: Optuna's grid sampler
    then stops the study, which the search must take as its end (exit 1: none completed), not
    crash on (the grid's order is random, so the four-point search above meets this only
    sometimes)."""
    optuna = pytest.importorskip("optuna")
    search = tmp_path / "my_conf" / "hparams_search"
    search.mkdir(parents=True)
    crashy = CRASHY_SEARCH.replace("n_trials: 4", "n_trials: 2")
    (search / "crashy.yaml").write_text(crashy.replace("4, 6, 8, 100000", "100000, 200000"))
    args = ["--config-dir", str(tmp_path / "my_conf"), "experiment=sine_mlp"]
    proc = command("nnlab-train", *args, "hparams_search=crashy", *QUICK, cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "none of the search's trials completed" in proc.stderr
    assert "Traceback" not in proc.stderr and "Study.stop" not in proc.stderr
    db = tmp_path / "outputs" / "optuna" / "crashy.db"
    study = optuna.load_study(study_name="crashy", storage=f"sqlite:///{db}")
    assert [t.state.name for t in study.trials] == ["FAIL", "FAIL"]


def test_a_sweep_in_which_no_trial_completes_exits_1(tmp_path):
    proc = command("nnlab-train", "-m", *SINE, "data.window=100000,200000", *QUICK, cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "none of the 2 trials completed" in proc.stderr
    assert all(status(t)["status"] == "failed" for t in trials(tmp_path))


def test_ddp_inside_a_sweep_runs_each_trial_once(tmp_path):
    """Two trials of two CPU processes each: two run directories, each trial trained once (its
    rank 1 runs that trial, not the whole sweep again)."""
    args = ["-m", *SINE, "trainer.max_epochs=2", "trainer=ddp_cpu", "seed=1,2", *QUICK]
    proc = ok(command("nnlab-train", *args, cwd=tmp_path))
    found = trials(tmp_path)
    assert [t.name for t in found] == ["0", "1"]
    assert len(list((tmp_path / "outputs").glob("multiruns/*/*"))) == 1  # no sweep of rank 1
    for trial in found:
        assert json.loads((trial / "metrics.json").read_text())["epochs"] == 2
        assert status(trial)["status"] == "completed"
    # each trial starts its two ranks once (the second trial too: nothing of the first's DDP
    # state is left in the process); a rank re-running the sweep would start more
    assert (proc.stdout + proc.stderr).count("Initializing distributed") == 4


def test_a_second_process_on_a_running_run_is_refused(tmp_path):
    """resume= on a run that is still training: refused with the run and the process named, and
    the running run's files untouched."""
    args = ["experiment=sine_lstm", "trainer.max_epochs=100000", *QUICK]
    first = subprocess.Popen(
        [str(BIN / "nnlab-train"), *args],
        cwd=tmp_path,
        env={**os.environ, "NNLAB_OUTPUT_DIR": str(tmp_path / "outputs"), "OMP_NUM_THREADS": "1"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not (
            runs(tmp_path) and (runs(tmp_path)[0] / "checkpoints" / "last.ckpt").is_file()
        ):
            time.sleep(0.5)
        (run,) = runs(tmp_path)
        before = {p: p.stat().st_mtime_ns for p in [run / "status.json", run / "train.log"]}
        proc = command("nnlab-train", f"resume={run}", cwd=tmp_path)
        assert proc.returncode == 2, proc.stderr[-2000:]
        assert str(run) in proc.stderr and f"process {first.pid}" in proc.stderr
        assert status(run)["status"] == "running" and status(run)["pid"] == first.pid
        assert {p: p.stat().st_mtime_ns for p in before} == before
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()


def test_your_own_configs_beside_the_built_in_ones(tmp_path):
    """--config-dir and NNLAB_CONFIG_PATH add a user's experiment; the built-in groups stay."""
    mine = tmp_path / "my_conf" / "experiment"
    mine.mkdir(parents=True)
    (mine / "mine.yaml").write_text(
        "# @package _global_\ndefaults:\n  - sine_mlp\n  - _self_\nmodel:\n  hidden_sizes: [7]\n"
    )
    ok(command("nnlab-train", "--config-dir", str(tmp_path / "my_conf"), "experiment=mine",
               "trainer.max_epochs=1", *QUICK, cwd=tmp_path))  # fmt: skip
    env = {"NNLAB_CONFIG_PATH": str(tmp_path / "my_conf")}
    ok(
        command(
            "nnlab-train", "experiment=mine", "trainer.max_epochs=1", *QUICK, cwd=tmp_path, env=env
        )
    )
    for run in runs(tmp_path):
        resolved = (run / "config.resolved.yaml").read_text()
        assert "- 7" in resolved and "_target_: nnlab.models.mlp" in resolved


class ReadOnly:
    """A folder nobody may write into, not even root (who ignores permission bits): `chattr +i`
    for root, the permission bits otherwise."""

    def __init__(self, *paths: Path):
        self.paths = paths

    def __enter__(self):
        for path in self.paths:
            if os.geteuid() == 0:
                subprocess.run(["chattr", "+i", str(path)], check=True)
            else:
                path.chmod(0o555)
        return self

    def __exit__(self, *exc):
        for path in self.paths:
            if os.geteuid() == 0:
                subprocess.run(["chattr", "-i", str(path)], check=True)
            else:
                path.chmod(0o755)


def chattr_works(tmp: Path) -> bool:
    if os.geteuid() != 0:
        return True
    probe = tmp / "probe"
    probe.mkdir()
    try:
        return subprocess.run(["chattr", "+i", str(probe)], capture_output=True).returncode == 0
    finally:
        subprocess.run(["chattr", "-i", str(probe)], capture_output=True)


def test_file_system_errors_end_with_one_line_naming_the_file(trained, tmp_path):
    """Read-only run directory, output folder and prediction folder: each command exits 2 with
    the file named, no traceback, and the run's status.json unchanged."""
    if not chattr_works(tmp_path):
        pytest.skip(
            "this file system has no immutable flag (chattr +i) to stand in for permissions"
        )
    run = the_completed_run(trained)
    before = (run / "status.json").read_text()
    readonly_out = tmp_path / "readonly"
    readonly_out.mkdir()
    (run / "export").mkdir(exist_ok=True)
    cases = [
        ("nnlab-train", [f"resume={run}"], str(run)),
        ("nnlab-eval", [f"run={run}"], "eval_metrics.json"),
        ("nnlab-export", [f"run={run}"], "export"),
        ("nnlab-predict", [f"run={run}", f"out={readonly_out}"], str(readonly_out)),
    ]
    with ReadOnly(run, run / "export", readonly_out):
        for name, args, named in cases:
            proc = command(name, *args, cwd=trained)
            assert proc.returncode == 2, (name, proc.stdout[-1500:], proc.stderr[-2500:])
            last = proc.stderr.strip().splitlines()[-1]  # after the libraries' own warnings
            assert last.startswith("error: ") and named in last, proc.stderr[-2000:]
            assert "Traceback" not in proc.stderr
        with ReadOnly(trained / "outputs"):
            proc = command("nnlab-train", *SINE, *QUICK, cwd=trained)
            assert proc.returncode == 2 and "paths.log_dir" in proc.stderr, proc.stderr[-2000:]
    assert (run / "status.json").read_text() == before
