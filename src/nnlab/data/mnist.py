"""MNIST and Fashion-MNIST through torchvision, read once into tensors, in four views.

torchvision's `MNIST` / `FashionMNIST` classes find, download and parse the IDX files
(`<data_dir>/MNIST/raw/train-images-idx3-ubyte`, ...); their `.data` / `.targets` tensors are
then scaled to [0, 1] (and optionally normalised by the training split's mean and std) and
reshaped for the view in one go, instead of a per-sample PIL transform:

- `rows`:     (28 steps, 28 features), the reference recipe's "image as a sequence of rows";
- `pixels`:   (784 steps, 1 feature), "sequential MNIST";
- `permuted`: `pixels` in a fixed, seeded permutation ("pMNIST");
- `image`:    (1, 28, 28) images for convolutional networks.

A seeded validation split is carved from the 60,000 training images (55,000 / 5,000 by default);
the official 10,000 test images are the test split. Batches are `(x, y)`: x float32, y int64.

`targets: [digit, even, ink]` (any of them, in that order or another) gives several targets by
name instead, for task=multi_output: `digit` the class, `even` 1 when the class is even (a
binary target), `ink` the image's mean grey level in [0, 1] (its "pixel mass", a regression
target). Batches are then `(x, *targets)`.
"""

from __future__ import annotations

import gzip
import shutil
import zlib
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import TensorDataset
from torchvision import datasets as tv_datasets

from nnlab.data.base import DataModule, Encoded
from nnlab.data.folds import fold_indices
from nnlab.data.views import HEIGHT, MNIST_VIEWS, NUM_CLASSES, PIXELS, WIDTH
from nnlab.errors import ConfigError, DataError, UserError
from nnlab.schema import Folds, InMemory, NonNegativeInt, PositiveInt

DATASETS = {"mnist": tv_datasets.MNIST, "fashion_mnist": tv_datasets.FashionMNIST}
TARGETS = ("digit", "even", "ink")  # data.targets: what each sample's targets may be
# The four files torchvision reads from <data_dir>/<MNIST|FashionMNIST>/raw, and their IDX rank.
FILES = {
    "train-images-idx3-ubyte": 3,
    "train-labels-idx1-ubyte": 1,
    "t10k-images-idx3-ubyte": 3,
    "t10k-labels-idx1-ubyte": 1,
}
SOURCES = {
    "mnist": "https://ossci-datasets.s3.amazonaws.com/mnist/ (or http://yann.lecun.com/exdb/mnist/)",
    "fashion_mnist": "https://github.com/zalandoresearch/fashion-mnist (data/fashion/)",
}


class MNISTDataModule(DataModule):
    """`encode` reads images a user gives (an IDX file, a folder of PNGs, a .npy array, or
    arrays) into this view, exactly as the training images are; `to_image` turns it back."""

    target_kind = "classes"

    def __init__(
        self,
        data_dir: str = "data",
        dataset: Literal["mnist", "fashion_mnist"] = "mnist",
        view: Literal["rows", "pixels", "permuted", "image"] = "rows",
        download: bool = True,
        normalize: bool = False,
        val_size: NonNegativeInt = 5000,  # 0: no validation split
        split_seed: int = 0,
        permutation_seed: int = 0,
        batch_size: PositiveInt = 128,
        eval_batch_size: PositiveInt | None = None,
        shuffle: bool = True,
        num_workers: NonNegativeInt = 0,
        in_memory: InMemory = "auto",
        folds: Folds | None = None,
        fold: NonNegativeInt = 0,
        # Shapes for interpolation into the model config; derived from `view`, checked here.
        seq_len: int | None = None,
        input_size: int | None = None,
        num_classes: int = NUM_CLASSES,
        channels: int = 1,
        image_size: int = HEIGHT,
        targets: list[Literal["digit", "even", "ink"]] | None = None,
    ):
        super().__init__(
            batch_size,
            eval_batch_size,
            shuffle=shuffle,
            shuffle_seed=split_seed,  # (one fixed order whatever the run's seed, as the split)
            in_memory=in_memory,
            num_workers=num_workers,
        )
        self.save_hyperparameters()
        self.folds, self.fold = folds, fold  # k-fold cross-validation (data/folds.py)
        derived = {**MNIST_VIEWS[view], "num_classes": NUM_CLASSES, "channels": 1}
        derived["image_size"] = HEIGHT
        given = {
            "seq_len": seq_len,
            "input_size": input_size,
            "num_classes": num_classes,
            "channels": channels,
            "image_size": image_size,
        }
        for key, value in given.items():
            if value is not None and value != derived[key]:
                raise ConfigError(
                    f"data.{key}",
                    f"is {value} but the {view!r} view of {dataset} has {key} {derived[key]}; "
                    f"leave data.{key} to its interpolation (it follows data.view)",
                )
        self.data_dir = Path(data_dir).expanduser()
        self.dataset, self.view, self.download, self.normalize = dataset, view, download, normalize
        self.val_size, self.split_seed = int(val_size), split_seed
        self.seq_len, self.input_size = derived["seq_len"], derived["input_size"]
        self.num_classes = NUM_CLASSES
        self.permutation = torch.randperm(
            PIXELS, generator=torch.Generator().manual_seed(permutation_seed)
        )
        self.mean, self.std = 0.0, 1.0
        self.classes: list[str] = [str(i) for i in range(NUM_CLASSES)]
        if targets is not None:  # several targets by name (task=multi_output)
            if not targets or len(set(targets)) != len(targets):
                raise ConfigError(
                    "data.targets", f"name each of {', '.join(TARGETS)} at most once, got {targets}"
                )
            self.target_names = tuple(targets)
            self.target_kind = "outputs"

    def named_targets(self, labels: torch.Tensor, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The targets of `images` (uint8 or [0, 1]) with classes `labels`: the class alone, or
        those of `data.targets` in their order."""
        if not self.target_names:
            return (labels,)
        pixels = images.float() / 255 if not images.is_floating_point() else images
        made = {
            "digit": lambda: labels,
            "even": lambda: (labels % 2 == 0).long(),
            "ink": lambda: pixels.reshape(len(pixels), -1).mean(1),
        }
        return tuple(made[name]() for name in self.target_names)

    # -- where the files are -----------------------------------------------------------------
    @property
    def raw_folder(self) -> Path:
        return self.data_dir / DATASETS[self.dataset].__name__ / "raw"

    def missing_files(self) -> list[str]:
        return [name for name in FILES if not (self.raw_folder / name).is_file()]

    def prepare_data(self) -> None:
        """Unzip `*.gz` files left in raw/, download what is still missing (when allowed), and
        say exactly which files are missing and where they go when that fails."""
        for name in self.missing_files():
            packed = self.raw_folder / f"{name}.gz"
            if packed.is_file():
                try:
                    with gzip.open(packed, "rb") as src, open(self.raw_folder / name, "wb") as dst:
                        shutil.copyfileobj(src, dst)
                except (OSError, EOFError, zlib.error) as exc:
                    (self.raw_folder / name).unlink(missing_ok=True)
                    raise DataError(
                        f"{packed}: cannot unzip ({exc}); delete it or replace it"
                    ) from None
        missing = self.missing_files()
        if not missing:
            return
        reason = "data.download is false"
        if self.download:
            try:
                for train in (True, False):
                    DATASETS[self.dataset](str(self.data_dir), train=train, download=True)
            except Exception as exc:  # no network, a mirror down, a checksum mismatch ...
                first = str(exc).strip().splitlines()
                reason = f"the download failed ({type(exc).__name__}: {first[-1] if first else ''})"
            missing = self.missing_files()
            if not missing:
                return
        raise DataError(
            f"data.data_dir: {self.dataset} files missing in {self.raw_folder}: "
            f"{', '.join(missing)} ({reason}). Put the four uncompressed IDX files "
            f"({', '.join(FILES)}; .gz files there are unzipped for you) in {self.raw_folder}/, "
            f"from {SOURCES[self.dataset]}, or point NNLAB_DATA_DIR (data.data_dir) at a "
            f"directory holding {DATASETS[self.dataset].__name__}/raw/"
        )

    # -- reading -----------------------------------------------------------------------------
    def read_split(self, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """(images uint8 (N, 28, 28), labels int64 (N,)) of the official train or test set."""
        prefix = "train" if train else "t10k"
        images_path = self.raw_folder / f"{prefix}-images-idx3-ubyte"
        labels_path = self.raw_folder / f"{prefix}-labels-idx1-ubyte"
        count = check_idx(images_path, 3, (HEIGHT, WIDTH))
        if check_idx(labels_path, 1) != count:
            raise DataError(
                f"{labels_path}: holds {check_idx(labels_path, 1)} labels but {images_path.name} "
                f"holds {count} images; the files do not belong together, replace them"
            )
        try:
            ds = DATASETS[self.dataset](str(self.data_dir), train=train, download=False)
            images, labels = ds.data, ds.targets.long()
        except Exception as exc:
            raise DataError(
                f"{self.raw_folder}: torchvision cannot read the files: {exc}"
            ) from None
        if ds.classes and self.dataset != "mnist":
            self.classes = list(ds.classes)
        if len(labels) and (labels.min() < 0 or labels.max() >= NUM_CLASSES):
            raise DataError(
                f"{labels_path}: labels must be 0..{NUM_CLASSES - 1}, found {labels.max().item()}"
            )
        return images, labels

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        self.prepare_data()  # idempotent; Lightning calls it on one process only
        images, labels = self.read_split(train=True)
        if self.val_size >= len(images):
            raise ConfigError(
                "data.val_size",
                f"{self.val_size} validation images leave none of the {len(images)} training "
                "images to train on; choose a smaller data.val_size",
            )
        if self.folds:  # fold `fold` of the training images validates, instead of val_size
            train_idx, val_idx = fold_indices(len(images), self.folds, self.fold, self.split_seed)
        else:
            order = torch.randperm(
                len(images), generator=torch.Generator().manual_seed(self.split_seed)
            )
            val_idx, train_idx = order[: self.val_size], order[self.val_size :]
        train_pixels = images[train_idx].float().div_(255)
        if self.normalize:  # statistics of the training split only
            self.mean, self.std = train_pixels.mean().item(), max(train_pixels.std().item(), 1e-8)
        test_images, test_labels = self.read_split(train=False)
        for split, pixels, targets in (
            ("train", train_pixels, labels[train_idx]),
            ("val", images[val_idx], labels[val_idx]),
            ("test", test_images, test_labels),
        ):
            if len(pixels):
                (x,) = self.encode(pixels).inputs
            else:  # no validation split (data.val_size 0): no images, their shape
                x = self.encode(images[:1]).inputs[0][:0]
            self.datasets[split] = TensorDataset(x, *self.named_targets(targets, pixels))

    # -- views ---------------------------------------------------------------------------------
    def sample_shape(self) -> tuple[int, ...]:
        if self.view == "image":
            return (1, HEIGHT, WIDTH)
        return (self.seq_len, self.input_size)

    def to_view(self, pixels: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1], (N, 28, 28) -> this view's samples (normalised when asked)."""
        x = (pixels - self.mean) / self.std if self.normalize else pixels
        n = len(x)
        if self.view == "rows":
            return x.reshape(n, HEIGHT, WIDTH).contiguous()
        if self.view == "pixels":
            return x.reshape(n, PIXELS, 1).contiguous()
        if self.view == "permuted":
            return x.reshape(n, PIXELS)[:, self.permutation].unsqueeze(-1).contiguous()
        return x.reshape(n, 1, HEIGHT, WIDTH).contiguous()

    def to_image(self, x: torch.Tensor) -> torch.Tensor:
        """This view's samples -> (N, 28, 28) images in [0, 1], for figures (undoes the
        normalisation and the permutation)."""
        x = x.detach().float().cpu().reshape(len(x), PIXELS)
        if self.view == "permuted":
            x = x[:, torch.argsort(self.permutation)]
        if self.normalize:
            x = x * self.std + self.mean
        return x.reshape(len(x), HEIGHT, WIDTH)

    def example_input(self, n: int = 2) -> torch.Tensor:
        return torch.zeros(n, *self.sample_shape())

    def encode(self, raw: Any) -> Encoded:
        """Images -> this view. `raw`: an IDX images file, a folder of 28x28 PNGs or a .npy
        array (a path), or an array/tensor of (28, 28), (N, 28, 28), (N, 784) or (N, 1, 28, 28)
        images, grey levels 0..255 (integers) or 0..1 (floats); `Encoded.raw`: (N, 28, 28) in
        [0, 1]."""
        names = None
        if raw is None or isinstance(raw, str | Path):
            raw, names = read_images(raw)
        images = as_images(raw, "the input")
        return Encoded((self.to_view(images),), names, images)


def check_idx(path: Path, rank: int, item_shape: tuple[int, ...] = ()) -> int:
    """Check an uncompressed IDX file of unsigned bytes (magic 0x0000 08 <rank>, then `rank`
    big-endian sizes, then the data) before torchvision parses it; returns the item count."""
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    size = path.stat().st_size
    with open(path, "rb") as f:
        header = f.read(4 + 4 * rank)
    kind = "images" if rank == 3 else "labels"
    if len(header) < 4 + 4 * rank:
        raise DataError(
            f"{path}: truncated ({size} bytes, shorter than the IDX header); download it again"
        )
    if header[:2] != b"\x00\x00" or header[2] != 0x08 or header[3] != rank:
        raise DataError(
            f"{path}: not an IDX file of {kind} (magic bytes {header[:4].hex()}, expected "
            f"000008{rank:02x}); is it still gzipped or a different file? Replace it"
        )
    dims = [int.from_bytes(header[4 + 4 * i : 8 + 4 * i], "big") for i in range(rank)]
    if item_shape and tuple(dims[1:]) != item_shape:
        raise DataError(
            f"{path}: images are {'x'.join(map(str, dims[1:]))}, expected "
            f"{'x'.join(map(str, item_shape))}"
        )
    expected = 4 + 4 * rank + dims[0] * (1 if rank == 1 else dims[1] * dims[2])
    if size != expected:
        state = "truncated" if size < expected else "longer than its header says"
        raise DataError(
            f"{path}: {state}: {size} bytes, but its header announces {dims[0]} {kind} "
            f"({expected} bytes); download it again"
        )
    return dims[0]


def as_images(array: Any, source: str) -> torch.Tensor:
    """(N, 28, 28) floats in [0, 1] from (28, 28), (N, 28, 28), (N, 784) or (N, 1, 28, 28)
    grey levels: integers 0..255 (or floats above 1) are divided by 255."""
    if not isinstance(array, torch.Tensor):
        array = np.asarray(array)
        if array.dtype.kind not in "biuf":
            raise UserError(f"input: {source} is not an array of grey levels ({array.dtype})")
    x = torch.as_tensor(array)
    shape = tuple(x.shape)
    if x.dim() == 2 and shape == (HEIGHT, WIDTH):
        x = x[None]
    elif x.dim() == 2 and shape[1] == PIXELS:
        x = x.reshape(-1, HEIGHT, WIDTH)
    elif x.dim() == 4 and shape[1] == 1:
        x = x[:, 0]
    if x.dim() != 3 or tuple(x.shape[1:]) != (HEIGHT, WIDTH) or len(x) == 0:
        raise UserError(
            f"input: {source} holds an array of shape {shape}; expected 28x28 images: "
            "(28, 28), (N, 28, 28), (N, 784) or (N, 1, 28, 28)"
        )
    if not x.is_floating_point() or x.max() > 1.0:  # 0..255 grey levels
        return (x.float() / 255).clamp_(0.0, 1.0)
    return x.float().clamp(0.0, 1.0)


def read_images(source: str | Path | None) -> tuple[np.ndarray, list[str]]:
    """Images and their names from an IDX images file, a folder of PNGs, or a .npy array."""
    if not source:
        raise UserError("input: give an IDX images file, a folder of PNG images or a .npy array")
    path = Path(source).expanduser()
    if path.is_dir():
        from PIL import Image

        files = sorted(p for p in path.iterdir() if p.suffix.lower() == ".png")
        if not files:
            raise UserError(f"input: {path} holds no .png images")
        images = []
        for file in files:
            try:
                image = np.asarray(Image.open(file).convert("L"))
            except OSError as exc:
                raise UserError(f"input: {file} is not a readable PNG image ({exc})") from None
            if image.shape != (HEIGHT, WIDTH):
                raise UserError(
                    f"input: {file} is {image.shape[1]}x{image.shape[0]} pixels; expected 28x28"
                )
            images.append(image)
        return np.stack(images), [f.name for f in files]
    if not path.is_file():
        raise UserError(
            f"input: {path} not found; give an IDX images file, a PNG folder or a .npy file"
        )
    if path.suffix == ".npy":
        try:
            array = np.load(path, allow_pickle=False)
        except ValueError as exc:
            raise UserError(f"input: {path} is not a plain .npy array ({exc})") from None
        count = len(as_images(array, str(path)))
    else:
        count = check_idx(path, rank=3, item_shape=(HEIGHT, WIDTH))
        array = np.frombuffer(path.read_bytes(), dtype=np.uint8, offset=16).copy()
        array = array.reshape(count, HEIGHT, WIDTH)
    return array, [f"{path.name}[{i}]" for i in range(count)]
