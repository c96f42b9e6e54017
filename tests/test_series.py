"""Sine and CSV series: windows, time-ordered splits without leakage, clear errors."""

import pytest
import torch

from nnlab.data.series import CSVSeriesDataModule, SineDataModule, make_windows, split_bounds
from nnlab.errors import ConfigError, DataError
from nnlab.schema import check_args


def test_make_windows():
    x, y = make_windows(torch.arange(10.0), window=3, horizon=2)
    assert x.shape == (6, 3) and y.shape == (6, 2)
    assert x[0].tolist() == [0, 1, 2] and y[0].tolist() == [3, 4]
    assert x[-1].tolist() == [5, 6, 7] and y[-1].tolist() == [8, 9]


def test_split_bounds_cover_the_series_in_order():
    bounds = split_bounds(1000, (0.7, 0.15, 0.15))
    assert bounds == [(0, 700), (700, 850), (850, 1000)]


def test_sine_shapes_and_split_sizes():
    dm = SineDataModule(window=4, horizon=1)
    dm.setup()
    sizes = {k: len(v) for k, v in dm.datasets.items()}
    assert sizes == {"train": 700 - 4, "val": 150 - 4, "test": 150 - 4}
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (32, 4) and y.shape == (32, 1)


def test_sine_is_seeded_and_matches_the_formula():
    a, b, c = SineDataModule(seed=1), SineDataModule(seed=1), SineDataModule(seed=2)
    for dm in (a, b, c):
        dm.setup()
    assert torch.equal(a.series, b.series) and not torch.equal(a.series, c.series)
    residual = a.series.double() - torch.sin(0.01 * torch.arange(1000.0, dtype=torch.float64))
    assert abs(residual.std().item() - 0.2) < 0.02 and abs(residual.mean().item()) < 0.03


def test_no_window_crosses_a_split():
    dm = SineDataModule(window=8, horizon=2, num_points=200)
    dm.setup()
    series = dm.series
    seen = {}
    for name, (start, end) in zip(
        ("train", "val", "test"), split_bounds(200, dm.splits), strict=True
    ):
        x, y = dm.datasets[name].tensors
        # every window and its targets are a contiguous piece of its own segment
        segment = series[start:end]
        for i in (0, len(x) - 1):
            assert torch.equal(torch.cat([x[i], y[i]]), segment[i : i + 10])
        seen[name] = set(range(start, end))
    assert not (seen["train"] & seen["val"]) and not (seen["val"] & seen["test"])


def test_train_is_shuffled_only_when_asked():
    dm = SineDataModule(shuffle=False)
    dm.setup()
    first = next(iter(dm.train_dataloader()))[0]
    assert torch.equal(first, dm.datasets["train"].tensors[0][:32])


def test_window_longer_than_the_series():
    dm = SineDataModule(window=200, num_points=500)
    with pytest.raises(ConfigError, match=r"data.window: .* do not fit in the val split"):
        dm.setup()


@pytest.mark.parametrize(
    "key,kwargs",
    [
        ("data.window", {"window": 0}),
        ("data.horizon", {"horizon": -1}),
        ("data.batch_size", {"batch_size": 0}),
        ("data.splits", {"splits": (0.5, 0.5, 0.5)}),
    ],
)
def test_bad_sizes(key, kwargs):
    with pytest.raises(ConfigError, match=key):
        check_args(SineDataModule, "data", **kwargs)
        SineDataModule(**kwargs)


def write_csv(path, text):
    path.write_text(text)
    return path


def test_csv_source_with_standardisation(tmp_path):
    values = [float(i % 17) for i in range(300)]
    path = write_csv(
        tmp_path / "s.csv", "time,value\n" + "".join(f"{i},{v}\n" for i, v in enumerate(values))
    )
    dm = CSVSeriesDataModule(path=str(path), column="value", window=5, standardize=True)
    dm.setup()
    train = torch.tensor(values[:210])
    assert dm.mean == pytest.approx(train.mean().item())
    assert torch.allclose(dm.decode(dm.series), torch.tensor(values), atol=1e-4)
    x, y = dm.datasets["test"].tensors
    assert torch.allclose(dm.decode(y[0]), torch.tensor([values[255 + 5]]), atol=1e-4)


def test_csv_single_column_needs_no_name(tmp_path):
    path = write_csv(tmp_path / "s.csv", "y\n" + "\n".join(str(i) for i in range(100)) + "\n")
    dm = CSVSeriesDataModule(path=str(path), window=3)
    dm.setup()
    assert len(dm.series) == 100


@pytest.mark.parametrize(
    "text,column,error,message",
    [
        (None, "v", DataError, "CSV file not found"),
        ("", "v", DataError, "is empty"),
        ("a,b\n1,2\n", "v", ConfigError, "no column 'v' .* columns are: a, b"),
        ("a,b\n1,2\n", None, ConfigError, "data.column: .* 2 columns"),
        ("v\n1\nabc\n", "v", DataError, "line 3: 'abc' .* not a number"),
        ("v\n1\nnan\n", "v", DataError, "missing values"),
        ("v\n", "v", DataError, "has no values"),
    ],
)
def test_csv_errors(tmp_path, text, column, error, message):
    path = tmp_path / "s.csv"
    if text is not None:
        path.write_text(text)
    with pytest.raises(error, match=message):
        CSVSeriesDataModule(path=str(path), column=column).setup()


def test_csv_needs_a_path():
    with pytest.raises(ConfigError, match="data.path"):
        CSVSeriesDataModule(path=None)
