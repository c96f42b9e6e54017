"""Multivariate series classification from the UEA archive (timeseriesclassification.com),
in the archive's `.ts` format: JapaneseVowels, BasicMotions, or any other set of the archive.

Files: `<data_dir>/UEA/<name>/<name>_TRAIN.ts` and `<name>_TEST.ts`. When they are missing,
`<data_dir>/UEA/<name>.zip` is taken from there or downloaded from `url` (the config builds it
from `name`),
checked against `sha256` when one is given (the archive publishes none: without it the digest
is logged so that it can be pinned), and the two `.ts` files are extracted from it into a
temporary folder renamed into place only when complete.

`.ts` format: `#` comment lines, a header of `@problemName`, `@univariate`, `@dimensions`,
`@equalLength`, `@seriesLength`, `@classLabel true <labels...>` lines, then `@data` and one case
per line: the channels separated by `:`, each channel's values by `,`, the class label last.
Cases may differ in length (JapaneseVowels: 7 to 29 steps).

Batches are `(x, lengths, y)`: x (batch, steps, channels) zero-padded at the end to the longest
case, lengths the true ones, y class ids in the order of `@classLabel`. Splits: the official
test split tests; `val_size` training cases (a fraction < 1 or a count), drawn with `seed`,
validate. Each channel is standardised with the mean and std of the training cases' real steps
(after the validation cases are taken out), padding excluded.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch
from pydantic import ConfigDict
from torch.utils.data import TensorDataset
from typing_extensions import TypedDict  # pydantic reads this one on Python < 3.12

from nnlab.data.base import DataModule, Encoded, input_file, read_numbers
from nnlab.data.download import check_digest, download, sha256_of
from nnlab.errors import ConfigError, DataError, UserError
from nnlab.files import read_json
from nnlab.schema import InMemory, NonNegativeInt, PositiveFloat, PositiveInt

log = logging.getLogger(__name__)

URL = "https://www.timeseriesclassification.com/aeon-toolkit/{name}.zip"  # str.format(name=)
SPLITS = ("TRAIN", "TEST")


@dataclass
class TSFile:
    """A parsed `.ts` file: one (steps, channels) float tensor per case, labels as written."""

    header: dict[str, str]
    cases: list[torch.Tensor]
    labels: list[str]
    classes: list[str]


def _header_value(header: dict[str, str], key: str, path: Path) -> str:
    if key not in header:
        raise DataError(f"{path}: no @{key} line before @data; is it a .ts file of the archive?")
    return header[key]


def read_ts(path: Path, need_labels: bool = True) -> TSFile:
    """Parse a classification `.ts` file, with errors naming the file and line. Without
    `need_labels` (new cases to classify) `@classLabel false` files read too, labels empty."""
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    header: dict[str, str] = {}
    cases, labels = [], []
    in_data = False
    with path.open(encoding="utf-8", errors="replace") as f:
        for line_no, line in enumerate(f, start=1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            if not in_data:
                if not line.startswith("@"):
                    raise DataError(f"{path} line {line_no}: expected an @ header line or @data")
                key, _, value = line[1:].partition(" ")
                key = key.lower()
                if key == "data":
                    in_data = True
                    dims = int(_header_value(header, "dimensions", path))
                    label_spec = _header_value(header, "classlabel", path).split()
                    labelled = bool(label_spec) and label_spec[0].lower() == "true"
                    if need_labels and not labelled:
                        raise DataError(f"{path}: @classLabel is not true: no class labels")
                    classes = label_spec[1:]
                else:
                    header[key] = value.strip()
                continue
            fields = line.split(":")
            if not labelled:
                fields.append("")
            if len(fields) != dims + 1:
                raise DataError(
                    f"{path} line {line_no}: {len(fields) - 1} channels, but @dimensions "
                    f"says {dims}"
                )
            *channels, label = fields
            if labelled and label.strip() not in classes:
                raise DataError(
                    f"{path} line {line_no}: label {label.strip()!r} is not one of @classLabel "
                    f"({' '.join(classes)})"
                )
            try:
                values = [[float(v) for v in c.split(",")] for c in channels]
            except ValueError:
                raise DataError(
                    f"{path} line {line_no}: a value is not a number (missing values '?' are "
                    "not supported)"
                ) from None
            steps = {len(v) for v in values}
            if len(steps) != 1:
                raise DataError(f"{path} line {line_no}: channels of different lengths {steps}")
            case = torch.tensor(values, dtype=torch.float32).T  # (steps, channels)
            if not torch.isfinite(case).all():
                raise DataError(f"{path} line {line_no}: non-finite values (NaN / inf)")
            cases.append(case)
            if labelled:
                labels.append(label.strip())
    if not in_data:
        raise DataError(f"{path}: no @data line; is it a .ts file of the archive?")
    if not cases:
        raise DataError(f"{path}: no cases after @data")
    return TSFile(header, cases, labels, classes)


def pad_cases(cases: list[torch.Tensor], steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(n, steps, channels) zero-padded at the end, and the true lengths."""
    x = torch.zeros(len(cases), steps, cases[0].shape[1])
    lengths = torch.tensor([len(c) for c in cases])
    for i, c in enumerate(cases):
        x[i, : len(c)] = c
    return x, lengths


# -- download, verify, extract -----------------------------------------------------------------
def extract_ts(archive: Path, name: str, folder: Path) -> None:
    """The two `<name>_{TRAIN,TEST}.ts` members of the zip (wherever they sit in it) into
    `folder`, through a temporary folder renamed into place when both are there."""
    wanted = {f"{name}_{s}.ts" for s in SPLITS}
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-partial-", dir=folder.parent))
    try:
        try:
            with zipfile.ZipFile(archive) as zf:
                found = {}
                for info in zf.infolist():
                    base = Path(info.filename).name
                    if base in wanted and not info.is_dir():
                        found[base] = info
                if set(found) != wanted:
                    raise DataError(
                        f"{archive} lacks {', '.join(sorted(wanted - set(found)))}; is it the "
                        f"archive of {name}? delete it so that it is downloaded again"
                    )
                for base, info in found.items():  # written under their base names only
                    with zf.open(info) as src, (tmp / base).open("wb") as dst:
                        shutil.copyfileobj(src, dst)
        except (zipfile.BadZipFile, EOFError, OSError) as exc:
            raise DataError(
                f"{archive} is not a readable zip archive ({exc}); delete it so that it is "
                "downloaded again"
            ) from None
        if folder.exists():
            shutil.rmtree(folder)
        tmp.rename(folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def ensure_files(
    data_dir: Path, name: str, url: str | None, sha256: str | None, allow_download: bool
) -> dict[str, Path]:
    """The `.ts` files of `name`: there already, or extracted from its zip (downloaded first
    when it is missing and downloads are allowed)."""
    folder = data_dir / "UEA" / name
    files = {s: folder / f"{name}_{s}.ts" for s in SPLITS}
    if all(p.is_file() for p in files.values()):
        return files
    archive = data_dir / "UEA" / f"{name}.zip"
    if archive.is_file():
        check_digest(sha256_of(archive), sha256, archive, str(archive))
    elif allow_download and url:
        download(url, archive, sha256, f"{archive.name} (or its two .ts files)")
    else:
        raise DataError(
            f"no {files['TRAIN'].name} / {files['TEST'].name} in {folder} and no {archive.name} "
            f"in {archive.parent}; set data.download=true, or put the files there "
            "(NNLAB_DATA_DIR moves the data directory)"
        )
    extract_ts(archive, name, folder)
    return files


class UEAShape(TypedDict):
    """A row of `known`: what the models are sized from."""

    __pydantic_config__ = ConfigDict(extra="forbid")  # type: ignore[misc]
    input_size: PositiveInt
    num_classes: PositiveInt


class UEADataModule(DataModule):
    """A UEA multivariate classification set as padded (x, lengths, y) batches (see above)."""

    target_kind = "classes"

    @classmethod
    def schema_check(cls, node: dict, key: str) -> None:
        """nnlab.schema's hook: a set the models cannot be sized for is named as data.name."""
        if node.get("input_size") is None or node.get("num_classes") is None:
            raise ConfigError(
                f"{key}.name",
                f"{node.get('name')!r} is not among the sets in {key}.known "
                f"({', '.join(node.get('known') or {})}); for another UEA set give "
                f"{key}.input_size (its @dimensions) and {key}.num_classes",
            )

    def __init__(
        self,
        name: str = "JapaneseVowels",
        data_dir: str = "data",
        input_size: PositiveInt | None = None,
        num_classes: PositiveInt | None = None,
        known: dict[str, UEAShape] | None = None,
        val_size: PositiveFloat = 0.2,  # a fraction of the training cases, or a count
        batch_size: PositiveInt = 32,
        seed: int = 0,
        standardize: bool = True,
        download: bool = True,
        url: str | None = None,
        sha256: str | None = None,
        num_workers: NonNegativeInt = 0,
        in_memory: InMemory = "auto",
    ):
        super().__init__(
            batch_size, shuffle_seed=seed, in_memory=in_memory, num_workers=num_workers
        )
        self.schema_check({"name": name, "known": known, "input_size": input_size,
                           "num_classes": num_classes}, "data")  # fmt: skip
        self.save_hyperparameters()
        self.name, self.data_dir = name, Path(data_dir).expanduser()
        self.input_size, self.num_classes = int(input_size), int(num_classes)
        self.val_size, self.seed, self.standardize = val_size, int(seed), standardize
        # An all-digit checksum on the command line arrives as an int: keep it as text.
        sha256 = str(sha256).strip().lower() if sha256 not in (None, "") else None
        self.download, self.url, self.sha256 = download, url or URL.format(name=name), sha256
        self.classes: list[str] = []
        self.mean = torch.zeros(self.input_size)
        self.std = torch.ones(self.input_size)
        self.steps: int | None = None  # the longest case of any split (the padded length)

    # -- the data protocol -------------------------------------------------------------------
    def example_input(self, n: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
        steps = self.steps or 8
        return torch.zeros(n, steps, self.input_size), torch.full((n,), steps)

    def encode(self, raw) -> Encoded:
        """Cases as the model reads them: each a (steps, channels) array, standardised with the
        training statistics, zero-padded together; returns (x, lengths). `raw`: a `.ts` file
        (labelled or `@classLabel false`), a `.npy` array (steps, channels) of one case or
        (n, steps, channels) of several, a CSV file of one case (a row per step, a column per
        channel; a header row is allowed), or a list of arrays."""
        names = None
        if (path := input_file(raw)) is not None:
            if path.suffix == ".ts":
                cases = read_ts(path, need_labels=False).cases
            else:
                array = read_numbers(path)
                cases = list(array) if array.dim() == 3 else [array]
            names = [f"{path.name}:{i}" for i in range(len(cases))]
        elif isinstance(raw, str):
            raise UserError(
                f"input: no file {raw!r}; give a .ts file, a .npy array or a CSV file of one "
                f"case ({self.input_size} channels)"
            )
        else:
            cases = raw
        cases = [torch.as_tensor(c, dtype=torch.float32) for c in cases]
        for i, c in enumerate(cases):
            if c.dim() != 2 or c.shape[1] != self.input_size or len(c) == 0:
                raise UserError(
                    f"input case {i}: shape {tuple(c.shape)}, but this run reads (steps, "
                    f"{self.input_size} channels): a row per step, a column per channel"
                )
        x, lengths = pad_cases([(c - self.mean) / self.std for c in cases], max(map(len, cases)))
        return Encoded((x, lengths), names or [str(i) for i in range(len(cases))], cases)

    def load_artifacts(self, run_dir) -> None:
        """The class names and the scaling from the run's `uea.json`: predictions need
        neither the data files nor a download."""
        path = Path(run_dir) / "uea.json"
        if not path.is_file():
            return super().load_artifacts(run_dir)
        meta = read_json(path, "run", "run's uea.json")
        self.classes = list(meta["classes"])
        self.mean, self.std = torch.tensor(meta["mean"]), torch.tensor(meta["std"])

    def save_artifacts(self, run_dir) -> list[Path]:
        """`uea.json`: the class names and the standardisation, which predictions need."""
        self.setup("fit")  # they come from the training file
        path = Path(run_dir) / "uea.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = {
            "name": self.name,
            "classes": self.classes,
            "mean": self.mean.tolist(),
            "std": self.std.tolist(),
        }
        path.write_text(json.dumps(meta, indent=1), encoding="utf-8")
        return [path]

    # -- Lightning hooks ---------------------------------------------------------------------
    def prepare_data(self) -> None:
        ensure_files(self.data_dir, self.name, self.url, self.sha256, self.download)

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        paths = ensure_files(self.data_dir, self.name, self.url, self.sha256, self.download)
        train, test = read_ts(paths["TRAIN"]), read_ts(paths["TEST"])
        dims = train.cases[0].shape[1]
        if dims != self.input_size:
            raise ConfigError(
                "data.input_size",
                f"{self.input_size}, but {paths['TRAIN']} has {dims} channels; fix the row of "
                f"{self.name} in data.known (or data.input_size)",
            )
        if len(train.classes) != self.num_classes:
            raise ConfigError(
                "data.num_classes",
                f"{self.num_classes}, but {paths['TRAIN']} has {len(train.classes)} classes; fix "
                f"the row of {self.name} in data.known (or data.num_classes)",
            )
        if test.classes != train.classes or test.cases[0].shape[1] != dims:
            raise DataError(f"{paths['TEST']}: channels or @classLabel differ from the TRAIN file")
        self.classes = train.classes
        n = len(train.cases)
        n_val = math.floor(self.val_size * n) if self.val_size < 1 else int(self.val_size)
        if not 0 < n_val < n:
            raise ConfigError(
                "data.val_size",
                f"{self.val_size} leaves {n - n_val} of the {n} training cases for training "
                f"and {n_val} for validation; use a fraction such as 0.2",
            )
        # Stratified by class: a small set (BasicMotions: 10 cases per class) keeps every class
        # in both parts.
        generator = torch.Generator().manual_seed(self.seed)
        labels = torch.tensor([train.classes.index(lab) for lab in train.labels])
        order = torch.randperm(n, generator=generator)
        ranks = torch.empty(n)
        for c in labels.unique():
            members = order[labels[order] == c]
            ranks[members] = (torch.arange(len(members)) + 0.5) / len(members)
        by_rank = order[torch.argsort(ranks[order], stable=True)]
        val_rows, train_rows = by_rank[:n_val], by_rank[n_val:]
        fit_cases = [train.cases[i] for i in train_rows.tolist()]
        if self.standardize:  # the training cases' real steps only: no peeking at val/test
            steps = torch.cat(fit_cases)
            self.mean, self.std = steps.mean(0), steps.std(0).clamp(min=1e-8)
        self.steps = max(len(c) for c in train.cases + test.cases)
        test_labels = torch.tensor([test.classes.index(lab) for lab in test.labels])
        parts = {
            "train": ([train.cases[i] for i in train_rows.tolist()], labels[train_rows]),
            "val": ([train.cases[i] for i in val_rows.tolist()], labels[val_rows]),
            "test": (test.cases, test_labels),
        }
        for split, (cases, y) in parts.items():
            x, lengths = pad_cases([(c - self.mean) / self.std for c in cases], self.steps)
            self.datasets[split] = TensorDataset(x, lengths, y)
        if self.batch_size > len(train_rows):
            raise ConfigError(
                "data.batch_size",
                f"{self.batch_size} is larger than the {len(train_rows)} training cases",
            )
        log.info(
            "%s: %d train / %d val / %d test cases, %d channels, up to %d steps, %d classes",
            self.name,
            len(train_rows),
            n_val,
            len(test.cases),
            dims,
            self.steps,
            self.num_classes,
        )
