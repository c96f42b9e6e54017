"""Reading new inputs for nnlab-predict: image files for the MNIST family, review texts for IMDB,
turned into exactly what the run's network was trained on."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from nnlab.errors import UserError

SIDE = 28


def _as_images(array: np.ndarray, source: str) -> torch.Tensor:
    """(N, 28, 28) floats in [0, 1] from (28, 28), (N, 28, 28), (N, 784) or (N, 1, 28, 28)."""
    a = np.asarray(array)
    if a.ndim == 2 and a.shape == (SIDE, SIDE):
        a = a[None]
    elif a.ndim == 2 and a.shape[1] == SIDE * SIDE:
        a = a.reshape(-1, SIDE, SIDE)
    elif a.ndim == 4 and a.shape[1] == 1:
        a = a[:, 0]
    if a.ndim != 3 or a.shape[1:] != (SIDE, SIDE) or len(a) == 0:
        raise UserError(
            f"input: {source} holds an array of shape {tuple(np.asarray(array).shape)}; expected "
            "28x28 images: (28, 28), (N, 28, 28), (N, 784) or (N, 1, 28, 28)"
        )
    x = torch.as_tensor(a.astype(np.float32))
    if np.issubdtype(a.dtype, np.integer) or x.max() > 1.0:  # 0..255 grey levels
        x = x / 255.0
    return x.clamp(0.0, 1.0)


def read_images(text: str | None) -> tuple[torch.Tensor, list[str]]:
    """Images and their names from an IDX images file, a folder of PNGs, or a .npy array."""
    if not text:
        raise UserError("input: give an IDX images file, a folder of PNG images or a .npy array")
    path = Path(text).expanduser()
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
            if image.shape != (SIDE, SIDE):
                raise UserError(
                    f"input: {file} is {image.shape[1]}x{image.shape[0]} pixels; expected 28x28"
                )
            images.append(image)
        return _as_images(np.stack(images), str(path)), [f.name for f in files]
    if not path.is_file():
        raise UserError(
            f"input: {path} not found; give an IDX images file, a PNG folder or a .npy file"
        )
    if path.suffix == ".npy":
        try:
            array = np.load(path, allow_pickle=False)
        except ValueError as exc:
            raise UserError(f"input: {path} is not a plain .npy array ({exc})") from None
        x = _as_images(array, str(path))
    else:
        from nnlab.data.mnist import check_idx

        count = check_idx(path, rank=3, item_shape=(SIDE, SIDE))
        data = np.frombuffer(path.read_bytes()[16:], dtype=np.uint8).reshape(count, SIDE, SIDE)
        x = _as_images(data, str(path))
    return x, [f"{path.name}[{i}]" for i in range(len(x))]


def read_texts(run_root: Path, text: str | None, input_path: str | None, view: str):
    """Reviews (one per line of a file, or `text=`) as the run's view: multi-hot vectors, or
    padded ids with lengths, through the vocabulary saved with the run."""
    from nnlab.data.imdb import OOV, PAD, TOKENIZER_VERSION, tokenize

    if text is not None:
        reviews = [text]
    elif input_path:
        path = Path(input_path).expanduser()
        if not path.is_file():
            raise UserError(
                f'input: {path} not found; give a text file with one review per line, or text="..."'
            )
        reviews = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    else:
        raise UserError('input: give a text file (one review per line) or text="..."')
    if not reviews or not any(r.strip() for r in reviews):
        raise UserError("input: the text is empty; give at least one review with words in it")
    vocab_file = run_root / "vocab.json"
    if not vocab_file.is_file():
        raise UserError(f"run: {vocab_file} is missing: this run did not save its vocabulary")
    vocab = json.loads(vocab_file.read_text(encoding="utf-8"))
    if vocab.get("tokenizer_version") != TOKENIZER_VERSION:
        raise UserError(
            f"run: {vocab_file} was written by tokenizer version {vocab.get('tokenizer_version')}"
        )
    index = {w: i for i, w in enumerate(vocab["words"]) if i > OOV}
    ids = [[index.get(w, OOV) for w in tokenize(r)] for r in reviews]
    if view == "multihot":
        x = torch.zeros(len(ids), vocab["num_words"])
        for row, seq in enumerate(ids):
            x[row, torch.tensor(seq, dtype=torch.long)] = 1.0 if seq else 0.0
        inputs = (x,)
    else:
        max_len = vocab["max_len"]
        x = torch.full((len(ids), max_len), PAD, dtype=torch.long)
        lengths = torch.ones(len(ids), dtype=torch.long)
        for row, seq in enumerate(ids):
            seq = seq[-max_len:] if vocab.get("truncating", "pre") == "pre" else seq[:max_len]
            if seq:
                x[row, : len(seq)] = torch.tensor(seq)
                lengths[row] = len(seq)
        inputs = (x, lengths)
    names = [r if len(r) <= 60 else r[:57] + "..." for r in reviews]
    return inputs, names
