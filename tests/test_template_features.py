"""What a lightning-hydra-template user reaches for: `debug=default` (one full epoch on the CPU,
DEBUG logging, anomaly detection), the rich progress bar as a callback choice, and the
`train=false` / `test=false` switches."""

from __future__ import annotations

import json

import yaml

QUICK = ["experiment=sine_mlp", "logger=none", "callbacks=none"]


def test_debug_default_with_the_rich_progress_bar(cli):
    result = cli(
        "experiment=sine_mlp",
        "debug=default",
        "callbacks=[default,rich_progress_bar]",
        "logger=none",
    )
    run = result.run_dir()
    config = yaml.safe_load((run / "config.resolved.yaml").read_text())
    assert config["trainer"]["max_epochs"] == 1 and config["trainer"]["detect_anomaly"] is True
    assert config["callbacks"]["rich_progress_bar"]["_target_"].endswith("RichProgressBar")
    assert result.metrics()["epochs"] == 1
    log = (run / "train.log").read_text()
    assert "[DEBUG]" in log  # the root logger at DEBUG: nnlab's and the libraries' debug lines
    assert "━" in result.output  # rich draws its bar with box characters; tqdm's has none


def test_train_false_evaluates_a_checkpoint_and_test_false_skips_the_test_split(cli, tmp_path):
    trained = cli(*QUICK, "trainer.max_epochs=3").metrics()
    best = trained["best_checkpoint"]
    result = cli(*QUICK, "train=false", f"ckpt_path={best}", "name=evaluated")
    (evaluated,) = [r for r in result.run_dirs() if "evaluated" in r.name]
    metrics = json.loads((evaluated / "metrics.json").read_text())
    # the same weights on the same splits: the same numbers, and nothing trained
    assert metrics["test/mse"] == trained["test/mse"] and metrics["val/mse"] == trained["val/mse"]
    assert metrics["global_step"] == 0 and not list(evaluated.glob("checkpoints/epoch*"))

    untested = cli(*QUICK, "trainer.max_epochs=1", "test=false", "name=untested")
    (run,) = [r for r in untested.run_dirs() if "untested" in r.name]
    metrics = json.loads((run / "metrics.json").read_text())
    assert "val/mse" in metrics and not [k for k in metrics if k.startswith("test/")]


def test_the_switches_take_booleans_only(cli):
    result = cli(*QUICK, "train=maybe", check=False)
    assert result.returncode == 2
    assert "error: train: got 'maybe'; expected true or false (YAML booleans only)" in result.output
