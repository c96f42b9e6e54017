"""Tiny MNIST-format data sets for tests: IDX files in torchvision's layout, real format."""

from __future__ import annotations

from pathlib import Path

import torch

FOLDERS = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST"}


def idx_bytes(data: torch.Tensor) -> bytes:
    """An uncompressed IDX file of unsigned bytes: magic 0x000008<rank>, sizes, data."""
    header = bytes([0, 0, 0x08, data.dim()])
    header += b"".join(int(n).to_bytes(4, "big") for n in data.shape)
    return header + data.to(torch.uint8).contiguous().numpy().tobytes()


def tiny_digits(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """n 28x28 images whose class is drawn in them (a bright bar in row band 2*label), so a
    model can learn them, with some noise; labels cycle through 0..9."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 10
    images = torch.randint(0, 60, (n, 28, 28), generator=g)
    for i, label in enumerate(labels.tolist()):
        images[i, 2 + 2 * label : 4 + 2 * label, 4:24] = 255
    return images.to(torch.uint8), labels.to(torch.uint8)


def write_mnist(root: Path, dataset: str = "mnist", n_train: int = 120, n_test: int = 40) -> Path:
    """Write <root>/<MNIST|FashionMNIST>/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte."""
    raw = Path(root) / FOLDERS[dataset] / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for prefix, n, seed in (("train", n_train, 0), ("t10k", n_test, 1)):
        images, labels = tiny_digits(n, seed)
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(idx_bytes(images))
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(idx_bytes(labels))
    return raw


def real_mnist_dir() -> Path | None:
    """NNLAB_DATA_DIR when it holds the real MNIST files (the real-data tests skip otherwise)."""
    import os

    root = os.environ.get("NNLAB_DATA_DIR")
    if root and (Path(root) / "MNIST" / "raw" / "train-images-idx3-ubyte").is_file():
        return Path(root)
    return None
