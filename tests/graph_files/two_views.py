"""A data module of the user's own with two inputs and two targets by name (tests/test_graph.py):
`table` 6 numbers and `series` 5 steps of 2 features per sample; targets `positive` (whether the
table's numbers sum above 0: a class) and `level` (the series' mean: a value)."""

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import TensorDataset

from nnlab.data.base import DataModule, Encoded
from nnlab.errors import UserError


def samples(n: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    table = torch.randn(n, 6, generator=g)
    series = torch.randn(n, 5, 2, generator=g)
    return table, series, (table.sum(1) > 0).long(), series.mean((1, 2))


class TwoViews(DataModule):
    target_kind = "outputs"
    input_names = ("table", "series")
    target_names = ("positive", "level")

    def __init__(self, n: int = 256, batch_size: int = 32, seed: int = 0):
        super().__init__(batch_size)
        self.n, self.seed = n, seed

    def example_input(self, n: int = 2):
        return torch.zeros(n, 6), torch.zeros(n, 5, 2)

    def setup(self, stage=None):
        if self.datasets:
            return
        for i, split in enumerate(("train", "val", "test")):
            size = self.n if split == "train" else self.n // 4
            self.datasets[split] = TensorDataset(*samples(size, self.seed + i))

    def encode(self, raw):
        """An .npz file with arrays `table` (N, 6) and `series` (N, 5, 2)."""
        if raw is None or not Path(str(raw)).is_file():
            raise UserError(f"input: give an .npz file with table and series arrays, got {raw!r}")
        arrays = np.load(raw)
        inputs = tuple(torch.as_tensor(arrays[k], dtype=torch.float32) for k in self.input_names)
        return Encoded(inputs, [f"row{i}" for i in range(len(inputs[0]))])
