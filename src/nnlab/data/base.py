"""The data module protocol: what every nnlab data set implements, and what the commands
(nnlab-train, -eval, -predict, -export) and the callbacks call instead of asking for types.

| member                      | what it is                                                       |
|-----------------------------|------------------------------------------------------------------|
| `datasets`                  | `{"train", "val", "test"}` -> TensorDataset, filled by `setup`   |
| `*_dataloader()`            | batches of those tensors (`data/memory.make_loader`), defined here |
| `batch_size`, `eval_batch_size` | training / evaluation batch sizes                            |
| `example_input(n=2)`        | `n` zero samples shaped as the network reads them               |
| `encode(raw)`               | raw user inputs (files, texts, values) -> `Encoded` model inputs |
| `batch_transform(batch)`    | the on-device transform of a batch (Lightning's `on_after_batch_transfer`) |
| `decode(outputs)`           | network outputs -> the data's own units                         |
| `save_artifacts(run_dir)`   | files a trained run needs later (nnlab-train calls it at start) |
| `load_artifacts(run_dir)`   | makes `encode`/`decode` work for that run (nnlab-predict)       |
| `to_image(x)`               | inputs back as (N, H, W) images for figures, None if not images |
| `num_classes`, `classes`, `columns` | classification data: class count, names, CSV column names |
| `horizon`                   | forecasting data: values predicted per window                   |
| `input_names`, `target_names` | what each tensor of a batch is, by name (model=graph, task=multi_output) |

A batch is a tuple `(*inputs, *targets)`: one target unless `target_names` names several. The
names are what model=graph wires by (`${nnlab.inputs:${data}}`) and task=multi_output scores by
(`${nnlab.targets:${data}}`); `batch_names` gives them for any data module.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

import lightning as L
import torch
from torch.utils.data import TensorDataset

from nnlab.data.memory import MicroBatches, make_loader
from nnlab.schema import InMemory, NonNegativeInt, PositiveInt


def read_numbers(path: Path, key: str = "input") -> torch.Tensor:
    """The numbers of a user's `.npy` array, or of a CSV/text file (a header row of names is
    skipped), as a float32 tensor: how the data modules' `encode` read numeric input files."""
    import numpy as np

    from nnlab.errors import UserError

    if path.suffix == ".npy":
        try:
            array = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise UserError(f"{key}: {path} is not a readable .npy array ({exc})") from None
    else:
        lines = [ln for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
        rows = [ln.replace(";", ",").split(",") for ln in lines]
        try:
            [float(v) for v in rows[0]] if rows else None
        except ValueError:
            rows = rows[1:]  # a header row
        try:
            array = np.array([[float(v) for v in row] for row in rows], dtype=np.float32)
        except ValueError:
            raise UserError(
                f"{key}: {path} holds something that is not a number, or rows of different "
                "lengths; give comma-separated numbers (a header row is allowed)"
            ) from None
    if array.size == 0 or not np.issubdtype(array.dtype, np.number):
        raise UserError(f"{key}: {path} holds no numbers")
    values = torch.as_tensor(array, dtype=torch.float32)
    if not torch.isfinite(values).all():
        raise UserError(f"{key}: {path} holds NaN or infinite values; fill or drop them first")
    return values


def input_file(raw: Any) -> Path | None:
    """`raw` as an existing file, else None (inline values, texts, arrays)."""
    if not isinstance(raw, str | Path):
        return None
    path = Path(raw).expanduser()
    try:
        return path if path.is_file() else None
    except OSError:  # a long list of values is no file name
        return None


class Encoded(NamedTuple):
    """What `encode` makes of raw inputs."""

    inputs: tuple[torch.Tensor, ...]  # the network's inputs, batch first, before batch_transform
    names: list[str] | None = None  # one name per sample (file, review) for a predictions table
    raw: Any = None  # what was read, in the data's own units (series values, images, texts)


class DataModule(L.LightningDataModule):
    """A LightningDataModule whose splits are tensors, with the nnlab protocol above."""

    # What a sample's target is, checked against the task before anything trains
    # (tasks/base.py): "classes" (a class index), "labels" (k-hot), "values" (real numbers),
    # "tokens" (the next token at every step).
    target_kind: str = "values"
    num_classes: int | None = None
    classes: list[str] | None = None
    columns: tuple[str, str] = ("input", "class")  # predictions.csv: a sample's name, its class
    horizon: int | None = None
    micro_batches = 1  # batches per training batch: group_training_batches
    # The names of a batch's inputs, in order (None: `input`, or input_1, input_2, ...), and of
    # its targets when there are several (None: one target, the batch's last tensor).
    input_names: tuple[str, ...] | None = None
    target_names: tuple[str, ...] | None = None

    def __init__(
        self,
        batch_size: PositiveInt,
        eval_batch_size: PositiveInt | None = None,
        shuffle: bool = True,
        shuffle_seed: int = 0,
        in_memory: InMemory = "auto",
        num_workers: NonNegativeInt = 0,
    ):
        super().__init__()
        self.batch_size = int(batch_size)
        self.eval_batch_size = int(eval_batch_size or batch_size)
        self.shuffle, self.shuffle_seed = shuffle, int(shuffle_seed)
        self.in_memory, self.num_workers = in_memory, num_workers
        self.datasets: dict[str, TensorDataset] = {}

    # -- what each data set provides ---------------------------------------------------------
    def example_input(self, n: int = 2) -> torch.Tensor | tuple[torch.Tensor, ...]:
        raise NotImplementedError

    def encode(self, raw: Any) -> Encoded:
        raise NotImplementedError

    def batch_transform(self, batch: Any) -> Any:
        """A batch `(inputs..., [targets])` as the network reads it, on its device: the one
        place where stored data become network inputs (training, evaluation, export, predict)."""
        return batch

    def decode(self, outputs: torch.Tensor) -> torch.Tensor:
        return outputs

    def save_artifacts(self, run_dir: Path) -> list[Path]:
        """Write what predictions need besides the checkpoint into `run_dir`; the files."""
        return []

    def load_artifacts(self, run_dir: Path) -> None:
        """Ready `encode`/`decode` for the run in `run_dir`: by default from the data itself
        (normalisation statistics, the test split)."""
        self.prepare_data()
        self.setup("predict")

    def to_image(self, x: torch.Tensor) -> torch.Tensor | None:
        return None

    def group_training_batches(self, n: int) -> None:
        """Make each training batch `n` batches of `batch_size` in a row (a `MicroBatches`
        group, fewer where a group would pass 48 MB): the fused loop trains on them one step
        each. n=1: plain batches again."""
        self.micro_batches = int(n)

    # -- Lightning -----------------------------------------------------------------------------
    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        if isinstance(batch, MicroBatches):
            # the fused loop transforms each micro-batch as it trains on it: one batch's
            # transformed copy at a time (IMDB's floats of 3 x 512 multi-hot rows: 61 MB,
            # page-faulted in anew at every group)
            return batch
        return self.batch_transform(batch)

    def _loader(self, split: str, shuffle: bool = False):
        train = split == "train"
        if len(self.datasets[split]) == 0:  # no such split (data.splits [600, 0, 400]): no batches
            from torch.utils.data import DataLoader

            return DataLoader(self.datasets[split], batch_size=1)
        return make_loader(
            self,
            self.datasets[split].tensors,
            self.batch_size if train else self.eval_batch_size,
            shuffle,
            in_memory=self.in_memory,
            seed=self.shuffle_seed,
            num_workers=self.num_workers,
            micro_batches=self.micro_batches if train else 1,
        )

    def train_dataloader(self):
        return self._loader("train", shuffle=self.shuffle)

    def val_dataloader(self):
        return self._loader("val")

    def test_dataloader(self):
        return self._loader("test")

    def predict_dataloader(self):
        return self._loader("test")


def batch_names(datamodule: Any) -> tuple[list[str], list[str] | None]:
    """(input names, target names or None) of `datamodule`'s batches; unnamed inputs are
    `input` (one) or `input_1`, `input_2`, ... (the example input says how many)."""
    targets = getattr(datamodule, "target_names", None)
    names = getattr(datamodule, "input_names", None)
    if names is None:
        example = datamodule.example_input(1)
        count = len(example) if isinstance(example, tuple | list) else 1
        names = ["input"] if count == 1 else [f"input_{i + 1}" for i in range(count)]
    return list(names), (list(targets) if targets else None)
