"""Tables of independent rows: a CSV file (or `.csv.gz`) with a header row, feature columns in,
one target column (a class label, string or integer, or a number to regress) or several 0/1
columns (multi-label) out.

Rows are independent, so they are shuffled (seeded) before the split, by fractions or counts.
Everything learnt from the data comes from the training rows only: each categorical feature's
categories (one-hot; a category never seen in training is all zeros), each numeric feature's
mean and standard deviation (and a regression target's, undone by `decode`). A column is numeric
when every cell of it is a number, else categorical (`categorical` names more). Class labels
come from every row, sorted (numerically when they are integers).

The encoders (`TableEncoder`) are written into the run as `tabular.json`, so nnlab-predict
reads raw rows (`input=rows.csv`, the feature columns by name) without the training file. The
sizes the models read (`input_size`, `num_classes`, `output_size`) are derived from the same
encoders by the `${nnlab.tabular:...}` interpolation (conf/data/tabular.yaml).
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch.utils.data import TensorDataset

from nnlab.data.base import DataModule, Encoded
from nnlab.data.splits import split_sizes
from nnlab.errors import ConfigError, DataError, UserError

TargetType = Literal["auto", "classes", "values", "labels"]
TARGET_TYPES = ("auto", "classes", "values", "labels")
SIZE_KEYS = ("input_size", "flat_input_size", "num_classes", "num_labels", "output_size")
ENCODER_FILE = "tabular.json"
ENCODER_VERSION = 1


# -- reading ---------------------------------------------------------------------------------
def open_text(path: Path) -> io.TextIOBase:
    """A CSV file, gzip-compressed when its name ends in .gz."""
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", newline="")
    return path.open(newline="", encoding="utf-8")


def read_rows(path: Path, key: str = "data.path") -> tuple[list[str], list[list[str]], list[int]]:
    """(header, rows of stripped cells, each row's line number); blank lines skipped. A row
    with another number of cells than the header is an error naming its line."""
    if not path.is_file():
        raise DataError(f"{key}: CSV file not found: {path}; check the path ({key}=...)")
    try:
        with open_text(path) as f:
            reader = csv.reader(f)
            header = [h.strip() for h in next(reader, None) or []]
            rows, lines = [], []
            for line, row in enumerate(reader, start=2):
                if not any(cell.strip() for cell in row):
                    continue
                if len(row) != len(header):
                    raise DataError(
                        f"{key}: {path} line {line} has {len(row)} cells, the header "
                        f"{len(header)}; every row needs one value per column"
                    )
                rows.append([cell.strip() for cell in row])
                lines.append(line)
    except (OSError, EOFError, UnicodeDecodeError, csv.Error) as exc:
        if isinstance(exc, OSError) and exc.filename:
            raise
        raise DataError(f"{key}: {path} is not a readable CSV file ({exc})") from None
    if not header or not any(header):
        raise DataError(f"{key}: {path} is empty; it needs a header row and rows of values")
    if repeated := sorted({h for h in header if header.count(h) > 1}):
        raise DataError(f"{key}: {path} names the column {repeated[0]!r} more than once")
    if not rows:
        raise DataError(f"{key}: {path} has no rows below its header")
    return header, rows, lines


def as_number(cell: str) -> float | None:
    try:
        value = float(cell)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def is_integer(cell: str) -> bool:
    value = as_number(cell)
    return value is not None and value == int(value) and "." not in cell and "e" not in cell.lower()


def write_example_table(path: Path, rows: int, seed: int = 0) -> Path:
    """A generated table of penguin-like measurements (five numbers and an island, two
    categories: seven inputs once one-hot encoded) and a species label (three strings), the
    species drawn first and the measurements around each species' own centre."""
    g = torch.Generator().manual_seed(seed)
    species = ["adelie", "chinstrap", "gentoo"]
    centres = torch.tensor(
        [
            [38.8, 18.3, 190.0, 3700.0, 6.0],
            [48.8, 18.4, 196.0, 3730.0, 7.0],
            [47.5, 15.0, 217.0, 5080.0, 6.5],
        ]
    )
    spread = torch.tensor([2.5, 1.1, 6.5, 450.0, 2.5])
    label = torch.randint(0, 3, (rows,), generator=g)
    values = centres[label] + spread * torch.randn(rows, 5, generator=g)
    # the island leans on the species: adelies on both, the others mostly on one
    north = torch.rand(rows, generator=g) < torch.tensor([0.5, 0.85, 0.15])[label]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    columns = ["bill_length", "bill_depth", "flipper_length", "body_mass", "age", "island"]
    with tmp.open("w", newline="", encoding="utf-8") as f:
        out = csv.writer(f)
        out.writerow([*columns, "species"])
        for i in range(rows):
            cells = [f"{float(v):.2f}" for v in values[i]]
            out.writerow([*cells, "north" if north[i] else "south", species[int(label[i])]])
    tmp.replace(path)
    return path


# -- the encoders ----------------------------------------------------------------------------
@dataclass
class TableEncoder:
    """Raw cells -> network inputs and targets, fitted on the training rows."""

    features: list[str]
    targets: list[str]
    target_kind: str  # "classes", "values" or "labels" (data/base.py)
    numeric: dict[str, tuple[float, float]] = field(default_factory=dict)  # mean, std
    categories: dict[str, list[str]] = field(default_factory=dict)
    classes: list[str] | None = None
    target_scale: list[tuple[float, float]] | None = None  # regression targets' mean, std

    @property
    def input_size(self) -> int:
        return sum(len(self.categories[f]) if f in self.categories else 1 for f in self.features)

    @property
    def output_size(self) -> int:
        return len(self.classes) if self.target_kind == "classes" else len(self.targets)

    def sizes(self) -> dict[str, Any]:
        """The size keys a model reads from the data config (`${nnlab.tabular:...}`)."""
        return {
            "input_size": self.input_size,
            "flat_input_size": self.input_size,
            "num_classes": len(self.classes) if self.target_kind == "classes" else None,
            "num_labels": len(self.targets) if self.target_kind == "labels" else None,
            "output_size": self.output_size,
            "target_kind": self.target_kind,
        }

    def input_names(self) -> list[str]:
        """What each input column is: `name` or `name=category`."""
        names = []
        for f in self.features:
            names += [f"{f}={c}" for c in self.categories[f]] if f in self.categories else [f]
        return names

    def encode_features(self, rows: list[list[str]], header: list[str], where: str) -> torch.Tensor:
        """(rows, input_size) float32: numbers standardised, categories one-hot."""
        columns = []
        for name in self.features:
            i = header.index(name)
            if name in self.categories:
                index = {c: k for k, c in enumerate(self.categories[name])}
                onehot = torch.zeros(len(rows), len(index))
                for r, row in enumerate(rows):
                    if (k := index.get(row[i])) is not None:  # unseen in training: all zeros
                        onehot[r, k] = 1.0
                columns.append(onehot)
            else:
                mean, std = self.numeric[name]
                values = numbers(rows, i, name, where)
                columns.append(((values - mean) / std).unsqueeze(-1))
        return torch.cat(columns, dim=1).float()

    def encode_targets(self, rows: list[list[str]], header: list[str], where: str) -> torch.Tensor:
        index = [header.index(t) for t in self.targets]
        if self.target_kind == "classes":
            lookup = {c: k for k, c in enumerate(self.classes or [])}
            out = []
            for row in rows:
                label = class_name(row[index[0]])
                if label not in lookup:
                    raise DataError(f"{where}: class {label!r} is not one of {self.classes}")
                out.append(lookup[label])
            return torch.tensor(out, dtype=torch.long)
        values = torch.stack(
            [numbers(rows, i, t, where) for i, t in zip(index, self.targets, strict=True)], 1
        )
        if self.target_kind == "labels":
            if not ((values == 0) | (values == 1)).all():
                raise DataError(
                    f"{where}: multi-label target columns {self.targets} must hold 0 or 1 only"
                )
            return values.float()
        mean, std = torch.tensor(self.target_scale, dtype=torch.float64).T
        return ((values - mean) / std).float()

    def to_json(self) -> dict[str, Any]:
        return {"version": ENCODER_VERSION, **asdict(self)}

    @classmethod
    def from_json(cls, meta: Mapping[str, Any]) -> TableEncoder:
        meta = {k: v for k, v in meta.items() if k != "version"}
        meta["numeric"] = {k: tuple(v) for k, v in meta["numeric"].items()}
        if meta.get("target_scale") is not None:
            meta["target_scale"] = [tuple(v) for v in meta["target_scale"]]
        return cls(**meta)


def class_name(cell: str) -> str:
    """A class label as stored: integers without their spelling ("01", "1.0" -> "1")."""
    value = as_number(cell)
    if value is not None and value == int(value):
        return str(int(value))
    return cell


def numbers(rows: list[list[str]], i: int, name: str, where: str) -> torch.Tensor:
    values = []
    for r, row in enumerate(rows):
        value = as_number(row[i])
        if value is None:
            raise DataError(
                f"{where}: row {r + 1}: {row[i]!r} in column {name!r} is not a number; fill or "
                "drop missing values first (or list the column in data.categorical)"
            )
        values.append(value)
    return torch.tensor(values, dtype=torch.float64)


@dataclass
class Table:
    """A read and split table: its header, the rows of each split, and the fitted encoders."""

    header: list[str]
    splits: dict[str, list[list[str]]]
    encoder: TableEncoder


def load_table(
    path: Path,
    target: str | Sequence[str],
    features: Sequence[str] | None = None,
    categorical: Sequence[str] | None = None,
    target_type: str = "auto",
    splits: Sequence[float | int] = (0.7, 0.15, 0.15),
    seed: int = 0,
    shuffle_rows: bool = True,
    standardize: bool = True,
) -> Table:
    """Read `path`, split its rows and fit the encoders on the training rows."""
    header, rows, lines = read_rows(path)
    targets = [target] if isinstance(target, str) else list(target or [])
    if not targets:
        raise ConfigError("data.target", "name the column(s) to predict, e.g. data.target=species")
    if target_type not in TARGET_TYPES:
        raise ConfigError(
            "data.target_type", f"one of {', '.join(TARGET_TYPES)}, got {target_type!r}"
        )
    for key, names in (
        ("data.target", targets),
        ("data.features", features),
        ("data.categorical", categorical),
    ):
        for name in names or []:
            if name not in header:
                raise ConfigError(
                    key, f"no column {name!r} in {path}; its columns are: {', '.join(header)}"
                )
    features = list(features) if features is not None else [h for h in header if h not in targets]
    if clash := [f for f in features if f in targets]:
        raise ConfigError("data.features", f"{clash[0]!r} is also the target; a target is no input")
    if not features:
        raise ConfigError("data.features", f"no feature columns left in {path} besides the target")
    for name in [*features, *targets]:  # an empty cell is a missing value, never a category
        i = header.index(name)
        if (r := next((r for r, row in enumerate(rows) if not row[i]), None)) is not None:
            raise DataError(
                f"data.path: {path} line {lines[r]}: column {name!r} is empty; fill or drop "
                "missing values first"
            )
    sizes = split_sizes(len(rows), splits)
    order = list(range(len(rows)))
    if shuffle_rows:  # independent rows: a seeded shuffle, so no split is one end of the file
        order = torch.randperm(len(rows), generator=torch.Generator().manual_seed(seed)).tolist()
    parts, start = {}, 0
    for name, size in zip(("train", "val", "test"), sizes, strict=True):
        parts[name] = [rows[i] for i in order[start : start + size]]
        start += size
    train = parts["train"]

    # the target: several columns are multi-label; one is classes or values
    kind = target_type
    column = [row[header.index(targets[0])] for row in rows]
    if kind == "auto":
        if len(targets) > 1:
            kind = "labels"
        elif all(is_integer(c) for c in column) or any(as_number(c) is None for c in column):
            kind = "classes"  # integers or strings: class labels
        else:
            kind = "values"
    if kind == "classes" and len(targets) > 1:
        raise ConfigError(
            "data.target_type",
            f"classes need one target column, got {targets}; use labels for several",
        )
    encoder = TableEncoder(features=features, targets=targets, target_kind=kind)
    if kind == "classes":
        labels = {class_name(c) for c in column}
        numeric = all(as_number(c) is not None for c in labels)
        encoder.classes = sorted(labels, key=(lambda c: float(c)) if numeric else None)
        if len(encoder.classes) < 2:
            raise DataError(f"data.target: column {targets[0]!r} of {path} holds one class only")
    elif kind == "values" and train:
        stats = []
        for t in targets:
            values = numbers(train, header.index(t), t, f"data.path: {path}")
            stats.append(mean_std(values) if standardize else (0.0, 1.0))
        encoder.target_scale = stats

    forced = set(categorical or [])
    for name in features:
        i = header.index(name)
        if name in forced or any(as_number(row[i]) is None for row in rows):
            encoder.categories[name] = sorted({row[i] for row in train})
        else:
            values = numbers(train, i, name, f"data.path: {path}")
            encoder.numeric[name] = mean_std(values) if standardize else (0.0, 1.0)
    return Table(header, parts, encoder)


def mean_std(values: torch.Tensor) -> tuple[float, float]:
    std = float(values.std()) if len(values) > 1 else 1.0
    return float(values.mean()), std if std > 1e-8 else 1.0


_CACHE: dict[tuple, Table] = {}


def cached_table(**kwargs: Any) -> Table:
    """`load_table` once per file version and settings: the size interpolations and the data
    module of one process read the file once."""
    path = Path(kwargs["path"]).expanduser()
    stat = path.stat() if path.is_file() else None
    key = (str(path), stat and (stat.st_mtime_ns, stat.st_size), json.dumps(kwargs, default=str))
    if key not in _CACHE:
        _CACHE[key] = load_table(**{**kwargs, "path": path})
    return _CACHE[key]


def table_size(name: str, *, _parent_: Any) -> Any:
    """`${nnlab.tabular:input_size}` in conf/data/tabular.yaml: a size of the table's encoding
    (the data node's file and settings), or target_kind; sizes that do not apply are null."""
    data = _parent_
    path = Path(str(data.path)).expanduser()
    if int(data.get("generate") or 0) and not path.is_file():
        write_example_table(path, int(data.generate))  # one file whatever the run's seed
    table = cached_table(**table_settings(data))
    return table.encoder.sizes()[name]


def table_settings(data: Any) -> dict[str, Any]:
    """The keys of a data config (or module) that decide the table's encoding."""

    def plain(value):
        if value is None or isinstance(value, str):
            return value
        return list(value)

    return {
        "path": str(data.path) if not isinstance(data, Mapping) else str(data["path"]),
        "target": plain(data.target),
        "features": plain(data.features),
        "categorical": plain(data.categorical),
        "target_type": str(data.target_type),
        "splits": [v for v in data.splits],
        "seed": int(data.seed),
        "shuffle_rows": bool(data.shuffle_rows),
        "standardize": bool(data.standardize),
    }


# -- the data module -------------------------------------------------------------------------
class TabularDataModule(DataModule):
    """Rows of a CSV file -> (x (input_size,), y): y a class index, k-hot labels or values."""

    columns = ("row", "class")

    def __init__(
        self,
        path: str | None = None,
        target: str | list[str] | None = None,
        features: list[str] | None = None,
        categorical: list[str] | None = None,
        target_type: TargetType = "auto",
        splits: list[float] | list[int] = (0.7, 0.15, 0.15),
        seed: int = 0,
        shuffle_rows: bool = True,
        standardize: bool = True,
        generate: int = 0,
        batch_size: int = 32,
        eval_batch_size: int | None = None,
        shuffle: bool = True,
        shuffle_seed: int = 0,
        in_memory: bool | Literal["auto"] = "auto",
        num_workers: int = 0,
        input_size: int | None = None,
        flat_input_size: int | None = None,
        num_classes: int | None = None,
        num_labels: int | None = None,
        output_size: int | None = None,
        target_kind: Literal["classes", "values", "labels"] | None = None,
    ):
        super().__init__(
            batch_size,
            eval_batch_size,
            shuffle=shuffle,
            shuffle_seed=shuffle_seed,
            in_memory=in_memory,
            num_workers=num_workers,
        )
        if not path:
            raise ConfigError("data.path", "no CSV file given; pass data.path=/path/to/table.csv")
        if not target:
            raise ConfigError(
                "data.target", "name the column(s) to predict, e.g. data.target=species"
            )
        if target_type not in TARGET_TYPES:
            raise ConfigError(
                "data.target_type", f"one of {', '.join(TARGET_TYPES)}, got {target_type!r}"
            )
        self.save_hyperparameters()
        self.path, self.target, self.features = str(path), target, features
        self.categorical, self.target_type = categorical, target_type
        self.splits, self.seed = list(splits), int(seed)
        self.shuffle_rows, self.standardize, self.generate = (
            shuffle_rows,
            standardize,
            int(generate),
        )
        self.sizes = {
            "input_size": input_size,
            "flat_input_size": flat_input_size,
            "num_classes": num_classes,
            "num_labels": num_labels,
            "output_size": output_size,
            "target_kind": target_kind,
        }
        self.encoder: TableEncoder | None = None
        self.test_lines: list[str] = []

    # -- what the encoders say -----------------------------------------------------------------
    def fitted(self) -> TableEncoder:
        if self.encoder is None:
            self.setup("fit")
        assert self.encoder is not None
        return self.encoder

    @property
    def target_kind(self) -> str:  # type: ignore[override]
        return self.fitted().target_kind

    @property
    def num_classes(self) -> int | None:  # type: ignore[override]
        enc = self.fitted()
        return len(enc.classes) if enc.classes else None

    @property
    def num_labels(self) -> int | None:
        enc = self.fitted()
        return len(enc.targets) if enc.target_kind == "labels" else None

    @property
    def classes(self) -> list[str] | None:  # type: ignore[override]
        enc = self.fitted()
        return enc.targets if enc.target_kind == "labels" else enc.classes

    @property
    def output_size(self) -> int:
        return self.fitted().output_size

    @property
    def targets(self) -> list[str]:
        return self.fitted().targets

    # -- the protocol (data/base.py) -----------------------------------------------------------
    def prepare_data(self) -> None:
        path = Path(self.path).expanduser()
        if self.generate and not path.is_file():
            write_example_table(path, self.generate)

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        self.prepare_data()
        table = cached_table(**table_settings(self))
        where = f"data.path: {self.path}"
        self.encoder = enc = table.encoder
        self._check_sizes()
        for name, rows in table.splits.items():
            if not rows:
                raise ConfigError(
                    "data.splits",
                    f"the {name} split has no rows ({self.splits} of {sum(map(len, table.splits.values()))}); give it some",
                )
            x = enc.encode_features(rows, table.header, where)
            y = enc.encode_targets(rows, table.header, where)
            self.datasets[name] = TensorDataset(x, y)
        self.columns = ("row", enc.targets[0])
        if self.batch_size > len(self.datasets["train"]):
            raise ConfigError(
                "data.batch_size",
                f"{self.batch_size} is larger than the {len(self.datasets['train'])} training rows; use a smaller one",
            )

    def _check_sizes(self) -> None:
        """The size keys of the data config are derived (`${nnlab.tabular:...}`), never typed:
        a typed one that disagrees with the table is refused."""
        real = self.encoder.sizes()
        for key, given in self.sizes.items():
            if given is not None and given != real[key]:
                raise ConfigError(
                    f"data.{key}", f"{given}, but the table gives {real[key]}; leave it derived"
                )

    def example_input(self, n: int = 2) -> torch.Tensor:
        size = self.sizes["input_size"] or self.fitted().input_size
        return torch.zeros(n, size)

    def decode(self, outputs: torch.Tensor) -> torch.Tensor:
        """Regression outputs (..., targets) back in the targets' units; others unchanged."""
        enc = self.fitted()
        if enc.target_kind != "values" or not enc.target_scale:
            return outputs
        mean, std = torch.tensor(enc.target_scale, dtype=outputs.dtype, device=outputs.device).T
        return outputs * std + mean

    def encode(self, raw: Any) -> Encoded:
        """Raw rows -> inputs encoded as in training. `raw`: None (the test split), a CSV file
        (or .csv.gz) with the feature columns by name (other columns are ignored), or a list
        of mappings column -> value."""
        enc = self.fitted()
        if raw is None:
            x = self.datasets["test"].tensors[0] if self.datasets else None
            if x is None:
                raise UserError(
                    "input: this run's test rows are not available; give input=rows.csv"
                )
            return Encoded((x,), [str(i) for i in range(len(x))], None)
        if isinstance(raw, list | tuple) and raw and isinstance(raw[0], Mapping):
            header = list(enc.features)
            rows = [[str(r.get(f, "")).strip() for f in header] for r in raw]
            where = "input"
        else:
            if isinstance(raw, list | tuple) and len(raw) == 1:
                raw = raw[0]
            path = Path(str(raw)).expanduser()
            header, rows, _ = read_rows(path, key="input")
            if missing := [f for f in enc.features if f not in header]:
                raise UserError(
                    f"input: {path} lacks the feature column(s) {', '.join(missing)}; this run "
                    f"reads {', '.join(enc.features)}"
                )
            where = f"input: {path}"
        x = enc.encode_features(rows, header, where)
        return Encoded((x,), [str(i + 1) for i in range(len(rows))], rows)

    def save_artifacts(self, run_dir: Path) -> list[Path]:
        """`tabular.json`: the encoders (columns, categories, scaling, classes)."""
        path = Path(run_dir) / ENCODER_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.fitted().to_json(), indent=1), encoding="utf-8")
        return [path]

    def load_artifacts(self, run_dir: Path) -> None:
        path = Path(run_dir) / ENCODER_FILE
        if not path.is_file():  # without it: fitted again from the training file
            return super().load_artifacts(run_dir)
        self.encoder = TableEncoder.from_json(json.loads(path.read_text(encoding="utf-8")))
        self.columns = ("row", self.encoder.targets[0])
