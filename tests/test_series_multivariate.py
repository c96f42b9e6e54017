"""Multivariate series under data=csv: feature and target columns, time column order,
chronological split, scaling fitted on the training span and undone for the metrics; every
regressor (MLP, recurrent, seq2seq, Conv1D) on it."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

from nnlab.data.series import CSVSeriesDataModule, read_csv_columns, write_weather_csv
from nnlab.errors import ConfigError, DataError


def write_csv(path: Path, rows: list[list], header=("t", "a", "b", "c")) -> Path:
    with path.open("w", newline="") as f:
        out = csv.writer(f)
        out.writerow(header)
        out.writerows(rows)
    return path


@pytest.fixture
def ramp(tmp_path) -> Path:
    """a = i, b = 10 i, c = -i for i = 0..39, rows written in reverse time order."""
    rows = [[i, i, 10 * i, -i] for i in range(40)][::-1]
    return write_csv(tmp_path / "ramp.csv", rows)


def module(path, **kwargs):
    kwargs = {
        "features": ["a", "b"],
        "targets": ["c"],
        "window": 3,
        "horizon": 2,
        "standardize": True,
        **kwargs,
    }
    return CSVSeriesDataModule(path=str(path), batch_size=4, **kwargs)


def test_windows_follow_the_time_column_and_split_by_time(ramp):
    dm = module(ramp, time_column="t", standardize=False)
    dm.setup()
    x, y = dm.datasets["train"].tensors
    assert x.shape == (24, 3, 2) and y.shape == (24, 2)  # 28 training rows - 5 + 1 windows
    assert x[0].tolist() == [[0, 0], [1, 10], [2, 20]] and y[0].tolist() == [-3, -4]
    val_x, _ = dm.datasets["val"].tensors
    assert val_x[0, 0, 0] == 28  # validation starts where training ends: no window straddles
    assert dm.input_size == 2 and dm.output_size == 2


def test_without_a_time_column_the_file_order_counts(ramp):
    dm = module(ramp, standardize=False)
    dm.setup()
    assert dm.datasets["train"].tensors[0][0, 0, 0] == 39


def test_scaling_is_fitted_on_the_training_span_and_undone_for_targets(ramp):
    dm = module(ramp, time_column="t")
    dm.setup()
    train = torch.arange(28, dtype=torch.float32)
    assert torch.allclose(dm.mean, torch.stack([train, 10 * train, -train]).mean(1))
    _, y = dm.datasets["test"].tensors
    assert y.min() < -2  # test values lie beyond the training span: not re-fitted on them
    raw = dm.decode(y)
    assert torch.allclose(raw[0], torch.tensor([-37.0, -38.0]))
    given = torch.tensor([[0.0, 0, 0], [1, 10, -1], [2, 20, -2]], dtype=torch.float64)
    assert torch.allclose(dm.encode(given).inputs[0], dm.datasets["train"].tensors[0][:1])


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"features": ["a", "zzz"]}, ConfigError, "data.features: no column 'zzz'"),
        ({"targets": ["zzz"]}, ConfigError, "data.targets: no column 'zzz'"),
        ({"time_column": "when"}, ConfigError, "data.time_column: no column 'when'"),
        ({"targets": []}, ConfigError, "data.targets: a list of one or more"),
        ({"targets": None}, ConfigError, "data.targets: name the column"),
        ({"features": ["a", "a"]}, ConfigError, "data.features: names 'a' more than once"),
        (
            {"time_column": "t", "features": ["t", "a"]},
            ConfigError,
            "data.features: holds the time",
        ),
        ({"time_column": "t", "targets": ["t"]}, ConfigError, "data.targets: holds the time"),
        ({"column": "a"}, ConfigError, "data.column: name the columns either"),
        ({"window": 30}, ConfigError, "data.window"),
        ({"input_size": 3}, ConfigError, "data.input_size: 3, but the columns give 2"),
    ],
)
def test_bad_settings_name_the_key(ramp, kwargs, error, message):
    with pytest.raises(error, match=message):
        module(ramp, **kwargs).setup()


def test_bad_cells_and_times_name_the_line(tmp_path):
    path = write_csv(tmp_path / "x.csv", [[0, 1, 2, 3], [1, 1, "", 3]])
    with pytest.raises(DataError, match="line 3: '' in column 'b' is not a number"):
        read_csv_columns(path, ["a", "b"], None)
    path = write_csv(tmp_path / "y.csv", [["noon", 1, 2, 3]])
    with pytest.raises(DataError, match="neither a number nor an ISO date"):
        read_csv_columns(path, ["a"], "t")
    path = write_csv(tmp_path / "z.csv", [[1, 1, 2, 3], [1, 2, 2, 3]])
    with pytest.raises(DataError, match="repeated times"):
        read_csv_columns(path, ["a"], "t")


def test_the_generated_weather_file_needs_its_time_column(tmp_path):
    path = write_weather_csv(tmp_path / "w.csv", 100, seed=0)
    by_time, header = read_csv_columns(path, ["temp"], "time")
    by_file, _ = read_csv_columns(path, ["temp"], None)
    assert header[0] == "time" and not torch.equal(by_time, by_file)
    assert sorted(by_time[:, 0].tolist()) == sorted(by_file[:, 0].tolist())


@pytest.mark.parametrize("model", ["mlp", "recurrent", "seq2seq", "conv1d"])
def test_every_regressor_trains_on_multivariate_csv(cli, tmp_path, model):
    """data=csv with several features and targets: each model family is sized from the data
    config alone (no size typed), and the metrics come back in the data's units."""
    path = write_weather_csv(tmp_path / "w.csv", 300, seed=0)
    result = cli(
        "~experiment",
        "data=csv",
        f"data.path={path}",
        "data.time_column=time",
        "data.features=[temp,humidity,pressure,wind]",
        "data.targets=[temp,humidity]",
        "data.window=8",
        "data.horizon=2",
        f"model={model}",
        "task=regression",
        "trainer.max_epochs=1",
        "callbacks=[default,forecast_plot]",
        "logger=none",
    )
    metrics = result.metrics()
    # metrics in the data's units (degrees, percent): far above the standardised loss
    assert metrics["test/mse"] > 3 * metrics["test/loss"]
    assert (result.run_dir() / "forecast.png").is_file()


def test_the_weather_presets_write_and_read_their_file(cli, tmp_path):
    for preset in ("weather_lstm", "weather_conv1d"):
        cli(
            f"experiment={preset}",
            "data.generate=400",
            "trainer.max_epochs=1",
            "logger=none",
            env={"NNLAB_DATA_DIR": str(tmp_path / "data")},
        )
    assert (tmp_path / "data" / "generated" / "weather.csv").is_file()
    assert len(list((tmp_path / "outputs").glob("runs/*/*/metrics.json"))) == 2


@pytest.mark.parametrize(
    ("overrides", "sizes"),
    [
        (["data.column=v"], (1, 1, 2, [0])),
        (["data.targets=[a,b]"], (2, 2, 4, [0, 1])),  # features default to the targets
        (["data.features=[a,b,c]", "data.targets=[c,a]"], (3, 2, 4, [2, 0])),
        (["data.features=[a,b]", "data.targets=[d]"], (2, 1, 2, None)),
    ],
)
def test_the_data_config_derives_every_size(make_cfg, overrides, sizes):
    from omegaconf import OmegaConf

    cfg = make_cfg("data=csv", "data.path=x.csv", "data.horizon=2", *overrides)
    data = OmegaConf.to_container(cfg.data, resolve=True)
    got = (data["input_size"], data["num_targets"], data["output_size"], data["target_features"])
    assert got == sizes and data["flat_input_size"] == data["window"] * sizes[0]


def test_conv1d_regression_head_reads_windows_channels_last():
    from nnlab.models.cnn import CNN

    blocks = [{"channels": 4, "kernel": 3, "padding": "same", "pool": 2}]
    net = CNN(output_size=6, blocks=blocks, in_channels=3, in_size=8, dims=1, layout="sequence")
    x = torch.randn(5, 8, 3)
    assert net(x).shape == (5, 6)
    assert net.shapes[-1][1] == (4 * 4,)  # the exact size arithmetic: 8 steps, pooled to 4
    # channels last: the same as feeding (batch, channels, steps) to the conv stack directly
    assert torch.allclose(net(x), net.classifier(net.features(x.transpose(1, 2))))
    one = CNN(output_size=1, blocks=blocks, in_channels=1, in_size=8, dims=1, layout="sequence")
    assert one(torch.randn(2, 8)).shape == (2, 1)  # one feature: (batch, window)
    with pytest.raises(ConfigError, match="model.output_size: give either"):
        CNN(num_classes=3, output_size=2, blocks=blocks, dims=1, layout="sequence")
    with pytest.raises(ConfigError, match="model.layout"):
        CNN(output_size=2, blocks=blocks, layout="sequence")  # dims 2
    with pytest.raises(ConfigError, match=r"model.blocks\[0\]"):
        CNN(output_size=2, blocks=blocks, in_channels=3, in_size=7, dims=1, layout="sequence")


def test_seq2seq_emits_every_target_at_each_step():
    from nnlab.models.seq2seq import Seq2SeqForecaster

    torch.manual_seed(0)
    net = Seq2SeqForecaster(3, 4, num_targets=2, hidden_size=5, target_features=[2, 0]).eval()
    x = torch.randn(2, 6, 3)
    out = net(x)
    assert out.shape == (2, 8)  # horizon 4 x 2 targets, step by step
    _, state = net.encoder(x)
    h, _ = net.decoder(x[:, -1:, [2, 0]], state)  # starts from the targets' last values
    assert torch.allclose(out[:, :2], net.head(h)[:, 0], atol=1e-6)
    forced = Seq2SeqForecaster(3, 4, num_targets=2, target_features=None, teacher_forcing_ratio=1)
    y = torch.randn(2, 8)
    assert forced.train()(x, targets=y).shape == (2, 8)
    with pytest.raises(ConfigError, match="model.target_features"):
        Seq2SeqForecaster(3, 4, num_targets=2, target_features=[0])


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("data.targets=[nope]", "data.targets: no column 'nope'"),
        ("data.features=[time,temp]", "data.features: holds the time column 'time'"),
        ("data.column=temp", "data.column: name the columns either"),
    ],
)
def test_bad_columns_stop_the_command_naming_the_key(cli, tmp_path, override, message):
    path = write_weather_csv(tmp_path / "w.csv", 100, seed=0)
    args = ["~experiment", "data=csv", f"data.path={path}", "data.time_column=time"]
    args += ["data.features=[temp,wind]", "data.targets=[temp]", "task=regression", override]
    result = cli(*args, "logger=none", check=False)
    assert result.returncode == 2 and message in result.stderr, result.output[-2000:]
    assert not list((tmp_path / "outputs").glob("runs/*/*/metrics.json"))


def test_a_run_predicts_from_its_saved_scaling_without_the_training_file(ramp, tmp_path):
    dm = module(ramp, time_column="t")
    (path,) = dm.save_artifacts(tmp_path / "run")
    fresh = module(tmp_path / "gone.csv", time_column="t")  # the training file is not needed
    fresh.load_artifacts(tmp_path / "run")
    assert torch.equal(fresh.mean, dm.mean) and fresh.targets == ["c"]
    given = write_csv(tmp_path / "new.csv", [[i, i, 10 * i] for i in range(5)], ("t", "a", "b"))
    x = fresh.encode(str(given)).inputs[0]
    assert torch.allclose(x[0], dm.datasets["train"].tensors[0][0])
