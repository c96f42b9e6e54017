"""Tables of independent rows (data=tabular): reading, encoding from the training rows only,
splits by fraction or count, sizes read from the data, and the journey: train through
nnlab-train, predict raw rows through nnlab-predict with the encoders saved in the run."""

from __future__ import annotations

import csv
import gzip
import json
import math
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from nnlab.config import build
from nnlab.data.tabular import TabularDataModule, load_table, split_sizes
from nnlab.errors import ConfigError, DataError


def write_table(path: Path, rows: int = 240, seed: int = 0, gz: bool = False) -> Path:
    """A learnable table: x1, x2 numbers, colour (categorical, 3 values), a string label decided
    by x1 + the colour, a numeric target (price) and two 0/1 tags."""
    rng = random.Random(seed)
    opener = gzip.open if gz else open
    with opener(path, "wt", newline="", encoding="utf-8") as f:
        out = csv.writer(f)
        out.writerow(["x1", "x2", "colour", "label", "price", "tag_a", "tag_b"])
        for _ in range(rows):
            x1, x2 = rng.gauss(10, 3), rng.gauss(-5, 0.5)
            colour = rng.choice(["red", "green", "blue"])
            score = (x1 - 10) / 3 + {"red": 1.5, "green": 0.0, "blue": -1.5}[colour]
            label = "yes" if score > 0 else "no"
            price = 2 * x1 + {"red": 5, "green": 0, "blue": -5}[colour] + rng.gauss(0, 0.1)
            out.writerow(
                [
                    f"{x1:.3f}",
                    f"{x2:.3f}",
                    colour,
                    label,
                    f"{price:.3f}",
                    int(x1 > 10),
                    int(colour == "red"),
                ]
            )
    return path


def module(path: Path, **kwargs) -> TabularDataModule:
    dm = TabularDataModule(path=str(path), **{"target": "label", "batch_size": 16, **kwargs})
    dm.setup("fit")
    return dm


def test_string_labels_and_a_categorical_column(tmp_path):
    path = write_table(tmp_path / "t.csv")
    dm = module(path, features=["x1", "x2", "colour"])
    enc = dm.encoder
    assert dm.target_kind == "classes" and dm.classes == ["no", "yes"] and dm.num_classes == 2
    assert enc.categories == {"colour": ["blue", "green", "red"]}
    assert enc.input_names() == ["x1", "x2", "colour=blue", "colour=green", "colour=red"]
    x, y = dm.datasets["train"].tensors
    assert x.shape == (168, 5) and y.dtype == torch.long  # 70% of 240
    assert (x[:, 2:].sum(1) == 1).all()  # one category each
    # numbers standardised by the training rows only: exactly there, not in the other splits
    assert torch.allclose(x[:, :2].mean(0), torch.zeros(2), atol=1e-5)
    assert torch.allclose(x[:, :2].std(0), torch.ones(2), atol=1e-4)
    val = dm.datasets["val"].tensors[0][:, :2]
    assert not torch.allclose(val.mean(0), torch.zeros(2), atol=1e-3)


def test_features_default_to_all_but_the_target(tmp_path):
    dm = module(write_table(tmp_path / "t.csv"), target="price")
    assert dm.encoder.features == ["x1", "x2", "colour", "label", "tag_a", "tag_b"]
    assert dm.target_kind == "values" and dm.num_classes is None and dm.output_size == 1
    # the regression target is standardised on the training rows; decode gives the units back
    y = dm.datasets["train"].tensors[1]
    assert abs(float(y.mean())) < 1e-5
    prices = [float(r["price"]) for r in csv.DictReader(open(tmp_path / "t.csv"))]
    assert math.isclose(
        float(dm.decode(y.double()).abs().max()), max(map(abs, prices)), rel_tol=0.05
    )


def test_integer_labels_several_targets_and_gzip(tmp_path):
    path = write_table(tmp_path / "t.csv.gz", gz=True)
    dm = module(path, target="tag_a", features=["x1", "x2"])
    assert dm.target_kind == "classes" and dm.classes == ["0", "1"]
    multi = module(path, target=["tag_a", "tag_b"], features=["x1", "colour"])
    assert multi.target_kind == "labels" and multi.num_labels == 2
    assert multi.classes == ["tag_a", "tag_b"] and multi.output_size == 2
    assert multi.datasets["train"].tensors[1].shape[1] == 2
    forced = module(path, target="tag_a", features=["x1", "tag_b"], categorical=["tag_b"])
    assert forced.encoder.categories == {"tag_b": ["0", "1"]}


def test_splits_by_count_and_unseen_categories(tmp_path):
    assert split_sizes(100, [0.6, 0.2, 0.2]) == [60, 20, 20]
    assert split_sizes(100, [50, 10, 30]) == [50, 10, 30]
    with pytest.raises(ConfigError, match="data.splits"):
        split_sizes(100, [80, 20, 30])
    with pytest.raises(ConfigError, match="data.splits"):
        split_sizes(100, [0.5, 0.2])
    path = write_table(tmp_path / "t.csv", rows=100)
    dm = module(path, splits=[50, 10, 30], features=["x1", "x2", "colour"])
    assert [len(dm.datasets[s]) for s in ("train", "val", "test")] == [50, 10, 30]
    ordered = module(path, splits=[50, 10, 30], shuffle_rows=False)
    rows = list(csv.DictReader(open(path)))
    first = (float(rows[0]["x1"]) - ordered.encoder.numeric["x1"][0]) / ordered.encoder.numeric[
        "x1"
    ][1]
    assert math.isclose(float(ordered.datasets["train"].tensors[0][0, 0]), first, rel_tol=1e-5)
    # a category the training rows never had: all zeros
    enc = dm.encoder
    x = enc.encode_features([["1", "2", "purple"]], ["x1", "x2", "colour"], "input")
    assert x[0, 2:5].tolist() == [0.0, 0.0, 0.0]


def test_bad_tables_name_the_key(tmp_path):
    path = write_table(tmp_path / "t.csv", rows=40)
    with pytest.raises(ConfigError, match="data.target: no column 'nope'.*x1, x2, colour"):
        load_table(path, "nope")
    with pytest.raises(ConfigError, match="data.features"):
        load_table(path, "label", features=["label", "x1"])
    with pytest.raises(DataError, match="data.path: CSV file not found"):
        load_table(tmp_path / "missing.csv", "label")
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b,label\n1,2,x\n3,,y\n4,5,x\n")
    with pytest.raises(DataError, match="line 3: column 'b' is empty"):
        module(bad, splits=[1, 1, 1], batch_size=1)


def test_the_preset_reads_its_sizes_from_the_data(make_cfg, tmp_path):
    cfg = make_cfg("experiment=tabular_mlp", f"paths.data_dir={tmp_path / 'data'}")
    assert cfg.model.input_size == 7 and cfg.model.output_size == 3  # 5 numbers + 2 islands
    assert cfg.task.num_classes == 3 and list(cfg.model.hidden_sizes) == [32, 32]
    task = build(cfg.task, "task", net=cfg.model, _recursive_=False)
    dm = build(cfg.data, "data")
    task.check_data(dm)
    assert dm.classes == ["adelie", "chinstrap", "gentoo"]
    assert all(size > 7 for size in cfg.model.hidden_sizes)  # wider than the input
    own = write_table(tmp_path / "own.csv")
    cfg = make_cfg(
        "experiment=tabular_mlp", f"data.path={own}", "data.target=label", "data.generate=0"
    )
    assert (
        cfg.model.input_size == 8 and cfg.task.num_classes == 2
    )  # x1 x2, 3 colours, price, 2 tags


def test_train_and_predict_raw_rows(cli, tmp_path):
    """String labels and a categorical column train through nnlab-train; nnlab-predict takes
    raw rows (no target column) through the encoders saved in the run, without the table."""
    table = write_table(tmp_path / "train.csv", rows=400)
    result = cli(
        "experiment=tabular_mlp",
        f"data.path={table}",
        "data.target=label",
        "data.features=[x1,x2,colour]",
        "data.generate=0",
        "trainer.max_epochs=15",
        "logger=none",
        "callbacks=none",
    )
    run = result.run_dir()
    metrics = result.metrics()
    assert metrics["test/acc"] >= 0.85, metrics
    saved = json.loads((run / "tabular.json").read_text())
    assert saved["classes"] == ["no", "yes"] and saved["categories"]["colour"] == [
        "blue",
        "green",
        "red",
    ]
    rows = tmp_path / "rows.csv"
    rows.write_text("colour,x2,x1\nred,-5,16\nblue,-5,4\n")  # any order, no label
    table.unlink()  # predictions need the run, not the training table
    out = tmp_path / "pred"
    cli(f"run={run}", f"input={rows}", f"out={out}", module="nnlab.predict")
    lines = list(csv.reader(open(out / "predictions.csv")))
    assert lines[0] == ["row", "label", "probability", "p_no", "p_yes"]
    assert [line[1] for line in lines[1:]] == ["yes", "no"]
    # the trained network as a feature extractor: the penultimate layer by default
    feats = tmp_path / "feats"
    cli(f"run={run}", f"input={rows}", f"out={feats}", "features=", module="nnlab.predict")
    values = np.load(feats / "features.npy")
    assert values.shape == (2, 32) and (values >= 0).all()  # the last hidden ReLU's outputs
    cli(f"run={run}", f"input={rows}", f"out={feats}", "features=layers.1", module="nnlab.predict")
    first = np.load(feats / "features.npy")  # the first Dense layer, before its ReLU
    assert first.shape == (2, 32) and (first < 0).any()
    unknown = cli(
        f"run={run}", f"input={rows}", "features=conv9", module="nnlab.predict", check=False
    )
    assert unknown.returncode == 2
    assert (
        "features: no layer 'conv9' in MLP; its layers are: layers, layers.0, layers.1"
        in unknown.stderr
    )
    missing = tmp_path / "missing.csv"
    missing.write_text("x1,x2\n1,2\n")
    bad = cli(f"run={run}", f"input={missing}", module="nnlab.predict", check=False)
    assert bad.returncode == 2 and "lacks the feature column(s) colour" in bad.stderr


def test_regression_on_a_table_predicts_in_the_data_units(cli, tmp_path):
    table = write_table(tmp_path / "train.csv", rows=400)
    run = cli(
        "~experiment",
        "data=tabular",
        "model=mlp",
        "task=regression",
        "trainer=cpu",
        f"data.path={table}",
        "data.target=price",
        "data.features=[x1,colour]",
        "task.optimizer.lr=0.01",
        "trainer.max_epochs=20",
        "logger=none",
        "callbacks=none",
    ).run_dir()
    rows = tmp_path / "rows.csv"
    rows.write_text("x1,colour\n10,red\n10,blue\n")
    out = tmp_path / "pred"
    cli(f"run={run}", f"input={rows}", f"out={out}", module="nnlab.predict")
    lines = list(csv.reader(open(out / "predictions.csv")))
    assert lines[0] == ["row", "price"]
    red, blue = float(lines[1][1]), float(lines[2][1])
    assert abs(red - 25) < 2.5 and abs(blue - 15) < 2.5, (red, blue)  # 2 * 10 +- 5


def test_a_missing_target_column_is_one_error_line(cli, tmp_path):
    table = write_table(tmp_path / "t.csv", rows=40)
    bad = cli("experiment=tabular_mlp", f"data.path={table}", "data.target=nope", check=False)
    assert bad.returncode == 2
    assert "error: data.target: no column 'nope'" in bad.stderr, bad.stderr[-2000:]
