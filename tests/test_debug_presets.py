"""What a lightning-hydra-template user reaches for: `debug=default` (one full epoch on the CPU,
DEBUG logging, anomaly detection) and the rich progress bar as a callback choice."""

from __future__ import annotations

import yaml


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
