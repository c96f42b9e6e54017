"""Time series cut into (window -> horizon) samples: a generated sine wave, or columns of a
user's CSV file (`features` in, `targets` out: one or several of each).

The series is a table (time, column), split by time (train, then val, then test, never
shuffled across the split); each split is windowed on its own, so no window straddles two
splits. Sample t reads the feature columns of rows t .. t+window-1 -> x (window, features),
or (window,) with one feature, and predicts the target columns of the `horizon` rows after
it -> y (horizon * targets,), step by step. With `standardize`, each column is scaled by the
training span's mean and std (no peeking ahead); `decode` undoes it for targets, so metrics,
plots and predictions are in the data's own units.
"""

from __future__ import annotations

import csv
import difflib
import io
import math
import sys
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import TensorDataset

from nnlab.data.base import DataModule, Encoded
from nnlab.data.folds import fold_blocks
from nnlab.data.splits import split_sizes
from nnlab.errors import ConfigError, DataError, UserError
from nnlab.files import read_json, read_text
from nnlab.schema import (
    Encoding,
    Folds,
    InMemory,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
)

SPLITS = ("train", "val", "test")
SIZE_KEYS = ("input_size", "output_size", "flat_input_size", "num_targets", "target_features")


def make_windows(
    series: torch.Tensor, window: int, horizon: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs (N, window[, C]) and targets (N, horizon[, C]) of a series (T,) or table (T, C):
    sample t sees rows t .. t+window-1 and predicts the `horizon` rows that follow."""
    frames = series.unfold(0, window + horizon, 1)  # (N, [C,] window + horizon)
    if series.dim() == 2:
        frames = frames.transpose(1, 2)
    return frames[:, :window].contiguous(), frames[:, window:].contiguous()


def split_bounds(n: int, splits) -> list[tuple[int, int]]:
    """[start, end) indices of the train/val/test segments of a series of length n, in order:
    `splits` three fractions or three counts (data/splits.py)."""
    sizes = split_sizes(n, splits)
    ends = [sum(sizes[: i + 1]) for i in range(3)]
    starts = [0, *ends[:-1]]
    return list(zip(starts, ends, strict=True))


class SeriesDataModule(DataModule):
    """Windows over a table of columns; subclasses say where it comes from (`load_table`) and
    name its columns (`features`, `targets`; one unnamed column by default).

    `encode` reads a series a user gives (a CSV file, inline values for one column) into
    windows scaled as in training; `decode` brings outputs back to the targets' units."""

    # Sizes the models read, derived in conf/data/*.yaml (checked against the columns).
    schema_extra_keys = {
        "input_size": int | None,
        "num_targets": int | None,
        "output_size": int | None,
        "flat_input_size": int | None,
        "target_features": list[int] | None,
    }

    def __init__(
        self,
        window: PositiveInt = 4,
        horizon: PositiveInt = 1,
        # three fractions summing to 1, or three counts of points ([600, 0, 400])
        splits: tuple[NonNegativeFloat, NonNegativeFloat, NonNegativeFloat]
        | tuple[NonNegativeInt, NonNegativeInt, NonNegativeInt] = (0.7, 0.15, 0.15),
        batch_size: PositiveInt = 32,
        shuffle: bool = True,
        standardize: bool = False,
        num_workers: NonNegativeInt = 0,
        in_memory: InMemory = "auto",
        shuffle_seed: int = 0,
        folds: Folds | None = None,
        fold: NonNegativeInt = 0,
        column: str | None = None,
        features: list[str] | None = None,
        targets: list[str] | None = None,
        **sizes: Any,
    ):
        super().__init__(
            batch_size,
            shuffle=shuffle,
            shuffle_seed=shuffle_seed,
            in_memory=in_memory,
            num_workers=num_workers,
        )
        # three fractions summing to 1, or three counts of points ([600, 0, 400]: the first
        # 600 train, no validation, the next 400 test); val may be empty, train and test not
        splits = tuple(splits)
        split_sizes(sys.maxsize, splits)  # the form; the counts against the data in setup()
        if splits[2] == 0:
            raise ConfigError(
                "data.splits", f"the test split is empty ({list(splits)}); give it points"
            )
        self.window, self.horizon, self.splits = int(window), int(horizon), splits
        self.standardize, self.column = standardize, column
        self.folds, self.fold = folds, fold  # k-fold cross-validation (data/folds.py)
        self.features = list(features) if features else ["value"]
        self.targets = list(targets) if targets else list(self.features)
        self.input_size, self.num_targets = len(self.features), len(self.targets)
        self.output_size = self.horizon * self.num_targets
        self._check_sizes(sizes)
        self.table: torch.Tensor | None = None  # (T, columns), standardised if asked
        self.mean = torch.zeros(len(self.names))
        self.std = torch.ones(len(self.names))
        self.starts: dict[str, int] = {}  # row of each split's first target

    @property
    def series(self) -> torch.Tensor | None:
        """The scaled table: (T,) with one column, else (T, columns)."""
        if self.table is None or self.table.shape[1] > 1:
            return self.table
        return self.table[:, 0]

    @property
    def names(self) -> list[str]:
        """The table's columns: the features, then the targets that are not features."""
        return [*self.features, *(t for t in self.targets if t not in self.features)]

    @property
    def target_features(self) -> list[int] | None:
        """Where the targets sit among the features (a decoder starts from their last values);
        None when some target is not a feature."""
        if not set(self.targets) <= set(self.features):
            return None
        return [self.features.index(t) for t in self.targets]

    def _check_sizes(self, sizes: dict[str, Any]) -> None:
        """The data config's size keys (conf/data/*.yaml, read by the models) must be the ones
        the columns give: they are derived there, never typed."""
        if unknown := set(sizes) - set(SIZE_KEYS):
            raise ConfigError(f"data.{sorted(unknown)[0]}", "is not a key of the series data")
        real = {
            "input_size": self.input_size,
            "output_size": self.output_size,
            "flat_input_size": self.window * self.input_size,
            "num_targets": self.num_targets,
            "target_features": self.target_features,
        }
        for key, given in sizes.items():
            if (
                given is not None
                and (list(given) if key == "target_features" else given) != (real[key])
            ):
                raise ConfigError(
                    f"data.{key}", f"{given}, but the columns give {real[key]}; leave it derived"
                )

    # -- what subclasses provide -------------------------------------------------------------
    def load_table(self) -> torch.Tensor:
        """(T, len(names)) values in time order, float64."""
        raise NotImplementedError

    @property
    def source_name(self) -> str:
        return type(self).__name__

    def clean_series(self) -> torch.Tensor | None:
        """The series without its noise, where it is known (figures draw it); else None."""
        return None

    # -- the protocol (data/base.py) -----------------------------------------------------------
    def example_input(self, n: int = 2) -> torch.Tensor:
        shape = (self.window,) if self.input_size == 1 else (self.window, self.input_size)
        return torch.zeros(n, *shape)

    def scale(self, values: torch.Tensor) -> torch.Tensor:
        """A table (T, columns) in the data's units -> what the network reads."""
        return (values - self.mean.to(values)) / self.std.to(values)

    def decode(self, outputs: torch.Tensor) -> torch.Tensor:
        """Outputs or targets (..., steps * targets) back to the targets' own units."""
        index = [self.names.index(t) for t in self.targets]
        mean, std = self.mean[index].to(outputs), self.std[index].to(outputs)
        shape = outputs.shape
        return (outputs.reshape(*shape[:-1], -1, self.num_targets) * std + mean).reshape(shape)

    def inputs(self, table: torch.Tensor, horizon: int = 0):
        """A scaled table (T, columns) -> windows x (N, window[, features]) and targets
        y (N, horizon * targets)."""
        x, y = make_windows(table, self.window, horizon)
        x = x[..., [self.names.index(f) for f in self.features]]
        if self.input_size == 1:  # one feature: (N, window), as the univariate models read it
            x = x[..., 0]
        y = y[..., [self.names.index(t) for t in self.targets]].reshape(len(y), -1)
        return x.contiguous(), y.contiguous()

    def save_artifacts(self, run_dir: Path) -> list[Path]:
        """`series.json`: the columns and the training span's scaling, so that predictions on
        new inputs need neither the training file nor the generator."""
        import json

        self.setup("fit")
        path = Path(run_dir) / "series.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = {"features": self.features, "targets": self.targets}
        meta.update(mean=self.mean.tolist(), std=self.std.tolist())
        path.write_text(json.dumps(meta, indent=1), encoding="utf-8")
        return [path]

    def load_artifacts(self, run_dir: Path) -> None:

        path = Path(run_dir) / "series.json"
        if not path.is_file():  # a run from before series.json: from the data
            return super().load_artifacts(run_dir)
        meta = read_json(path, "run", "run's series.json")
        self.features, self.targets = list(meta["features"]), list(meta["targets"])
        self.mean, self.std = torch.tensor(meta["mean"]), torch.tensor(meta["std"])

    def encode(self, raw: Any) -> Encoded:
        """A series -> its windows, scaled, one per position with `window` rows before it.
        `raw`: None (the test split, with the window before it), a CSV file (the feature
        columns; target columns and the time column when it has them), inline values
        "0.1,0.2,..." or numbers (one column). `Encoded.raw`: the table (T, columns) in the
        data's units, float64, NaN where a target column was not given."""
        if raw is None:  # the run's own test split, with the window before it
            if self.table is None:
                self.setup("predict")
            scaled = self.table[self.starts["test"] - self.window :]
            values = (scaled * self.std + self.mean).double()
        else:
            values = self.read_table(raw)
            scaled = self.scale(values.float())  # as setup() scales the training table
        if len(values) < self.window:
            unit = "values" if len(self.names) == 1 else "rows"
            raise UserError(
                f"input: {len(values)} {unit} given, but the model reads windows of "
                f"{self.window}; give at least {self.window} {unit}"
            )
        windows, _ = self.inputs(scaled)
        names = [str(i + self.window) for i in range(len(windows))]  # the row each predicts
        return Encoded((windows,), names, values)

    def read_table(self, raw: Any) -> torch.Tensor:
        """A CSV file, inline values "0.1,0.2,..." or numbers, as a (T, columns) float64 table."""
        if isinstance(raw, torch.Tensor):
            raw = raw.double()
            return raw.unsqueeze(-1) if raw.dim() == 1 else raw
        if not isinstance(raw, str | Path):
            raw = ",".join(map(str, raw))
        text = str(raw)
        path = Path(text).expanduser()
        try:
            is_file = path.is_file()
        except OSError:  # a long list of values is no file name
            is_file = False
        if is_file:
            return self.read_file(path)
        if len(self.names) > 1:
            raise UserError(
                f"input: {text!r} is no file; this run reads the columns "
                f"{', '.join(self.features)}: give a CSV file with them"
            )
        try:
            values = [float(v) for v in text.replace(";", ",").split(",") if v.strip()]
        except ValueError:
            raise UserError(
                f"input: {text!r} is neither a file nor comma-separated numbers; give a CSV "
                "file or values like input=0.1,0.2,0.3,0.4"
            ) from None
        if not values or not all(math.isfinite(v) for v in values):
            raise UserError(f"input: {text!r} holds no finite numbers")
        return torch.tensor(values, dtype=torch.float64).unsqueeze(-1)

    def read_file(self, path: Path) -> torch.Tensor:
        """A user's CSV file: one column (`column`, or the file's only one) for a univariate
        series; else the feature columns (targets that are not features when it has them)."""
        if (
            len(self.names) == 1
        ):  # the run's column, data.column (predict's column=) or the only one
            name = self.column or (self.features[0] if getattr(self, "named", False) else None)
            encoding = getattr(self, "encoding", None)
            return read_csv_columns(path, [name] if name else None, key="input", encoding=encoding)[
                0
            ]
        encoding = getattr(self, "encoding", None)
        header = csv_header(path, "input", encoding)
        optional = [t for t in self.targets if t not in self.features and t not in header]
        time_column = getattr(self, "time_column", None)
        values, _ = read_csv_columns(
            path,
            [c for c in self.names if c not in optional],
            time_column if time_column in header else None,
            keys={f: "input" for f in self.features},
            key="input",
            encoding=encoding,
        )
        table = torch.full((len(values), len(self.names)), math.nan, dtype=torch.float64)
        table[:, [self.names.index(c) for c in self.names if c not in optional]] = values
        return table

    # -- Lightning hooks ---------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        if self.table is not None:
            return
        raw = self.load_table().to(torch.float32)
        bounds = split_bounds(len(raw), self.splits)
        segments = {name: [b] for name, b in zip(SPLITS, bounds, strict=True)}
        if self.folds:  # k-fold in time blocks over train + val; the test segment stays
            segments["train"], val = fold_blocks(bounds[1][1], self.folds, self.fold)
            segments["val"] = [val]
        need = self.window + self.horizon
        for name, parts in segments.items():
            if name == "val" and all(end == start for start, end in parts):
                continue  # no validation split (data.splits [600, 0, 400])
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
            self.mean, self.std = train.mean(0), train.std(0).clamp(min=1e-8)
        self.table = self.scale(raw)
        for name, parts in segments.items():  # windows never straddle two segments
            windows = [
                self.inputs(self.table[start:end], self.horizon)
                for start, end in parts
                if end - start >= need
            ]
            if not windows:  # an empty validation split: no windows, the shapes of some
                windows = [tuple(t[:0] for t in self.inputs(self.table[:need], self.horizon))]
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
        num_points: PositiveInt = 1000,
        freq: PositiveFloat = 0.01,
        noise: NonNegativeFloat = 0.2,
        seed: int = 0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.save_hyperparameters()
        self.num_points, self.freq, self.noise, self.seed = int(num_points), freq, noise, seed

    @property
    def source_name(self) -> str:
        return f"the sine series (data.num_points={self.num_points})"

    def clean_series(self) -> torch.Tensor:
        return torch.sin(self.freq * torch.arange(self.num_points, dtype=torch.float64))

    def load_table(self) -> torch.Tensor:
        generator = torch.Generator().manual_seed(self.seed)
        noise = torch.randn(self.num_points, generator=generator, dtype=torch.float64)
        return (self.clean_series() + self.noise * noise).unsqueeze(-1)


class CSVSeriesDataModule(SeriesDataModule):
    """Columns of a CSV file with a header row: `features` in, `targets` out (the targets by
    default: each predicted from its own past), or one `column` (or the file's only column)
    as both. Rows in `time_column` order (a number or ISO date/time), else in file order."""

    def __init__(
        self,
        path: str | None = None,
        column: str | None = None,
        features: list[str] | None = None,
        targets: list[str] | None = None,
        time_column: str | None = None,
        generate: NonNegativeInt = 0,
        encoding: Encoding | None = None,
        **kwargs,
    ):
        if not path:
            raise ConfigError("data.path", "no CSV file given; pass data.path=/path/to/series.csv")
        if column is not None and (features or targets):
            raise ConfigError(
                "data.column",
                "name the columns either with data.column (one series) or with data.features "
                "and data.targets, not both",
            )
        if features is not None and targets is None:
            raise ConfigError(
                "data.targets", "name the column(s) to predict, e.g. data.targets=[temp]"
            )
        for key, names in (("data.features", features), ("data.targets", targets)):
            if names is None:
                continue
            if isinstance(names, str) or not len(names):
                raise ConfigError(key, f"a list of one or more column names, got {names!r}")
            if repeated := sorted({n for n in names if list(names).count(n) > 1}):
                raise ConfigError(key, f"names {repeated[0]!r} more than once")
            if time_column is not None and time_column in names:
                raise ConfigError(
                    key,
                    f"holds the time column {time_column!r} (data.time_column), which orders the "
                    "rows; it is no value to learn from or predict",
                )
        if column is not None:
            features = targets = [column]
        super().__init__(column=column, features=features, targets=targets, **kwargs)
        self.save_hyperparameters()
        self.path, self.time_column = Path(path).expanduser(), time_column
        self.generate, self.named = int(generate), features is not None
        self.encoding = encoding  # null: UTF-8, with or without a byte-order mark

    @property
    def source_name(self) -> str:
        return f"{self.path} (columns {', '.join(self.names)})"

    def prepare_data(self) -> None:
        if self.generate and not self.path.is_file():
            write_weather_csv(self.path, self.generate, seed=self.shuffle_seed)

    def load_table(self) -> torch.Tensor:
        self.prepare_data()
        keys = {f: "data.features" for f in self.features}
        keys.update({t: "data.targets" for t in self.targets if t not in self.features})
        if self.column is not None:
            keys = {self.column: "data.column"}
        values, header = read_csv_columns(
            self.path,
            self.names if self.named else None,
            self.time_column,
            keys,
            encoding=self.encoding,
        )
        if not self.named:  # the file's only column
            self.features = self.targets = [header[0]]
        return values


def _csv_rows(path: Path, key: str, encoding: str | None) -> list[list[str]]:
    """The rows of a CSV file as users have it: UTF-8 with or without a BOM, gzip, or the
    declared encoding (nnlab.files); errors name the file, the line and the fix."""
    if not path.exists() and not path.is_symlink():
        raise DataError(f"{key}: CSV file not found: {path}; check the path ({key}=...)")
    text = read_text(path, key, encoding)
    rows = list(csv.reader(io.StringIO(text, newline="")))
    header = [h.strip() for h in rows[0]] if rows else []
    if not any(header):
        raise DataError(f"{key}: {path} is empty; it needs a header row and values")
    if all(_is_number(h) for h in header):
        raise DataError(
            f"{key}: {path} line 1: the header row ({', '.join(header)}) holds numbers, not "
            "column names; add a first line naming the columns (e.g. value)"
        )
    return [header, *rows[1:]]


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def csv_header(path: Path, key: str = "data.path", encoding: str | None = None) -> list[str]:
    return _csv_rows(path, key, encoding)[0]


def read_csv_columns(
    path: Path,
    columns: list[str] | None,
    time_column: str | None = None,
    keys: dict[str, str] | None = None,
    key: str = "data.path",
    encoding: str | None = None,
) -> tuple[torch.Tensor, list[str]]:
    """(rows, len(columns)) float64 values in time order (by `time_column`, a number or an ISO
    date/time, when given; else file order), and the header. `columns` None: the file's only
    column. Errors name the file, line and column, and the config key (`keys[column]`,
    default data.column) a missing column came from; `key` names the file's own setting."""
    from datetime import datetime

    header, *body = _csv_rows(path, key, encoding)
    if columns is None:
        if len(header) != 1:
            raise ConfigError(
                "data.column",
                f"{path} has {len(header)} columns ({', '.join(header)}); "
                "choose one with data.column=NAME",
            )
        columns = header
    wanted = [*columns, *([time_column] if time_column else [])]
    for name in wanted:
        if name not in header:
            column_key = "data.time_column" if name == time_column else (keys or {}).get(name)
            close = difflib.get_close_matches(str(name), header, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigError(
                column_key or "data.column",
                f"no column {name!r} in {path}; its columns are: {', '.join(header)}{hint}",
            )
    index = [header.index(c) for c in columns]
    rows, times = [], []
    for line_no, row in enumerate(body, start=2):
        if not row or not any(cell.strip() for cell in row):
            continue  # blank lines carry nothing
        values = []
        for c, i in zip(columns, index, strict=True):
            cell = row[i].strip() if i < len(row) else ""
            try:
                value = float(cell)
            except ValueError:
                value = math.nan
            if not math.isfinite(value):
                raise DataError(
                    f"{key}: {path} line {line_no}: {cell!r} in column {c!r} is not a number "
                    "(or not finite); fill or drop missing values first"
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
        raise DataError(f"{key}: {path} has no values below its header")
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
