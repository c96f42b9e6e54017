"""IMDB review texts for language modelling: a character-level or word-level token stream, cut
into fixed-length chunks whose targets are the inputs shifted by one.

The reviews come from the aclImdb tree of `data/imdb.py` (the same download, checksum and
extraction; the same reading: lower-cased, `<br />` removed; words by the same tokenizer).
Reviews are taken in a seeded order and joined into one stream per split, each review ended by a
separator token (`\\n` for characters, `<eos>` for words):

- train: training-split reviews, at most `max_train_chars` characters of text (null: all);
- val: other training-split reviews (never those of train), at most `max_eval_chars`;
- test: test-split reviews, at most `max_eval_chars`.

Vocabulary (from the train stream only): id 0 `<unk>`, id 1 the separator, then the
`vocab_size - 2` most frequent characters / words (ties by token) seen at least `min_freq`
times; every other token is `<unk>`.

Batches `(x, y)`: x (batch, seq_len) token ids, y the same positions one token later. With
`tbptt: false` each sample is an independent chunk of the stream and the chunks are shuffled.
With `tbptt: true` (truncated backpropagation through time) the stream is split into
`batch_size` rows and cut column-wise, in order: row i of batch n+1 continues row i of batch n,
so a task may carry each row's hidden state from one batch to the next (`task.carry_state`).
Validation and test are cut the same way with `eval_batch_size` rows.

`encode(prompt)` gives the ids of a prompt (after a separator: generation starts as a new review
would), `decode(ids)` the text of ids; the vocabulary goes into the run directory as
`vocab.json` (`save_artifacts`), so a run generates text without the data (`load_artifacts`).
"""

from __future__ import annotations

import collections
import json
import logging
from pathlib import Path
from typing import Annotated, Any, Literal

import torch
from pydantic import Field
from torch.utils.data import TensorDataset

from nnlab.data import imdb
from nnlab.data.base import DataModule, Encoded
from nnlab.errors import ConfigError, UserError
from nnlab.files import read_json
from nnlab.schema import InMemory, NonNegativeInt, PositiveInt

log = logging.getLogger(__name__)

LEVELS = ("char", "word")
UNK, SEP = 0, 1
SEPARATORS = {"char": "\n", "word": "<eos>"}
VOCAB_VERSION = 1  # of vocab.json's layout
READ_AT_ONCE = 256  # reviews read per step while filling a split's character budget


def normalise(text: str) -> bytes:
    """A text as the data module reads reviews: UTF-8, lower-cased, `<br />` removed, no
    newlines (the character-level separator)."""
    raw = text.encode("utf-8").replace(b"\n", b" ").replace(b"\x00", b" ")
    return raw.lower().replace(imdb._BREAK, b" ")


def chunks(stream: torch.Tensor, seq_len: int, rows: int | None) -> torch.Tensor:
    """(n, seq_len + 1) windows of `stream`, each overlapping the next by one token (its last
    target). `rows`: cut the stream into that many contiguous rows and order the windows column
    by column, so window k * rows + i is the k-th of row i (row i continues from batch to batch);
    None: the windows in stream order."""
    if rows is None:
        usable = (len(stream) - 1) // seq_len * seq_len
        return stream[: usable + 1].unfold(0, seq_len + 1, seq_len)
    per_row = (len(stream) - 1) // rows // seq_len * seq_len  # inputs per row, whole windows
    if per_row == 0:
        return stream.new_zeros(0, seq_len + 1)
    segments = torch.stack([stream[i * per_row : (i + 1) * per_row + 1] for i in range(rows)])
    windows = segments.unfold(1, seq_len + 1, seq_len)  # (rows, per_row / seq_len, seq_len + 1)
    return windows.transpose(0, 1).reshape(-1, seq_len + 1)


class IMDBLanguageDataModule(DataModule):
    """aclImdb review text as a character or word stream (see the module docstring)."""

    target_kind = "tokens"

    columns = ("prompt", "text")
    unk_id = UNK

    def __init__(
        self,
        data_dir: str = "data",
        level: Literal["char", "word"] = "char",
        vocab_size: Annotated[int, Field(ge=3)] = 100,  # <unk>, separator, a token
        min_freq: PositiveInt = 1,
        seq_len: PositiveInt = 100,
        tbptt: bool = True,
        max_train_chars: PositiveInt | None = 2_000_000,
        max_eval_chars: PositiveInt | None = 200_000,
        batch_size: PositiveInt = 64,
        eval_batch_size: PositiveInt | None = None,
        seed: int = 0,
        download: bool = True,
        url: str | None = imdb.URL,
        sha256: str | None = imdb.SHA256,
        in_memory: InMemory = "auto",
        num_workers: NonNegativeInt = 0,
    ):
        # tbptt: the batches' order is the stream's, never shuffled (rows continue each other).
        super().__init__(
            batch_size,
            eval_batch_size,
            shuffle=not tbptt,
            shuffle_seed=int(seed),
            in_memory=in_memory,
            num_workers=num_workers,
        )
        self.save_hyperparameters()
        self.data_dir = Path(data_dir).expanduser()
        self.level, self.vocab_size, self.min_freq = level, int(vocab_size), int(min_freq)
        self.seq_len, self.tbptt, self.seed = int(seq_len), bool(tbptt), int(seed)
        self.max_train_chars, self.max_eval_chars = max_train_chars, max_eval_chars
        sha256 = str(sha256).strip().lower() if sha256 not in (None, "") else None
        self.download, self.url, self.sha256 = download, url, sha256
        self.vocab: list[str] = []  # id -> token
        self.index: dict[str, int] = {}
        self.streams: dict[str, torch.Tensor] = {}  # split -> the whole token stream

    # -- the protocol (data/base.py) -----------------------------------------------------------
    def example_input(self, n: int = 2) -> torch.Tensor:
        return torch.full((n, self.seq_len), SEP, dtype=torch.long)

    def batch_transform(self, batch):
        """Ids are stored as int32 (half of int64's memory): int64 here, one batch at a time."""
        if isinstance(batch, torch.Tensor):
            return batch.long()
        return type(batch)([t.long() if t.dtype == torch.int32 else t for t in batch])

    def tokens(self, text: bytes) -> list[str]:
        """A normalised text's tokens at this level."""
        if self.level == "char":
            return list(text.decode("utf-8", "replace"))
        return [t.decode("utf-8", "replace") for t in imdb._tokenize_bytes(text)]

    def encode(self, raw: Any) -> Encoded:
        """A prompt (text) -> ids (1, 1 + tokens): a separator (the start of a review), then the
        prompt's tokens. An empty prompt starts a review from nothing; a prompt none of whose
        tokens the vocabulary knows is refused (the model would see only <unk>)."""
        prompt = "" if raw is None else raw if isinstance(raw, str) else " ".join(map(str, raw))
        if not self.vocab:
            raise UserError("prompt: no vocabulary loaded (load_artifacts or setup first)")
        tokens = self.tokens(normalise(prompt))
        ids = [self.index.get(t, UNK) for t in tokens]
        if prompt.strip() and (not ids or all(i == UNK for i in ids)):
            what = "character" if self.level == "char" else "word"
            raise UserError(
                f"prompt: {prompt!r} has no {what} the model's vocabulary knows (the {len(self.vocab)} "
                f'most frequent {what}s of the training reviews); use other {what}s, or prompt="" '
                "to start a review from nothing"
            )
        return Encoded((torch.tensor([[SEP, *ids]], dtype=torch.long),), [prompt], prompt)

    def decode(self, outputs: torch.Tensor) -> str:
        """Token ids -> text (separators as line breaks)."""
        ids = [int(i) for i in torch.as_tensor(outputs).flatten()]
        if self.level == "char":
            return "".join(self.vocab[i] if i != UNK else "\ufffd" for i in ids)
        words = [self.vocab[i] for i in ids]
        return " ".join(words).replace(" <eos> ", "\n").replace("<eos>", "\n")

    def save_artifacts(self, run_dir: Path) -> list[Path]:
        self.setup("fit")
        path = Path(run_dir) / "vocab.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        settings = {
            "version": VOCAB_VERSION,
            "tokenizer_version": imdb.TOKENIZER_VERSION,
            "level": self.level,
            "unk_id": UNK,
            "separator_id": SEP,
            "tokens": self.vocab,
        }
        path.write_text(json.dumps(settings, ensure_ascii=False), encoding="utf-8")
        return [path]

    def load_artifacts(self, run_dir: Path) -> None:
        """The vocabulary saved with the run (no data needed)."""
        path = Path(run_dir) / "vocab.json"
        if not path.is_file():
            raise UserError(f"run: {path} is missing: this run did not save its vocabulary")
        saved = read_json(path, "run", "run's vocabulary")
        if saved.get("version") != VOCAB_VERSION or saved.get("level") != self.level:
            raise UserError(
                f"run: {path} is not a {self.level}-level vocabulary of this version "
                f"({saved.get('level')}, version {saved.get('version')})"
            )
        self._set_vocab(saved["tokens"])

    # -- reading -------------------------------------------------------------------------------
    def _set_vocab(self, tokens: list[str]) -> None:
        self.vocab = list(tokens)
        self.index = {t: i for i, t in enumerate(self.vocab) if i != UNK}

    def _read(self, files: list[tuple[Path, int]], budget: int | None) -> list[bytes]:
        """Normalised reviews from `files` in order, until `budget` characters (bytes) are
        reached; the last one cut to fit."""
        texts: list[bytes] = []
        total = 0
        for start in range(0, len(files), READ_AT_ONCE):
            for text in imdb.read_reviews(files[start : start + READ_AT_ONCE]):
                text = text.replace(b"\n", b" ")
                if budget is not None and total + len(text) + 1 > budget:
                    texts.append(text[: max(budget - total - 1, 0)])
                    return texts
                texts.append(text)
                total += len(text) + 1
        return texts

    def _stream(self, reviews: list[bytes]) -> torch.Tensor:
        ids: list[int] = []
        for review in reviews:
            ids.extend(self.index.get(t, UNK) for t in self.tokens(review))
            ids.append(SEP)
        return torch.tensor(ids, dtype=torch.int32)

    def build_vocab(self, reviews: list[bytes]) -> list[str]:
        counts = collections.Counter()
        for review in reviews:
            counts.update(self.tokens(review))
        counts.pop(SEPARATORS[self.level], None)
        ranked = sorted(
            (kv for kv in counts.items() if kv[1] >= self.min_freq), key=lambda kv: (-kv[1], kv[0])
        )
        return ["<unk>", SEPARATORS[self.level], *(t for t, _ in ranked[: self.vocab_size - 2])]

    def prepare_data(self) -> None:
        imdb.ensure_aclimdb(self.data_dir, self.url, self.sha256, self.download)

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        root = imdb.ensure_aclimdb(self.data_dir, self.url, self.sha256, self.download)
        generator = torch.Generator().manual_seed(self.seed)
        train_files = imdb.review_files(root, "train")
        test_files = imdb.review_files(root, "test")
        order = torch.randperm(len(train_files), generator=generator).tolist()
        test_order = torch.randperm(len(test_files), generator=generator).tolist()
        # Validation reviews first in the seeded order, training reviews after them: disjoint.
        val = self._read([train_files[i] for i in order], self.max_eval_chars)
        train = self._read([train_files[i] for i in order[len(val) :]], self.max_train_chars)
        test = self._read([test_files[i] for i in test_order], self.max_eval_chars)
        if len(val) >= len(order) or not train:
            raise ConfigError(
                "data.max_eval_chars",
                f"{self.max_eval_chars} characters of validation text take every training "
                "review; lower it so that reviews are left for training",
            )
        self._set_vocab(self.build_vocab(train))
        self.streams = {"train": self._stream(train), "val": self._stream(val), "test": self._stream(test)}  # fmt: skip
        for split, stream in self.streams.items():
            rows = (self.batch_size if split == "train" else self.eval_batch_size) if self.tbptt else None  # fmt: skip
            windows = chunks(stream, self.seq_len, rows)
            if len(windows) == 0:
                raise ConfigError(
                    "data.seq_len",
                    f"the {split} text ({len(stream)} tokens) is too short for one batch row of "
                    f"{self.seq_len} tokens{f' x {rows} rows' if rows else ''}; lower data.seq_len "
                    "or the batch size, or read more text (data.max_train_chars / max_eval_chars)",
                )
            self.datasets[split] = TensorDataset(windows[:, :-1], windows[:, 1:])
        log.info("%s", self.describe())

    # -- for baselines and callbacks -----------------------------------------------------------
    def unigram_loss(self, split: str = "test") -> float:
        """Cross-entropy (nats per token) of `split` under the training stream's token
        frequencies (add-one smoothed over the vocabulary): what a model that ignores context
        scores."""
        counts = torch.bincount(self.streams["train"].long(), minlength=len(self.vocab)).double()
        log_p = torch.log((counts + 1) / (counts.sum() + len(self.vocab)))
        return float(-log_p[self.streams[split].long()].mean())

    def describe(self) -> str:
        sizes = ", ".join(f"{k} {len(v):,}" for k, v in self.streams.items())
        return f"{self.level}-level IMDB text: {len(self.vocab)} tokens in the vocabulary; {sizes} tokens"
