"""IMDB movie reviews (Large Movie Review Dataset v1.0, `aclImdb`): download, verify, tokenize,
cache; two views of the same token ids.

Data: `<data_dir>/aclImdb/{train,test}/{neg,pos}/<id>_<rating>.txt`, 25,000 labelled reviews
per split. When that folder is missing, `aclImdb_v1.tar.gz` is taken from `<data_dir>` or
downloaded from `url`, checked against `sha256`, and extracted (safely, into a temporary folder
that is renamed into place only when complete).

Tokens: lower-case, `<br />` line breaks removed, words are runs of letters, digits and non-ASCII
characters with inner apostrophes (`don't`). The vocabulary comes from the training split only:
the `num_words - 2` most frequent words (at least `min_freq` times) get ids 2.., in order of
frequency; id 0 is padding (`PAD`) and id 1 every other word (`OOV`).

Views (`view`):
- `multihot`: batches `(x, y)`, x a float (batch, num_words) 0/1 vector of the ids present in
  the whole review (the Keras reference recipe); held as one bool matrix, batched in memory,
  made float on the device, batch by batch (`batch_transform`);
- `sequence`: batches `(x, lengths, y)`, x the (batch, max_len) ids padded with 0 at the end,
  truncated to `max_len` (`truncating: pre` drops the review's start and keeps its last
  `max_len` tokens, Keras' default; `post` keeps its first ones); `lengths` the true lengths
  (>= 1) so models can pack or mask;
- `both`: batches `(ids, lengths, multihot, y)`, both views of each review, by name
  (`input_names`) for model=graph (a wide-and-deep network reads one through Dense, the other
  through an embedding).
y is the label (0 negative, 1 positive). Validation: `val_size` training reviews (a count, or a
fraction when < 1) drawn with `seed`; testing: the official test split.

New reviews (`encode`: a text file with one review per line, or a list of texts) go through
the same tokenizer, the vocabulary (`vocab.json`, written into the run directory by
`save_artifacts`) and the same padding / multi-hot functions as the training data.

Preprocessing is cached in `<data_dir>/cache/imdb-<key>.pt`, the key a hash of everything that
changes it (num_words, min_freq, max_len, truncating, tokenizer version, the data files' names,
sizes and times), so a second run loads tensors instead of tokenizing again.
"""

from __future__ import annotations

import collections
import hashlib
import itertools
import json
import logging
import os
import re
import shutil
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import torch
from pydantic import Field
from torch.utils.data import TensorDataset

from nnlab.data.base import DataModule, Encoded
from nnlab.data.download import download, sha256_of
from nnlab.data.folds import fold_indices
from nnlab.errors import ConfigError, DataError, UserError
from nnlab.files import read_json
from nnlab.schema import Folds, InMemory, NonNegativeInt, PositiveFloat, PositiveInt

log = logging.getLogger(__name__)

URL = "https://ai.stanford.edu/~amaas/data/sentiment/aclImdb_v1.tar.gz"
SHA256 = "c40f74a18d3b61f90feba1e17730e0d38e8b97c05fde7008942e91923d1658fe"
ARCHIVE = "aclImdb_v1.tar.gz"
FOLDER = "aclImdb"
SPLITS = ("train", "test")
LABELS = ("neg", "pos")  # label ids 0, 1
PAD, OOV = 0, 1
# Bump when the tokenizer or the cache layout changes: old caches are then not used.
TOKENIZER_VERSION = 1
VIEWS = ("multihot", "sequence", "both")
INPUT_NAMES = {"multihot": ("multihot",), "sequence": ("ids", "lengths")}
INPUT_NAMES["both"] = (*INPUT_NAMES["sequence"], *INPUT_NAMES["multihot"])

_BREAK = b"<br />"
_WORD = re.compile(rb"[a-z0-9\x80-\xff]+(?:'[a-z0-9\x80-\xff]+)*")


# -- tokenizer ---------------------------------------------------------------------------------
def _tokenize_bytes(raw: bytes) -> list[bytes]:
    """Words of one UTF-8 review (already lower-cased, line breaks removed) as bytes."""
    return _WORD.findall(raw)


def tokenize(text: str) -> list[str]:
    """The words of one review, exactly as the data module sees them (for prediction)."""
    raw = text.encode("utf-8").lower().replace(_BREAK, b" ")
    return [t.decode("utf-8", "replace") for t in _tokenize_bytes(raw)]


# -- download, verify, extract -----------------------------------------------------------------
def _check_member(member: tarfile.TarInfo, archive: Path) -> None:
    name = member.name
    parts = Path(name).parts
    if name.startswith(("/", "\\")) or ".." in parts or not parts or parts[0] != FOLDER:
        raise DataError(f"{archive}: unexpected path {name!r} in the archive; not extracting it")
    if not (member.isfile() or member.isdir()):
        raise DataError(f"{archive}: {name!r} is a link or device; not extracting it")


def extract(archive: Path, data_dir: Path) -> Path:
    """Extract `aclImdb/` from `archive` into a temporary folder in `data_dir`, then rename it to
    `data_dir/aclImdb`: an interrupted extraction leaves no half-filled `aclImdb/` behind."""
    target = data_dir / FOLDER
    tmp = Path(tempfile.mkdtemp(prefix=".aclImdb-partial-", dir=data_dir))
    try:
        try:
            with tarfile.open(archive, "r:*") as tar:
                members = tar.getmembers()
                for member in members:
                    _check_member(member, archive)
                tar.extractall(tmp, members=members, filter="data")
        except (tarfile.TarError, EOFError, OSError) as exc:
            raise DataError(
                f"{archive} is not a readable tar.gz archive ({exc}); delete it so that it is "
                "downloaded again"
            ) from None
        if not (tmp / FOLDER).is_dir():
            raise DataError(f"{archive} holds no {FOLDER}/ folder; delete it and download again")
        check_tree(tmp / FOLDER)
        (tmp / FOLDER).rename(target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def check_tree(root: Path) -> None:
    """Every split/label folder must exist and hold reviews."""
    for split in SPLITS:
        for label in LABELS:
            folder = root / split / label
            if not folder.is_dir():
                raise DataError(
                    f"{folder} is missing: {root} is incomplete; delete {root} so that the data "
                    f"is downloaded again, or unpack {ARCHIVE} there"
                )
            if not any(e.name.endswith(".txt") for e in os.scandir(folder)):
                raise DataError(f"{folder} holds no .txt reviews; delete {root} and unpack again")


def ensure_aclimdb(
    data_dir: Path, url: str | None, sha256: str | None, allow_download: bool
) -> Path:
    """The `aclImdb` folder in `data_dir`: there already, or extracted from the archive there,
    or downloaded, verified and extracted."""
    root = data_dir / FOLDER
    if root.is_dir():
        check_tree(root)
        return root
    data_dir.mkdir(parents=True, exist_ok=True)
    archive = data_dir / ARCHIVE
    if archive.is_file():
        if sha256 and (got := sha256_of(archive)) != sha256.lower():
            raise DataError(
                f"{archive}: sha256 {got} does not match the published {sha256}; the file is "
                "corrupt or incomplete: delete it so that it is downloaded again"
            )
    elif allow_download and url:
        download(url, archive, sha256, f"{ARCHIVE} (or the extracted {FOLDER}/ folder)")
    else:
        raise DataError(
            f"no {FOLDER}/ folder or {ARCHIVE} in {data_dir}; set data.download=true (and "
            f"data.url), or put the data there (NNLAB_DATA_DIR moves the data directory)"
        )
    return extract(archive, data_dir)


# -- reading and encoding ----------------------------------------------------------------------
def review_files(root: Path, split: str) -> list[tuple[Path, int]]:
    """(file, label) of a split, negatives then positives, each in file-name order."""
    files = []
    for label, name in enumerate(LABELS):
        folder = root / split / name
        names = sorted(e.name for e in os.scandir(folder) if e.name.endswith(".txt"))
        files += [(folder / n, label) for n in names]
    return files


def fingerprint(root: Path) -> list[Any]:
    """Names, count, total size and latest modification of each split's files (for the key)."""
    out = []
    for split in SPLITS:
        for label in LABELS:
            entries = [e for e in os.scandir(root / split / label) if e.name.endswith(".txt")]
            stats = [e.stat() for e in entries]
            names = hashlib.sha256("\n".join(sorted(e.name for e in entries)).encode())
            out.append(
                [
                    f"{split}/{label}",
                    len(entries),
                    sum(s.st_size for s in stats),
                    max((s.st_mtime_ns for s in stats), default=0),
                    names.hexdigest()[:16],
                ]
            )
    return out


def read_reviews(files: list[tuple[Path, int]]) -> list[bytes]:
    """Raw review texts, lower-cased, line breaks removed."""
    texts = []
    for path, _ in files:
        try:
            with open(path, "rb") as f:
                texts.append(f.read())
        except OSError as exc:
            raise DataError(f"cannot read review {path}: {exc}") from None
    # One pass over all the text at once: bytes.lower/replace run in C.
    joined = b"\x00".join(t.replace(b"\x00", b" ") for t in texts).lower().replace(_BREAK, b" ")
    return joined.split(b"\x00")


def build_vocab(tokens: list[list[bytes]], num_words: int, min_freq: int) -> list[str]:
    """Words for ids 2 .. num_words-1: the most frequent (ties by word) seen >= min_freq times."""
    counts = collections.Counter(itertools.chain.from_iterable(tokens))
    ranked = sorted(
        (item for item in counts.items() if item[1] >= min_freq), key=lambda kv: (-kv[1], kv[0])
    )
    return [w.decode("utf-8", "replace") for w, _ in ranked[: num_words - 2]]


def encode(tokens: list[list[bytes]], index: dict[bytes, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """All reviews' ids as one flat int32 tensor and the (n + 1) offsets of each review in it."""
    lengths = np.fromiter(map(len, tokens), dtype=np.int64, count=len(tokens))
    offsets = np.zeros(len(tokens) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    flat = np.array(
        list(map(index.get, itertools.chain.from_iterable(tokens), itertools.repeat(OOV))),
        dtype=np.int32,
    )
    return torch.from_numpy(flat), torch.from_numpy(offsets)


def pad_sequences(
    flat: torch.Tensor, offsets: torch.Tensor, max_len: int, truncating: str = "pre"
) -> tuple[torch.Tensor, torch.Tensor]:
    """(n, max_len) ids padded with PAD at the end and the true lengths (>= 1; an empty review
    counts as one pad token)."""
    lengths = offsets[1:] - offsets[:-1]
    kept = lengths.clamp(max=max_len)
    starts = offsets[:-1] + (lengths - kept if truncating == "pre" else 0)
    positions = torch.arange(max_len)
    mask = positions < kept[:, None]
    if len(flat) == 0:
        return torch.zeros(mask.shape, dtype=flat.dtype), kept.clamp(min=1)
    index = (starts[:, None] + positions).clamp(max=len(flat) - 1)
    ids = torch.where(mask, flat[index].long(), PAD)
    return ids.to(flat.dtype), kept.clamp(min=1)


def multi_hot(flat: torch.Tensor, offsets: torch.Tensor, num_words: int) -> torch.Tensor:
    """Rows of 0/1 flags (bool: a quarter of float32's memory) for the ids of each review."""
    lengths = offsets[1:] - offsets[:-1]
    rows = torch.repeat_interleave(torch.arange(len(lengths)), lengths)
    x = torch.zeros(len(lengths), num_words, dtype=torch.bool)
    x[rows, flat.long()] = True
    return x


KERAS_SEED = 113  # the seed of keras.datasets.imdb.load_data's shuffle


class IMDBDataModule(DataModule):
    """aclImdb reviews as multi-hot vectors or padded id sequences (see the module docstring)."""

    target_kind = "classes"

    num_classes = 2
    classes = ["negative", "positive"]
    columns = ("review", "sentiment")

    def __init__(
        self,
        data_dir: str = "data",
        view: Literal["multihot", "sequence", "both"] = "multihot",
        num_words: Annotated[int, Field(ge=3)] = 10000,  # pad, OOV, a word
        min_freq: PositiveInt = 1,
        max_len: PositiveInt = 256,
        truncating: Literal["pre", "post"] = "pre",
        val_size: PositiveFloat = 10000,  # a count, or a fraction < 1
        batch_size: PositiveInt = 512,
        seed: int = 0,
        download: bool = True,
        url: str | None = URL,
        sha256: str | None = SHA256,
        cache: bool = True,
        num_workers: NonNegativeInt = 0,
        in_memory: InMemory = "auto",
        folds: Folds | None = None,
        fold: NonNegativeInt = 0,
        val_from: Literal["random", "first"] = "random",
        shuffle: bool = True,
    ):
        super().__init__(
            batch_size,
            shuffle=shuffle,
            shuffle_seed=int(seed),
            in_memory=in_memory,
            num_workers=num_workers,
        )
        self.val_from = val_from
        self.save_hyperparameters()
        self.data_dir = Path(data_dir).expanduser()
        self.view, self.num_words, self.min_freq = view, int(num_words), int(min_freq)
        self.max_len, self.truncating, self.val_size = int(max_len), truncating, val_size
        self.seed = seed
        self.folds, self.fold = folds, fold  # k-fold cross-validation (data/folds.py)
        # An all-digit checksum on the command line arrives as an int: keep it as text.
        sha256 = str(sha256).strip().lower() if sha256 not in (None, "") else None
        self.download, self.url, self.sha256, self.use_cache = download, url, sha256, cache
        self.vocab: list[str] = []  # id -> word, ids 0 and 1 are "<pad>" and "<oov>"
        self.data: dict[str, dict[str, Any]] | None = None  # the cached preprocessing
        self.indices: dict[str, torch.Tensor] = {}  # rows of train/test behind each split
        self.cache_path: Path | None = None

    # -- the protocol (data/base.py) -----------------------------------------------------------
    @property
    def input_names(self) -> tuple[str, ...]:
        return INPUT_NAMES[self.view]

    def example_input(self, n: int = 2):
        multihot = (torch.zeros(n, self.num_words),)
        ids = torch.full((n, self.max_len), 2, dtype=torch.long)
        sequence = (ids, torch.full((n,), self.max_len, dtype=torch.long))
        if self.view == "multihot":
            return multihot[0]
        return sequence if self.view == "sequence" else (*sequence, *multihot)

    def view_inputs(self, flat: torch.Tensor, offsets: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Reviews' ids (flat, with offsets) as this view's inputs: bool multi-hot rows, or
        padded ids and their lengths, or both (in `input_names`' order)."""
        inputs: tuple[torch.Tensor, ...] = ()
        if self.view != "multihot":
            ids, lengths = pad_sequences(flat, offsets, self.max_len, self.truncating)
            inputs = (ids.long(), lengths)
        if self.view != "sequence":
            inputs = (*inputs, multi_hot(flat, offsets, self.num_words))
        return inputs

    def batch_transform(self, batch):
        """Multi-hot rows are stored as bools (a quarter of float32's memory): floats here, on
        the device, one batch at a time."""
        if self.view == "sequence":
            return batch
        at = self.input_names.index("multihot")
        if batch[at].dtype == torch.bool:
            items = list(batch)
            items[at] = items[at].to(torch.get_default_dtype())
            return type(batch)(items)
        return batch

    def encode(self, raw: Any) -> Encoded:
        """Reviews -> this view's inputs, through the run's vocabulary. `raw`: a text file with
        one review per line (a path), or a list of review texts."""
        if raw is None:
            raise UserError('input: give a text file (one review per line) or text="..."')
        if isinstance(raw, str | Path):
            path = Path(raw).expanduser()
            if not path.is_file():
                raise UserError(
                    f"input: {path} not found; give a text file with one review per line, "
                    'or text="..."'
                )
            lines = path.read_text(encoding="utf-8").splitlines()
            reviews = [line for line in lines if line.strip()]
        else:
            reviews = [str(r) for r in raw]
        if not reviews or not any(r.strip() for r in reviews):
            raise UserError("input: the text is empty; give at least one review with words in it")
        if not self.vocab:
            self.load()
        index = {w.encode("utf-8"): i for i, w in enumerate(self.vocab) if i > OOV}
        tokens = [[t.encode("utf-8") for t in tokenize(r)] for r in reviews]
        flat, offsets = encode(tokens, index)
        names = [r if len(r) <= 60 else r[:57] + "..." for r in reviews]
        return Encoded(self.view_inputs(flat.long(), offsets), names, reviews)

    def save_artifacts(self, run_dir: Path) -> list[Path]:
        return [self.save_vocab(Path(run_dir) / "vocab.json")]

    def load_artifacts(self, run_dir: Path) -> None:
        """The vocabulary and tokenizer settings saved with the run (no data needed)."""
        vocab_file = Path(run_dir) / "vocab.json"
        if not vocab_file.is_file():
            raise UserError(f"run: {vocab_file} is missing: this run did not save its vocabulary")
        saved = read_json(vocab_file, "run", "run's vocabulary")
        if saved.get("tokenizer_version") != TOKENIZER_VERSION:
            raise UserError(
                f"run: {vocab_file} was written by tokenizer version "
                f"{saved.get('tokenizer_version')}, this is version {TOKENIZER_VERSION}"
            )
        self.vocab = list(saved["words"])
        self.num_words, self.max_len = int(saved["num_words"]), int(saved["max_len"])
        self.truncating = saved.get("truncating", "pre")

    # -- preprocessing and its cache ---------------------------------------------------------
    def cache_key(self, root: Path) -> dict[str, Any]:
        return {
            "tokenizer_version": TOKENIZER_VERSION,
            "num_words": self.num_words,
            "min_freq": self.min_freq,
            "max_len": self.max_len,
            "truncating": self.truncating,
            "files": fingerprint(root),
        }

    def _cache_file(self, key: dict[str, Any]) -> Path:
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
        return self.data_dir / "cache" / f"imdb-{digest}.pt"

    def preprocess(self, root: Path) -> dict[str, Any]:
        """Tokenize both splits, build the vocabulary from train, encode, pad."""
        start = time.perf_counter()
        files = {split: review_files(root, split) for split in SPLITS}
        tokens = {
            split: [_tokenize_bytes(t) for t in read_reviews(files[split])] for split in SPLITS
        }
        vocab = ["<pad>", "<oov>", *build_vocab(tokens["train"], self.num_words, self.min_freq)]
        index = {w.encode("utf-8"): i for i, w in enumerate(vocab) if i > OOV}
        data: dict[str, Any] = {"vocab": vocab}
        dtype = torch.int16 if self.num_words <= torch.iinfo(torch.int16).max else torch.int32
        for split in SPLITS:
            flat, offsets = encode(tokens[split], index)
            ids, lengths = pad_sequences(flat, offsets, self.max_len, self.truncating)
            data[split] = {
                "flat": flat.to(dtype),
                "offsets": offsets,
                "ids": ids.to(dtype),
                "lengths": lengths,
                "labels": torch.tensor([label for _, label in files[split]], dtype=torch.long),
                "files": [str(p.relative_to(root)) for p, _ in files[split]],
            }
        log.info(
            "Tokenized %d reviews in %.1f s",
            sum(len(t) for t in tokens.values()),
            time.perf_counter() - start,
        )
        return data

    def load(self) -> dict[str, Any]:
        """The preprocessed data: from the cache when its key matches, else built (and cached)."""
        if self.data is not None:
            return self.data
        root = ensure_aclimdb(self.data_dir, self.url, self.sha256, self.download)
        key = self.cache_key(root)
        self.cache_path = self._cache_file(key)
        data = None
        if self.use_cache and self.cache_path.is_file():
            start = time.perf_counter()
            try:
                data = torch.load(self.cache_path, weights_only=True)
            except Exception as exc:  # a truncated or foreign file: rebuild it
                log.warning(
                    "Ignoring unreadable cache %s (%s); rebuilding it", self.cache_path, exc
                )
                data = None
            if data is not None and data.get("key") != key:
                data = None
            if data is not None:
                log.info("Loaded %s in %.2f s", self.cache_path, time.perf_counter() - start)
        if data is None:
            data = self.preprocess(root)
            data["key"] = key
            if self.use_cache:
                self.cache_path.parent.mkdir(parents=True, exist_ok=True)
                tmp = self.cache_path.with_name(self.cache_path.name + f".{os.getpid()}.tmp")
                torch.save(data, tmp)
                tmp.replace(self.cache_path)  # atomic: readers never see half a file
        self.root, self.data, self.vocab = root, data, list(data["vocab"])
        return data

    def prepare_data(self) -> None:
        self.load()

    # -- Lightning hooks ---------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        data = self.load()
        n_train = len(data["train"]["labels"])
        n_val = int(round(self.val_size * n_train)) if self.val_size < 1 else int(self.val_size)
        if not 0 < n_val < n_train:
            raise ConfigError(
                "data.val_size",
                f"{self.val_size} leaves {n_train - n_val} of the {n_train} training reviews for "
                "training; use a smaller count or a fraction such as 0.2",
            )
        # Seeded orders (the files are sorted by label): a limited run still sees both classes.
        generator = torch.Generator().manual_seed(int(self.seed))
        order = torch.randperm(n_train, generator=generator)
        if self.val_from == "first":
            # Keras' recipe: x_val = x_train[:10000] of the training reviews in one fixed order
            # (Keras' load_data shuffles them with seed 113), the same whatever the run's seed
            order = torch.randperm(n_train, generator=torch.Generator().manual_seed(KERAS_SEED))
        train, val = order[n_val:], order[:n_val]
        if self.folds:  # fold `fold` of the training reviews validates, instead of val_size
            train, val = fold_indices(n_train, self.folds, self.fold, int(self.seed))
        self.indices = {
            "train": train,
            "val": val,
            "test": torch.randperm(len(data["test"]["labels"]), generator=generator),
        }
        for name, rows in self.indices.items():
            self.datasets[name] = self._dataset(data["test" if name == "test" else "train"], rows)

    def _dataset(self, split: dict[str, Any], rows: torch.Tensor) -> TensorDataset:
        labels = split["labels"][rows]
        inputs: tuple[torch.Tensor, ...] = ()
        if self.view != "multihot":  # padded once, when the cache was built (view_inputs)
            inputs = (split["ids"][rows].long(), split["lengths"][rows])
        if self.view != "sequence":
            x = multi_hot(split["flat"], split["offsets"], self.num_words)
            inputs = (*inputs, x[rows])
        return TensorDataset(*inputs, labels)

    # -- for people and callbacks ------------------------------------------------------------
    def review_text(self, split: str, i: int) -> str:
        """The raw text of item i of `split` (train/val/test)."""
        data = self.load()
        source = "test" if split == "test" else "train"
        row = int(self.indices[split][i]) if self.indices else i
        path = self.root / data[source]["files"][row]
        return path.read_text(encoding="utf-8", errors="replace")

    def save_vocab(self, path: str | os.PathLike) -> Path:
        """Write the vocabulary and the tokenizer settings as JSON, so that predictions on new
        text can use the same ids (`words[i]` is id i)."""
        self.load()
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        settings = {
            "tokenizer_version": TOKENIZER_VERSION,
            "pad_id": PAD,
            "oov_id": OOV,
            "num_words": self.num_words,
            "min_freq": self.min_freq,
            "max_len": self.max_len,
            "truncating": self.truncating,
            "words": self.vocab,
        }
        path.write_text(json.dumps(settings, ensure_ascii=False), encoding="utf-8")
        return path
