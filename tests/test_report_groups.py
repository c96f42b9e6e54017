"""nnlab-report over seeds and folds: groups with mean, std and 95% CI, learning curves, the
paired comparison of two groups; k-fold cross-validation (data.folds, data.fold)."""

from __future__ import annotations

import csv
import json
import math
import sys
from pathlib import Path

import pytest
import torch
import yaml
from scipy import stats

from nnlab.data.folds import fold_blocks, fold_indices
from nnlab.errors import ConfigError
from nnlab.report import main as report_main
from nnlab.report import summarize

# -- statistics and grouping on a sweep directory written in the real layout --------------------


def write_trial(root: Path, overrides: list[str], metrics: dict, curve: list[float]) -> None:
    (root / ".hydra").mkdir(parents=True)
    (root / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    (root / ".hydra" / "config.yaml").write_text(
        yaml.safe_dump({"optimized_metric": "val/loss", "monitor_mode": "min", "tags": ["cv", "x"]})
    )
    (root / "metrics.json").write_text(json.dumps({**metrics, "epochs": len(curve)}))
    (root / "status.json").write_text(json.dumps({"status": "completed"}))
    (root / "csv").mkdir()
    with (root / "csv" / "metrics.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["epoch", "step", "train/loss", "val/loss"])
        for epoch, value in enumerate(curve):
            writer.writerow([epoch, 10 * epoch + 9, "", value])
            writer.writerow([epoch, 10 * epoch + 9, value + 1, ""])
        writer.writerow([len(curve), 10 * len(curve), "", 99.0])  # the final evaluation: no curve


LOSSES = {  # cell -> seed -> val/loss; GRU is better by 0.1 +- noise on every seed
    "lstm": {1: 0.50, 2: 0.62, 3: 0.55, 4: 0.70},
    "gru": {1: 0.41, 2: 0.50, 3: 0.47, 4: 0.58},
}


@pytest.fixture
def sweep(tmp_path) -> Path:
    root = tmp_path / "multiruns" / "sweep"
    num = 0
    for seed in (3, 1, 4, 2):  # out of order: pairs must follow the seed, not the position
        for cell in ("gru", "lstm"):
            loss = LOSSES[cell][seed]
            metrics = {"val/loss": loss, "test/loss": loss + 0.01, "best_epoch": 2}
            write_trial(
                root / str(num),
                [f"model.cell={cell}", f"seed={seed}"],
                metrics,
                [loss + 0.2, loss + 0.1, loss],
            )
            num += 1
    write_trial(root / str(num), ["model.cell=lstm", "seed=5"], {}, [])
    (root / str(num) / "metrics.json").unlink()
    (root / str(num) / "status.json").write_text(json.dumps({"status": "failed", "error": "x"}))
    return root


def test_summarize_is_the_t_interval():
    s = summarize([1.0, 2.0, 3.0])
    assert (s["n"], s["mean"], s["std"]) == (3, 2.0, 1.0)
    assert s["ci95_high"] - 2.0 == pytest.approx(4.302653 / math.sqrt(3), rel=1e-6)
    assert math.isnan(summarize([1.0])["std"])


def test_groups_curves_and_paired_comparison(sweep, tmp_path, capsys):
    out = tmp_path / "report"
    report_main.call(
        [
            f"sweep={sweep}",
            f"out={out}",
            "tensorboard=false",
            "compare=model.cell=lstm vs model.cell=gru",
        ]
    )
    rows = {r["group"]: r for r in csv.DictReader((out / "groups.csv").open())}
    assert list(rows) == ["model.cell=gru", "model.cell=lstm"]  # best mean first
    for cell, row in zip(("gru", "lstm"), rows.values(), strict=True):
        values = list(LOSSES[cell].values())
        mean, std = sum(values) / 4, stats.tstd(values)
        low, high = stats.t.interval(0.95, 3, loc=mean, scale=stats.sem(values))
        assert float(row["val/loss mean"]) == pytest.approx(mean, rel=1e-5)
        assert float(row["val/loss std"]) == pytest.approx(std, rel=1e-5)
        assert float(row["val/loss ci95_low"]) == pytest.approx(low, rel=1e-5)
        assert float(row["val/loss ci95_high"]) == pytest.approx(high, rel=1e-5)
        assert float(row["test/loss mean"]) == pytest.approx(mean + 0.01, rel=1e-5)
    assert rows["model.cell=lstm"]["trials"] == "5" and rows["model.cell=lstm"]["completed"] == "4"
    assert "| 1 | model.cell=gru | 4/4 |" in (out / "groups.md").read_text()
    trials = list(csv.DictReader((out / "leaderboard.csv").open()))
    assert len(trials) == 9 and {t["tags"] for t in trials} == {"cv, x"}
    # paired by seed: lstm - gru on seeds 1..4
    comparison = json.loads((out / "comparison.json").read_text())
    lstm, gru = (list(LOSSES[c].values()) for c in ("lstm", "gru"))
    expected = stats.ttest_rel(lstm, gru)
    assert comparison["n"] == 4 and [p["seed"] for p in comparison["pairs"]] == ["1", "2", "3", "4"]
    assert comparison["mean_difference"] == pytest.approx(sum(lstm) / 4 - sum(gru) / 4)
    assert comparison["p_value"] == pytest.approx(expected.pvalue, rel=1e-6)
    assert comparison["ci95_low"] > 0  # lstm's loss is higher on every seed
    assert "paired t-test" in (out / "comparison.md").read_text()
    assert "model.cell=gru" in capsys.readouterr().out
    assert (out / "learning_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_learning_curve_leaves_out_the_final_evaluation(sweep):
    from nnlab.report import learning_curve

    assert learning_curve(sweep / "0", "val/loss", 3) == pytest.approx(
        {0: 0.47 + 0.2, 1: 0.47 + 0.1, 2: 0.47}
    )


def test_bad_compare_is_one_message_and_writes_nothing(sweep, tmp_path, capsys):
    out = tmp_path / "report"
    with pytest.raises(SystemExit) as exit_info:
        report_main([f"sweep={sweep}", f"out={out}", "compare=model.cell=rnn vs model.cell=gru"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "no group match 'model.cell=rnn'" in err and "model.cell=lstm" in err
    assert not out.exists()


# -- folds --------------------------------------------------------------------------------------


def test_fold_indices_partition_the_rows():
    vals = [fold_indices(103, 5, i, seed=7) for i in range(5)]
    every = torch.cat([v for _, v in vals])
    assert sorted(every.tolist()) == list(range(103))  # disjoint, and together all rows
    for train, val in vals:
        assert len(val) in (20, 21) and len(train) + len(val) == 103
        assert not set(train.tolist()) & set(val.tolist())
    assert torch.equal(fold_indices(103, 5, 2, seed=7)[1], vals[2][1])  # seeded
    assert fold_blocks(100, 4, 1) == ([(0, 25), (50, 100)], (25, 50))
    assert fold_blocks(100, 4, 0) == ([(25, 100)], (0, 25))
    with pytest.raises(ConfigError, match="data.fold: must be 0 .. 4"):
        fold_indices(103, 5, 5)
    with pytest.raises(ConfigError, match="data.folds"):
        fold_indices(103, 1, 0)


def test_mnist_folds_replace_the_validation_split(data_dir):
    from nnlab.data.mnist import MNISTDataModule

    def split(**kw):
        dm = MNISTDataModule(data_dir=str(data_dir), download=False, val_size=30, **kw)
        dm.setup("fit")
        return dm

    plain = split()
    folds = [split(folds=4, fold=i) for i in range(4)]

    def key(image):  # a row found by its content (the data module keeps no index lists)
        return tuple((image.flatten() * 255).round().int().tolist())

    images, _ = plain.read_split(train=True)
    every = sorted(key(x.float() / 255) for x in images)
    vals = sorted(key(x) for dm in folds for x in dm.datasets["val"].tensors[0])
    assert vals == every  # the 120 training images, each validating once
    for dm in folds:
        assert len(dm.datasets["val"]) == 30 and len(dm.datasets["train"]) == 90
        assert torch.equal(dm.datasets["test"].tensors[0], plain.datasets["test"].tensors[0])


def test_imdb_folds(tmp_path):
    sys.path.insert(0, str(Path(__file__).parent))
    from test_imdb import module, write_tree

    write_tree(tmp_path / "data")
    plain = module(tmp_path / "data")
    plain.setup("fit")
    vals = []
    for i in range(3):
        dm = module(tmp_path / "data", folds=3, fold=i)
        dm.setup("fit")
        vals += dm.indices["val"].tolist()
        assert len(dm.indices["train"]) + len(dm.indices["val"]) == 24
        assert torch.equal(dm.indices["test"], plain.indices["test"])
    assert sorted(vals) == list(range(24))


def test_series_folds_are_time_blocks_and_keep_the_test_segment():
    from nnlab.data.series import SineDataModule

    def setup(**kw):
        dm = SineDataModule(num_points=200, window=4, horizon=1, batch_size=8, **kw)
        dm.setup("fit")
        return dm

    plain, fold = setup(), setup(folds=5, fold=2)
    assert torch.equal(plain.datasets["test"].tensors[0], fold.datasets["test"].tensors[0])
    # train + val = the first 170 points in 5 blocks of 34; fold 2 validates on points 68..101
    assert len(fold.datasets["val"]) == 34 - 5 + 1
    assert len(fold.datasets["train"]) == (68 - 5 + 1) + (170 - 102 - 5 + 1)
    x, y = fold.datasets["val"].tensors
    assert torch.equal(x[0], fold.series[68:72]) and torch.equal(y[-1], fold.series[101:102])


# -- the real thing: sweeps over seeds and folds, then nnlab-report ----------------------------


@pytest.mark.slow
def test_lstm_vs_gru_over_seeds_end_to_end(cli, tmp_path):
    """A real sweep (TensorBoard logs only), the report's groups, curves and comparison."""
    cli(
        "-m",
        "experiment=sine_lstm",
        "model.cell=lstm,gru",
        "seed=1,2",
        "model.hidden_size=8",
        "trainer.max_epochs=3",
        "trainer.limit_train_batches=3",
        "trainer.limit_val_batches=2",
        "trainer.limit_test_batches=2",
        "callbacks=none",
        "logger=tensorboard",
    )
    (sweep,) = (tmp_path / "outputs" / "multiruns").glob("*/*")
    result = cli(
        f"sweep={sweep}", "compare=model.cell=lstm vs model.cell=gru", module="nnlab.report"
    )
    rows = {r["group"]: r for r in csv.DictReader((sweep / "report" / "groups.csv").open())}
    assert set(rows) == {"model.cell=lstm", "model.cell=gru"}
    for cell, row in rows.items():
        trials = [
            json.loads((t.parent.parent / "metrics.json").read_text())
            for t in sweep.glob("*/.hydra/overrides.yaml")
            if cell in t.read_text()
        ]
        assert len(trials) == 2 and row["completed"] == "2"
        values = [m["val/mse"] for m in trials]
        assert float(row["val/mse mean"]) == pytest.approx(sum(values) / 2, rel=1e-5)
    comparison = json.loads((sweep / "report" / "comparison.json").read_text())
    assert comparison["n"] == 2 and "paired t-test" in result.stdout
    from nnlab.report import learning_curve

    curve = learning_curve(sweep / "0", "val/mse", 3)
    assert list(curve) == [0, 1, 2]  # per epoch, read back from the TensorBoard events
    assert (sweep / "report" / "learning_curves.png").stat().st_size > 10_000


def test_fold_sweep_is_aggregated_like_seeds(cli, tmp_path):
    cli(
        "-m",
        "experiment=sine_mlp",
        "data.folds=3",
        "data.fold=0,1,2",
        "debug=limit",
        "callbacks=none",
        "logger=csv",
    )
    (sweep,) = (tmp_path / "outputs" / "multiruns").glob("*/*")
    cli(f"sweep={sweep}", "tensorboard=false", module="nnlab.report")
    (row,) = csv.DictReader((sweep / "report" / "groups.csv").open())
    assert row["group"] == "all trials" and row["completed"] == "3"
    values = [json.loads(p.read_text())["val/mse"] for p in sweep.glob("*/metrics.json")]
    assert len(set(values)) == 3  # three different validation folds
    assert float(row["val/mse mean"]) == pytest.approx(sum(values) / 3, rel=1e-5)
    assert (
        float(row["val/mse ci95_low"])
        < float(row["val/mse mean"])
        < float(row["val/mse ci95_high"])
    )


def test_a_fold_out_of_range_is_one_message(cli):
    result = cli("experiment=sine_mlp", "data.folds=3", "data.fold=3", "debug=limit", check=False)
    assert result.returncode == 2
    assert "data.fold: must be 0 .. 2 for data.folds=3, got 3" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_metric_that_no_trial_has_is_one_message_listing_them(sweep, tmp_path, capsys):
    out = tmp_path / "report"
    with pytest.raises(SystemExit) as exit_info:
        report_main([f"sweep={sweep}", f"out={out}", "metric=val/los"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        "error: metric: 'val/los' is not a metric of this sweep's trials; did you mean val/loss? "
        "they have best_epoch, epochs, test/loss, val/loss"
    )
    assert not out.exists()
