"""Time series cut into (window -> horizon) samples: generated sine waves or a user's CSV column.

The series is split by time (train, then val, then test, never shuffled across the split) and
each split is windowed on its own, so no window straddles two splits.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import TensorDataset

from nnlab.data.memory import make_loader
from nnlab.errors import ConfigError, DataError, require_positive

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


class SeriesDataModule(L.LightningDataModule):
    """Windows over one univariate series; subclasses say where the series comes from."""

    micro_batches = 1  # batches per training batch, set by the fused loop (tasks/loops.py)

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
    ):
        super().__init__()
        require_positive("data.window", window)
        require_positive("data.horizon", horizon)
        require_positive("data.batch_size", batch_size)
        splits = tuple(float(f) for f in splits)
        if len(splits) != 3 or any(f <= 0 for f in splits) or not math.isclose(sum(splits), 1.0):
            raise ConfigError(
                "data.splits", f"need three positive fractions summing to 1, got {list(splits)}"
            )
        self.window, self.horizon, self.splits = int(window), int(horizon), splits
        self.batch_size, self.shuffle, self.standardize = int(batch_size), shuffle, standardize
        self.num_workers, self.in_memory, self.shuffle_seed = num_workers, in_memory, shuffle_seed
        self.series: torch.Tensor | None = None  # the whole series, standardised if asked
        self.mean, self.std = 0.0, 1.0
        self.datasets: dict[str, TensorDataset] = {}
        self.starts: dict[str, int] = {}  # index in `series` of each split's first target

    # -- what subclasses provide -------------------------------------------------------------
    def load_series(self) -> torch.Tensor:
        raise NotImplementedError

    @property
    def source_name(self) -> str:
        return type(self).__name__

    # -- shapes the models are sized from ----------------------------------------------------
    def example_input(self, batch_size: int = 2) -> torch.Tensor:
        return torch.zeros(batch_size, self.window)

    # -- Lightning hooks ---------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        if self.series is not None:
            return
        raw = self.load_series().to(torch.float32)
        bounds = split_bounds(len(raw), self.splits)
        need = self.window + self.horizon
        for name, (start, end) in zip(SPLITS, bounds, strict=True):
            if end - start < need:
                raise ConfigError(
                    "data.window",
                    f"window {self.window} + horizon {self.horizon} = {need} points do not fit in "
                    f"the {name} split of {self.source_name}, which has {end - start} of its "
                    f"{len(raw)} points; use a smaller window/horizon or a longer series",
                )
        if self.standardize:  # statistics of the training segment only: no peeking ahead
            train = raw[bounds[0][0] : bounds[0][1]]
            self.mean, self.std = train.mean().item(), max(train.std().item(), 1e-8)
        self.series = (raw - self.mean) / self.std
        for name, (start, end) in zip(SPLITS, bounds, strict=True):
            x, y = make_windows(self.series[start:end], self.window, self.horizon)
            self.datasets[name] = TensorDataset(x, y)
            self.starts[name] = start + self.window
        train_size = len(self.datasets["train"])
        if self.batch_size > train_size:
            raise ConfigError(
                "data.batch_size",
                f"batch size {self.batch_size} is larger than the {train_size} training windows; "
                "use a smaller batch size",
            )

    def _loader(self, split: str, shuffle: bool = False):
        return make_loader(
            self,
            self.datasets[split].tensors,
            self.batch_size,
            shuffle,
            in_memory=self.in_memory,
            seed=self.shuffle_seed,
            num_workers=self.num_workers,
            micro_batches=self.micro_batches if split == "train" else 1,
        )

    def train_dataloader(self):
        return self._loader("train", shuffle=self.shuffle)

    def val_dataloader(self):
        return self._loader("val")

    def test_dataloader(self):
        return self._loader("test")

    def predict_dataloader(self):
        return self._loader("test")

    def unscale(self, values: torch.Tensor) -> torch.Tensor:
        """Back to the series' own units (undoes the standardisation)."""
        return values * self.std + self.mean


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

    def __init__(self, path: str | None = None, column: str | None = None, **kwargs):
        super().__init__(**kwargs)
        self.save_hyperparameters()
        if not path:
            raise ConfigError("data.path", "no CSV file given; pass data.path=/path/to/series.csv")
        self.path, self.column = Path(path).expanduser(), column

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
