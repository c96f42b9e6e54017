"""nnlab-train end to end, as a user runs it: run directories, metrics.json, errors."""

import json
import subprocess
import sys

import pytest
import torch
from conftest import EXPERIMENTS

from nnlab import CONF_DIR
from nnlab.runs import read_status

SHORT = ["debug=limit", "trainer.accelerator=cpu"]
# The series presets (the others need data files and are run by their own tests); the
# *_as_written ones (no validation, the final weights tested) in test_as_written.py.
SERIES_EXPERIMENTS = [
    e
    for e in EXPERIMENTS
    if "override /data: sine" in (CONF_DIR / "experiment" / f"{e}.yaml").read_text()
    and not e.endswith("_as_written")
]


@pytest.mark.parametrize("experiment", SERIES_EXPERIMENTS)
def test_each_experiment_trains_briefly(cli, experiment):
    result = cli(f"experiment={experiment}", *SHORT)
    run = result.run_dir()
    assert experiment in run.name
    for name in (
        ".hydra/config.yaml",
        "train.log",
        "checkpoints/last.ckpt",
        "status.json",
        "metrics.json",
        "config_tree.log",
    ):
        assert (run / name).is_file(), name
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    assert len(list((run / "checkpoints").glob("epoch*.ckpt"))) == 1  # the best one
    metrics = result.metrics()
    for key in ("val/mse", "test/mse", "test/mae", "wall_time_s", "best_epoch", "best_checkpoint"):
        assert key in metrics, key
    assert metrics["epochs"] == 2
    assert read_status(run)["status"] == "completed"
    assert "Run directory: " in result.output and "tensorboard --logdir" in result.output


def test_forecast_plot_is_saved(cli):
    run = cli("experiment=sine_mlp", *SHORT).run_dir()
    png = run / "forecast.png"
    assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_csv_experiment(cli, tmp_path):
    path = tmp_path / "series.csv"
    path.write_text("t,level\n" + "".join(f"{i},{(i * 7) % 23}\n" for i in range(400)))
    metrics = cli(
        "experiment=sine_mlp",
        "data=csv",
        f"data.path={path}",
        "data.column=level",
        "data.window=4",
        *SHORT,
    ).metrics()
    # the loss is on standardised values, the metrics in the series' units: scaled by the
    # training span's variance (the first 70% of the rows)
    train = torch.tensor([float((i * 7) % 23) for i in range(280)])
    assert metrics["test/mse"] == pytest.approx(metrics["test/loss"] * train.var().item(), rel=1e-3)


@pytest.mark.slow
def test_logger_choices(cli):
    result = cli("experiment=sine_mlp", "logger=csv", *SHORT)
    assert (result.run_dir() / "csv" / "metrics.csv").is_file()
    result = cli("experiment=sine_mlp", "logger=none", "debug=fast_dev_run")
    assert len(result.run_dirs()) == 2


@pytest.mark.slow
def test_runs_started_together_get_their_own_directories(cli, tmp_path):
    import os

    env = {**os.environ, "NNLAB_OUTPUT_DIR": str(tmp_path / "outputs")}
    cmd = [
        sys.executable,
        "-m",
        "nnlab.train",
        "experiment=sine_mlp",
        "debug=fast_dev_run",
        "print_config=false",
        "logger=none",
    ]
    procs = [
        subprocess.Popen(
            cmd, env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        for _ in range(8)  # eight runs started in the same second
    ]
    assert [p.wait(timeout=600) for p in procs] == [0] * 8
    dirs = list((tmp_path / "outputs").glob("runs/*/*"))
    assert len(dirs) == 8
    assert all((d / "metrics.json").is_file() for d in dirs)


@pytest.mark.slow
def test_cfg_job_and_help(cli):
    result = cli("--cfg", "job", "experiment=sine_mlp")
    assert "nnlab.models.mlp.MLP" in result.stdout and "window: 4" in result.stdout
    result = cli("--help")
    assert "experiment: " in result.stdout and "sine_lstm" in result.stdout


@pytest.mark.parametrize(
    "args,message",
    [
        (["experiment=nope"], "Could not find 'experiment/nope'"),
        (["model=nope"], "Could not find 'model/nope'"),
        (
            ["data=csv", "data.path=/no/such/file.csv"],
            "data.path: CSV file not found: /no/such/file.csv",
        ),
        (["data.window=400"], "data.window: window 400 + horizon 1 = 401 points do not fit"),
        (["model.cell=lstmm"], "model.cell: got 'lstmm'; expected one of 'rnn', 'lstm'"),
        (["data.batch_size=0"], "data.batch_size: got 0; expected a number >= 1"),
    ],
)
def test_clear_errors(cli, args, message):
    result = cli(*args, check=False)
    assert result.returncode != 0
    assert message in result.output
    assert "Traceback" not in result.output
    for run in result.run_dirs():  # a failed run never looks finished
        assert not (run / "metrics.json").exists()
        assert read_status(run)["status"] == "failed"


def test_csv_column_absent(cli, tmp_path):
    path = tmp_path / "s.csv"
    path.write_text("a,b\n1,2\n")
    result = cli("data=csv", f"data.path={path}", "data.column=price", check=False)
    assert result.returncode == 2
    assert (
        "data.column: no column 'price'" in result.output and "columns are: a, b" in result.output
    )


@pytest.mark.slow
def test_default_experiment_reaches_its_metric(cli):
    """The README's default run: sine_lstm, test MSE <= 0.055 (noise floor 0.04)."""
    metrics = cli().metrics()
    assert metrics["test/mse"] <= 0.055, json.dumps(metrics)


@pytest.mark.slow
def test_sine_mlp_reaches_its_metric(cli):
    metrics = cli("experiment=sine_mlp").metrics()
    assert metrics["test/mse"] <= 0.065, json.dumps(metrics)
