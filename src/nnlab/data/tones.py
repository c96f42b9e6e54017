"""Generated multi-label sequences: each sample is noise plus a random subset of `num_labels`
tones (sinusoids of distinct frequencies and random phase) over `steps` steps; its target is
the k-hot vector of the tones present (none, one or several). Sizes are config keys, so models
are sized from `data.num_labels` / `data.input_size`. Batches `(x, y)`: x (batch, steps, 1),
y (batch, num_labels) float 0/1. Splits by a seeded draw."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Annotated, Literal

import torch
from pydantic import Field
from torch.utils.data import TensorDataset

from nnlab.data.base import DataModule, Encoded, input_file, read_numbers
from nnlab.errors import ConfigError, UserError
from nnlab.schema import InMemory, NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt


class TonesDataModule(DataModule):
    target_kind = "labels"

    def __init__(
        self,
        input_size: Literal[1] = 1,  # the tones are univariate
        num_samples: PositiveInt = 2000,
        steps: PositiveInt = 32,
        num_labels: PositiveInt = 4,
        p_present: Annotated[float, Field(gt=0, lt=1)] = 0.4,
        noise: NonNegativeFloat = 0.3,
        splits: tuple[PositiveFloat, PositiveFloat, PositiveFloat] = (0.7, 0.15, 0.15),
        batch_size: PositiveInt = 64,
        seed: int = 0,
        num_workers: NonNegativeInt = 0,
        in_memory: InMemory = "auto",
    ):
        super().__init__(
            batch_size, shuffle_seed=seed, in_memory=in_memory, num_workers=num_workers
        )
        self.input_size = 1
        if not math.isclose(sum(splits), 1.0):
            raise ConfigError(
                "data.splits", f"need three positive fractions summing to 1: {splits}"
            )
        self.save_hyperparameters()
        self.num_samples, self.steps, self.num_labels = (
            int(num_samples),
            int(steps),
            int(num_labels),
        )
        self.p_present, self.noise, self.splits = p_present, noise, tuple(splits)
        self.seed = int(seed)

    def example_input(self, n: int = 2) -> torch.Tensor:
        return torch.zeros(n, self.steps, 1)

    @property
    def classes(self) -> list[str]:
        """Label k: the tone of k + 1 cycles over the sequence."""
        return [f"tone{k + 1}" for k in range(self.num_labels)]

    def encode(self, raw) -> Encoded:
        """Sequences of `steps` numbers -> model inputs (n, steps, 1). `raw`: a `.npy` array
        (n, steps) or (n, steps, 1), a CSV file with one sequence per row (a header row is
        allowed), inline values "0.1,0.2,..." (one sequence) or an array."""
        path = input_file(raw)
        if path is not None:
            x = read_numbers(path)
            names = [f"{path.name}:{i}" for i in range(len(x))] if x.dim() > 1 else None
        elif isinstance(raw, str):
            try:
                x = torch.tensor([float(v) for v in raw.split(",") if v.strip()])
            except ValueError:
                raise UserError(
                    f"input: {raw!r} is neither a file nor comma-separated numbers"
                ) from None
            names = None
        else:
            x, names = torch.as_tensor(raw, dtype=torch.float32), None
        if x.dim() == 3 and x.shape[-1] == 1:
            x = x[..., 0]
        if x.dim() == 1:
            x = x.unsqueeze(0)
        if x.dim() != 2 or x.shape[1] != self.steps:
            raise UserError(
                f"input: sequences of shape {tuple(x.shape)}; this run reads {self.steps} "
                f"values per sequence (data.steps): one sequence per row"
            )
        return Encoded((x.unsqueeze(-1),), names or [str(i) for i in range(len(x))], x)

    def save_artifacts(self, run_dir) -> list[Path]:
        path = Path(run_dir) / "labels.json"
        path.write_text(json.dumps({"labels": self.frequencies().tolist()}))
        return [path]

    def frequencies(self) -> torch.Tensor:
        """Label k's tone: k + 1 cycles over the sequence (distinct, all below Nyquist)."""
        return torch.arange(1, self.num_labels + 1, dtype=torch.float32)

    def generate(self) -> tuple[torch.Tensor, torch.Tensor]:
        g = torch.Generator().manual_seed(self.seed)
        n, k = self.num_samples, self.num_labels
        y = (torch.rand(n, k, generator=g) < self.p_present).float()
        phase = torch.rand(n, k, 1, generator=g) * 2 * math.pi
        t = torch.arange(self.steps, dtype=torch.float32) / self.steps
        tones = torch.sin(2 * math.pi * self.frequencies()[None, :, None] * t + phase)
        x = (y[..., None] * tones).sum(1) + self.noise * torch.randn(n, self.steps, generator=g)
        return x[..., None], y

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        x, y = self.generate()
        ends = [round(self.num_samples * sum(self.splits[: i + 1])) for i in range(3)]
        starts = [0, *ends[:-1]]
        for name, a, b in zip(("train", "val", "test"), starts, ends, strict=True):
            self.datasets[name] = TensorDataset(x[a:b], y[a:b])
        if self.batch_size > len(self.datasets["train"]):
            raise ConfigError("data.batch_size", "larger than the training set; use a smaller one")
