"""Time series cut into (window -> horizon) samples: generated sine waves or a user's CSV column.

The series is split by time (train, then val, then test, never shuffled across the split) and
each split is windowed on its own, so no window straddles two splits.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import TensorDataset

from nnlab.data.base import DataModule, Encoded
from nnlab.data.folds import fold_blocks
from nnlab.errors import ConfigError, DataError, UserError, require_positive

SPLITS = ("train", "val", "test")


def make_windows(
    series: torch.Tensor, window: int, horizon: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs (N, window) and targets (N, horizon): sample t sees series[t:t+window] and
    predicts the `horizon` values that follow it."""
    frames = series.unfold(0, window + horizon, 1)
    return frames[:, :window].contiguous(), frames[:, window:].contiguous()


def split_bounds(n: int, fractions: tuple[float, float, float]) -> list[tuple[int, int]]:
    """[start, end) indices of the train/val/test segments of a series of length n, in order."""
    ends = [round(n * sum(fractions[: i + 1])) for i in range(3)]
    ends[-1] = n
    starts = [0, *ends[:-1]]
    return list(zip(starts, ends, strict=True))


class SeriesDataModule(DataModule):
    """Windows over one univariate series; subclasses say where the series comes from.

    `encode` reads a series a user gives (a CSV file, its `column`, or inline values) into
    windows scaled as in training; `decode` brings outputs back to the series' units."""

    def __init__(
        self,
        window: int = 4,
        horizon: int = 1,
        splits: tuple[float, float, float] = (0.7, 0.15, 0.15),
        batch_size: int = 32,
        shuffle: bool = True,
        standardize: bool = False,
        num_workers: int = 0,
        in_memory: bool | str = "auto",
        shuffle_seed: int = 0,
        folds: int | None = None,
        fold: int = 0,
        column: str | None = None,
    ):
        super().__init__(
            batch_size,
            shuffle=shuffle,
            shuffle_seed=shuffle_seed,
            in_memory=in_memory,
            num_workers=num_workers,
        )
        require_positive("data.window", window)
        require_positive("data.horizon", horizon)
        splits = tuple(float(f) for f in splits)
        if len(splits) != 3 or any(f <= 0 for f in splits) or not math.isclose(sum(splits), 1.0):
            raise ConfigError(
                "data.splits", f"need three positive fractions summing to 1, got {list(splits)}"
            )
        self.window, self.horizon, self.splits = int(window), int(horizon), splits
        self.standardize, self.column = standardize, column
        self.folds, self.fold = folds, fold  # k-fold cross-validation (data/folds.py)
        self.series: torch.Tensor | None = None  # the whole series, standardised if asked
        self.mean, self.std = 0.0, 1.0
        self.starts: dict[str, int] = {}  # index in `series` of each split's first target

    # -- what subclasses provide -------------------------------------------------------------
    def load_series(self) -> torch.Tensor:
        raise NotImplementedError

    @property
    def source_name(self) -> str:
        return type(self).__name__

    def clean_series(self) -> torch.Tensor | None:
        """The series without its noise, where it is known (figures draw it); else None."""
        return None

    # -- the protocol (data/base.py) -----------------------------------------------------------
    def example_input(self, n: int = 2) -> torch.Tensor:
        return torch.zeros(n, self.window)

    def scale(self, values: torch.Tensor) -> torch.Tensor:
        """Values in the series' units -> what the network reads (standardised when asked)."""
        return (values - self.mean) / self.std

    def decode(self, outputs: torch.Tensor) -> torch.Tensor:
        """Back to the series' own units (undoes the standardisation)."""
        return outputs * self.std + self.mean

    def encode(self, raw: Any) -> Encoded:
        """A series -> its (N, window) windows, scaled, one per position with `window` values
        before it. `raw`: None (the test split, with the window before it), a CSV file (its
        `column`), inline values "0.1,0.2,..." or numbers; `Encoded.raw` holds them (float64)."""
        if raw is None:  # the run's own test split, with the window before it
            if self.series is None:
                self.setup("predict")
            scaled = self.series[self.starts["test"] - self.window :]
            values = self.decode(scaled).double()
        else:
            values = self.read_values(raw)
            scaled = self.scale(values.float())  # as setup() scales the training series
        if len(values) < self.window:
            raise UserError(
                f"input: {len(values)} values given, but the model reads windows of "
                f"{self.window}; give at least {self.window} values"
            )
        windows = scaled.unfold(0, self.window, 1)
        names = [str(i + self.window) for i in range(len(windows))]  # the time each predicts
        return Encoded((windows,), names, values)

    def read_values(self, raw: Any) -> torch.Tensor:
        """A CSV file (its `column`), inline values "0.1,0.2,..." or numbers, as float64."""
        if isinstance(raw, torch.Tensor):
            return raw.double()
        if not isinstance(raw, str | Path):
            raw = ",".join(map(str, raw))
        text = str(raw)
        path = Path(text).expanduser()
        try:
            is_file = path.is_file()
        except OSError:  # a long list of values is no file name
            is_file = False
        if is_file:
            return read_csv_column(path, self.column)
        try:
            values = [float(v) for v in text.replace(";", ",").split(",") if v.strip()]
        except ValueError:
            raise UserError(
                f"input: {text!r} is neither a file nor comma-separated numbers; give a CSV "
                "file or values like input=0.1,0.2,0.3,0.4"
            ) from None
        if not values or not all(math.isfinite(v) for v in values):
            raise UserError(f"input: {text!r} holds no finite numbers")
        return torch.tensor(values, dtype=torch.float64)

    # -- Lightning hooks ---------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        if self.series is not None:
            return
        raw = self.load_series().to(torch.float32)
        bounds = split_bounds(len(raw), self.splits)
        segments = {name: [b] for name, b in zip(SPLITS, bounds, strict=True)}
        if self.folds:  # k-fold in time blocks over train + val; the test segment stays
            segments["train"], val = fold_blocks(bounds[1][1], self.folds, self.fold)
            segments["val"] = [val]
        need = self.window + self.horizon
        for name, parts in segments.items():
            if max(end - start for start, end in parts) < need:
                raise ConfigError(
                    "data.window",
                    f"window {self.window} + horizon {self.horizon} = {need} points do not fit in "
                    f"the {name} split of {self.source_name}, which has "
                    f"{max(end - start for start, end in parts)} of its "
                    f"{len(raw)} points; use a smaller window/horizon or a longer series",
                )
        if self.standardize:  # statistics of the training segment only: no peeking ahead
            train = torch.cat([raw[start:end] for start, end in segments["train"]])
            self.mean, self.std = train.mean().item(), max(train.std().item(), 1e-8)
        self.series = self.scale(raw)
        for name, parts in segments.items():  # windows never straddle two segments
            windows = [
                make_windows(self.series[start:end], self.window, self.horizon)
                for start, end in parts
                if end - start >= need
            ]
            self.datasets[name] = TensorDataset(*(torch.cat(t) for t in zip(*windows, strict=True)))
            self.starts[name] = parts[0][0] + self.window
        train_size = len(self.datasets["train"])
        if self.batch_size > train_size:
            raise ConfigError(
                "data.batch_size",
                f"batch size {self.batch_size} is larger than the {train_size} training windows; "
                "use a smaller batch size",
            )


class SineDataModule(SeriesDataModule):
    """y_i = sin(freq * i) + N(0, noise^2), i = 0 .. num_points-1, from a seeded generator."""

    def __init__(
        self,
        num_points: int = 1000,
        freq: float = 0.01,
        noise: float = 0.2,
        seed: int = 0,
        **kwargs,
    ):
        require_positive("data.num_points", num_points)
        require_positive("data.freq", freq)
        require_positive("data.noise", noise, allow_zero=True)
        super().__init__(**kwargs)
        self.save_hyperparameters()
        self.num_points, self.freq, self.noise, self.seed = int(num_points), freq, noise, seed

    @property
    def source_name(self) -> str:
        return f"the sine series (data.num_points={self.num_points})"

    def clean_series(self) -> torch.Tensor:
        return torch.sin(self.freq * torch.arange(self.num_points, dtype=torch.float64))

    def load_series(self) -> torch.Tensor:
        generator = torch.Generator().manual_seed(self.seed)
        noise = torch.randn(self.num_points, generator=generator, dtype=torch.float64)
        return self.clean_series() + self.noise * noise


class CSVSeriesDataModule(SeriesDataModule):
    """One numeric column of a CSV file with a header row, in file order."""

    def __init__(self, path: str | None = None, **kwargs):
        super().__init__(**kwargs)
        self.save_hyperparameters()
        if not path:
            raise ConfigError("data.path", "no CSV file given; pass data.path=/path/to/series.csv")
        self.path = Path(path).expanduser()

    @property
    def source_name(self) -> str:
        return f"{self.path} (column {self.column!r})"

    def load_series(self) -> torch.Tensor:
        return read_csv_column(self.path, self.column)


def read_csv_column(path: Path, column: str | None) -> torch.Tensor:
    """The values of `column` (or of the only column) as a float64 tensor, with clear errors."""
    if not path.is_file():
        raise DataError(f"data.path: CSV file not found: {path}; check the path (data.path=...)")
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if not header:
            raise DataError(f"data.path: {path} is empty; it needs a header row and values")
        header = [h.strip() for h in header]
        if column is None:
            if len(header) != 1:
                raise ConfigError(
                    "data.column",
                    f"{path} has {len(header)} columns ({', '.join(header)}); "
                    "choose one with data.column=NAME",
                )
            column = header[0]
        if column not in header:
            raise ConfigError(
                "data.column",
                f"no column {column!r} in {path}; its columns are: {', '.join(header)}",
            )
        index = header.index(column)
        values = []
        for line_no, row in enumerate(reader, start=2):
            if not row or not any(cell.strip() for cell in row):
                continue  # blank lines carry nothing
            cell = row[index].strip() if index < len(row) else ""
            try:
                value = float(cell)
            except ValueError:
                raise DataError(
                    f"data.column: {path} line {line_no}: {cell!r} in column {column!r} is not "
                    "a number; clean the file or choose another column"
                ) from None
            if not math.isfinite(value):
                raise DataError(
                    f"data.column: {path} line {line_no}: column {column!r} holds {cell!r}; "
                    "fill or drop missing values first"
                )
            values.append(value)
    if not values:
        raise DataError(f"data.column: column {column!r} of {path} has no values")
    return torch.tensor(values, dtype=torch.float64)


# -- several columns: features in, targets out ---------------------------------------------------
def read_csv_columns(
    path: Path, columns: list[str], time_column: str | None
) -> tuple[torch.Tensor, list[str]]:
    """(rows, len(columns)) float64 values in time order (by `time_column`, a number or an ISO
    date/time, when given; else file order), with errors naming the file, line and column."""
    from datetime import datetime

    if not path.is_file():
        raise DataError(f"data.path: CSV file not found: {path}; check the path (data.path=...)")
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        header = [h.strip() for h in next(reader, None) or []]
        if not header:
            raise DataError(f"data.path: {path} is empty; it needs a header row and values")
        wanted = [*columns, *([time_column] if time_column else [])]
        for name in wanted:
            if name not in header:
                key = "data.time_column" if name == time_column else "data.features/targets"
                raise ConfigError(
                    key, f"no column {name!r} in {path}; its columns are: {', '.join(header)}"
                )
        index = [header.index(c) for c in columns]
        rows, times = [], []
        for line_no, row in enumerate(reader, start=2):
            if not row or not any(cell.strip() for cell in row):
                continue
            values = []
            for c, i in zip(columns, index, strict=True):
                cell = row[i].strip() if i < len(row) else ""
                try:
                    value = float(cell)
                except ValueError:
                    value = math.nan
                if not math.isfinite(value):
                    raise DataError(
                        f"data.path: {path} line {line_no}: column {c!r} holds {cell!r}, not a "
                        "number; fill or drop missing values first"
                    )
                values.append(value)
            if time_column:
                stamp = row[header.index(time_column)].strip()
                try:
                    times.append(float(stamp))
                except ValueError:
                    try:
                        times.append(datetime.fromisoformat(stamp).timestamp())
                    except ValueError:
                        raise DataError(
                            f"data.time_column: {path} line {line_no}: {stamp!r} is neither a "
                            "number nor an ISO date/time"
                        ) from None
            rows.append(values)
    if not rows:
        raise DataError(f"data.path: {path} has no rows of values")
    values = torch.tensor(rows, dtype=torch.float64)
    if time_column:
        t = torch.tensor(times, dtype=torch.float64)
        order = torch.argsort(t, stable=True)
        if (t[order][1:] == t[order][:-1]).any():
            raise DataError(f"data.time_column: {path} has repeated times in {time_column!r}")
        values = values[order]
    return values, header


def write_weather_csv(path: Path, rows: int, seed: int = 0) -> Path:
    """A generated hourly weather CSV (time, temp, humidity, pressure, wind): daily and slower
    cycles, humidity falling as temperature rises, pressure a random walk, noise; rows shuffled
    in the file, so only the time column gives the order."""
    from datetime import datetime, timedelta

    g = torch.Generator().manual_seed(seed)
    t = torch.arange(rows, dtype=torch.float64)
    day = torch.sin(2 * math.pi * t / 24)
    pressure = 1013 + torch.cumsum(torch.randn(rows, generator=g, dtype=torch.float64), 0) * 0.3
    temp = 12 + 6 * day + 4 * torch.sin(2 * math.pi * t / (24 * 30)) - 0.05 * (pressure - 1013)
    temp = temp + 0.5 * torch.randn(rows, generator=g, dtype=torch.float64)
    humidity = 70 - 2.5 * (temp - 12) + 2 * torch.randn(rows, generator=g, dtype=torch.float64)
    wind = (3 + 2 * torch.sin(2 * math.pi * t / 50) + torch.rand(rows, generator=g)).abs()
    start = datetime(2020, 1, 1)
    order = torch.randperm(rows, generator=g).tolist()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", newline="", encoding="utf-8") as f:
        out = csv.writer(f)
        out.writerow(["time", "temp", "humidity", "pressure", "wind"])
        for i in order:
            stamp = (start + timedelta(hours=i)).isoformat()
            out.writerow([stamp, *(f"{float(c[i]):.3f}" for c in (temp, humidity, pressure, wind))])
    tmp.replace(path)
    return path


class MultivariateCSVDataModule(DataModule):
    """Several numeric columns of a CSV file: windows of `features` (window, len(features)) ->
    the next `horizon` steps of `targets`, flattened step by step to (horizon * len(targets)).

    Rows in time order (`time_column`, or file order), split by time (train, val, test), each
    split windowed on its own. Each column is standardised with the training span's statistics;
    `unscale_targets` undoes it, so the regression metrics and plots are in the data's units.
    """

    def __init__(
        self,
        path: str | None = None,
        features: list[str] | None = None,
        targets: list[str] | None = None,
        time_column: str | None = None,
        window: int = 16,
        horizon: int = 1,
        splits: tuple[float, float, float] = (0.7, 0.15, 0.15),
        batch_size: int = 32,
        shuffle: bool = True,
        standardize: bool = True,
        num_workers: int = 0,
        in_memory: bool | str = "auto",
        shuffle_seed: int = 0,
        generate: int = 0,
        input_size: int | None = None,
        output_size: int | None = None,
        flat_input_size: int | None = None,
    ):
        super().__init__(
            batch_size,
            shuffle=shuffle,
            shuffle_seed=shuffle_seed,
            in_memory=in_memory,
            num_workers=num_workers,
        )
        if not path:
            raise ConfigError("data.path", "no CSV file given; pass data.path=/path/to/series.csv")
        if not features:
            raise ConfigError("data.features", "name the input columns, e.g. [temp, humidity]")
        if not targets:
            raise ConfigError("data.targets", "name the column(s) to predict, e.g. [temp]")
        require_positive("data.window", window)
        require_positive("data.horizon", horizon)
        self.save_hyperparameters()
        self.path, self.features, self.targets = (
            Path(path).expanduser(),
            list(features),
            list(targets),
        )
        self.time_column, self.window, self.horizon = time_column, int(window), int(horizon)
        self.splits = tuple(float(f) for f in splits)
        self.standardize = standardize
        self.input_size = len(self.features)
        self.output_size = self.horizon * len(self.targets)
        for key, given, real in (
            ("input_size", input_size, self.input_size),
            ("output_size", output_size, self.output_size),
            ("flat_input_size", flat_input_size, self.window * self.input_size),
        ):
            if given is not None and given != real:
                raise ConfigError(f"data.{key}", f"is derived from the columns ({real}); unset it")
        self.mean = torch.zeros(0)
        self.std = torch.ones(0)

    def example_input(self, n: int = 2) -> torch.Tensor:
        return torch.zeros(n, self.window, self.input_size)

    def encode(self, raw) -> Encoded:
        """Windows of feature rows (n, window, features) in the data's units -> model inputs."""
        x = torch.as_tensor(raw, dtype=torch.float32).reshape(-1, self.window, self.input_size)
        scaled = (x - self.mean[: self.input_size]) / self.std[: self.input_size]
        return Encoded((scaled,), None, x)

    def save_artifacts(self, run_dir) -> list[Path]:
        import json

        self.setup("fit")  # the scaling comes from the training span
        path = Path(run_dir) / "scaling.json"
        columns = [*self.features, *self.targets]
        path.write_text(
            json.dumps({"columns": columns, "mean": self.mean.tolist(), "std": self.std.tolist()})
        )
        return [path]

    def unscale_targets(self, values: torch.Tensor) -> torch.Tensor:
        """(..., horizon * targets) in standard units -> the targets' own units."""
        mean = self.mean[self.input_size :].to(values).repeat(self.horizon)
        std = self.std[self.input_size :].to(values).repeat(self.horizon)
        return values * std + mean

    def prepare_data(self) -> None:
        if self.hparams.generate and not self.path.is_file():
            write_weather_csv(self.path, int(self.hparams.generate), seed=self.shuffle_seed)

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        self.prepare_data()
        raw, _ = read_csv_columns(self.path, [*self.features, *self.targets], self.time_column)
        bounds = split_bounds(len(raw), self.splits)
        need = self.window + self.horizon
        for name, (start, end) in zip(SPLITS, bounds, strict=True):
            if end - start < need:
                raise ConfigError(
                    "data.window",
                    f"window {self.window} + horizon {self.horizon} = {need} rows do not fit in "
                    f"the {name} split of {self.path} ({end - start} of {len(raw)} rows)",
                )
        train = raw[bounds[0][0] : bounds[0][1]]
        if self.standardize:  # the training span's statistics only: no peeking ahead
            self.mean, self.std = train.mean(0), train.std(0).clamp(min=1e-8)
        else:
            self.mean, self.std = torch.zeros(raw.shape[1]), torch.ones(raw.shape[1])
        scaled = ((raw - self.mean) / self.std).float()
        self.mean, self.std = self.mean.float(), self.std.float()
        f = self.input_size
        for name, (start, end) in zip(SPLITS, bounds, strict=True):
            frames = scaled[start:end].unfold(0, need, 1)  # (n, columns, need)
            x = frames[:, :f, : self.window].transpose(1, 2).contiguous()
            y = frames[:, f:, self.window :].transpose(1, 2).reshape(len(frames), -1).contiguous()
            self.datasets[name] = TensorDataset(x, y)
        if self.batch_size > len(self.datasets["train"]):
            raise ConfigError(
                "data.batch_size",
                f"{self.batch_size} is larger than the {len(self.datasets['train'])} training "
                "windows; use a smaller batch size",
            )
