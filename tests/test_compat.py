"""The private APIs nnlab uses (nnlab/compat/), each exercised against the installed Lightning
and hydra-core: an upgrade that moves one of them fails here, not silently in a step count."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from lightning.pytorch.loggers import Logger
from omegaconf import OmegaConf
from torch.utils.data import DataLoader, TensorDataset

from nnlab import CONF_DIR
from nnlab.compat import hydra as hydra_compat
from nnlab.compat import lightning as lightning_compat

STEPS_PER_BATCH = 3


class StepLogger(Logger):
    """Records the step each metric was logged at (the loggers' step axis)."""

    def __init__(self):
        super().__init__()
        self.steps: list[tuple[str, int]] = []

    name, version = "steps", 0

    def log_metrics(self, metrics, step=None):
        self.steps += [(k, step) for k in metrics if k != "epoch"]

    def log_hyperparams(self, params, *args, **kwargs):
        pass


class ManySteps(L.LightningModule):
    """Manual optimization that steps the raw optimizer several times per batch, as the fused
    loop does, and tells Lightning through the compat functions."""

    def __init__(self):
        super().__init__()
        self.automatic_optimization = False
        self.layer = torch.nn.Linear(2, 1)
        self.processed: list[int] = []

    def training_step(self, batch, batch_idx):
        optimizer = self.optimizers()
        for _ in range(STEPS_PER_BATCH):
            loss = self.layer(batch[0]).pow(2).mean()
            optimizer.optimizer.zero_grad()
            loss.backward()
            optimizer.optimizer.step()
            lightning_compat.count_optimizer_step(optimizer)
        lightning_compat.add_logged_steps(self.trainer, STEPS_PER_BATCH - 1)
        self.log("loss", loss, on_step=True, on_epoch=False)

    def on_train_batch_end(self, outputs, batch, batch_idx):
        self.processed.append(lightning_compat.batches_processed(self.trainer))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_the_lightning_functions_count_steps_as_lightning_does(tmp_path):
    task, logger = ManySteps(), StepLogger()
    data = DataLoader(TensorDataset(torch.randn(8, 2)), batch_size=2)  # 4 batches an epoch
    trainer = L.Trainer(
        max_epochs=2,
        logger=logger,
        log_every_n_steps=1,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(task, data)
    assert trainer.global_step == 2 * 4 * STEPS_PER_BATCH  # every raw step counted
    # the loggers' axis: one per optimizer step, as in Lightning's automatic loop
    logged = [step for key, step in logger.steps if key == "loss"]
    assert logged == [STEPS_PER_BATCH * (i + 1) - 1 for i in range(8)]
    assert task.processed == [1, 2, 3, 4] * 2  # batches consumed within each epoch


def test_the_csv_logger_continues_a_resumed_runs_metrics(tmp_path):
    """Lightning's own CSVLogger deletes an existing metrics.csv when a new session starts."""
    for session, (step, value) in enumerate([(0, 1.0), (1, 2.0)]):
        logger = lightning_compat.CSVLogger(tmp_path, name="csv", version="")
        logger.log_metrics({"train/loss": value} | ({"val/mse": 0.5} if session else {}), step=step)
        logger.save()
    lines = (tmp_path / "csv" / "metrics.csv").read_text().splitlines()
    assert lines == ["step,train/loss,val/mse", "0,1.0,", "1,2.0,0.5"]


def test_a_trainer_without_the_members_is_named_in_the_error():
    with pytest.raises(RuntimeError, match="fit_loop.epoch_loop._batches_that_stepped"):
        lightning_compat.add_logged_steps(object(), 1)
    with pytest.raises(RuntimeError, match="_on_before_step"):
        lightning_compat.count_optimizer_step(torch.optim.SGD([torch.zeros(1)], lr=1))


@pytest.mark.parametrize("compat", [lightning_compat, hydra_compat])
def test_the_installed_versions_are_tested_ones_and_others_are_named(compat):
    assert compat.version_problem() is None  # the pin in pyproject.toml
    (low, high) = compat.TESTED
    assert compat.version_problem(f"{low[0]}.{low[1]}.0") is None
    assert compat.version_problem(f"{high[0]}.{high[1]}.9") is None
    too_new = f"{high[0]}.{high[1] + 1}.0"
    assert too_new in compat.version_problem(too_new)
    assert "not a version number" in compat.version_problem("dev")


def test_the_hydra_functions_compose_as_hydra_does(tmp_path):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        base = compose("train", overrides=["experiment=sine_mlp"], return_hydra_config=True)
        hydras = compose(
            "train", overrides=["experiment=sine_mlp", "seed=7"], return_hydra_config=True
        )
        loader = GlobalHydra.instance().config_loader()
        assert hydra_compat.group_exists(loader, "model")
        assert not hydra_compat.group_exists(loader, "seed")
    parsed = OverridesParser.create().parse_overrides(["seed=7"])
    hydra_compat.apply_overrides(parsed, base)
    assert base.seed == 7 == hydras.seed
    naming = base.hydra.job.config.override_dirname
    assert hydra_compat.overrides_dirname(parsed, naming) == "seed=7"
    hydra_compat.save_config(OmegaConf.create({"a": 1}), "config.yaml", tmp_path / ".hydra")
    assert OmegaConf.load(tmp_path / ".hydra" / "config.yaml") == {"a": 1}

    saved = hydra_compat.hydra_config()
    try:
        hydra_compat.point_hydra_config(base)
        assert hydra_compat.hydra_config() is base
    finally:
        hydra_compat.point_hydra_config(saved)


def test_sweep_loads_are_routed_through_the_given_function():
    calls = []

    class Loader:
        def load_sweep_config(self, master, overrides):
            return ("composed", master, tuple(overrides))

    loader = Loader()

    def load(original, master, overrides):
        calls.append(overrides)
        return original(master, overrides)

    original = hydra_compat.intercept_sweep_loads(loader, load)
    assert loader.load_sweep_config("m", ["a=1"]) == ("composed", "m", ("a=1",))
    assert calls == [["a=1"]] and original("m", []) == ("composed", "m", ())


PRIVATE = {
    "lightning.py": ("fit_loop.", "_batches_that_stepped", "_on_before_step", "_connector"),
    "hydra.py": (
        "hydra._internal",
        "_save_config",
        "_apply_overrides_to_config",
        "instance().cfg",
        "omegaconf._utils",
    ),
}


def test_private_members_are_used_in_the_compat_modules_only():
    import nnlab

    root = Path(nnlab.__file__).parent
    for module, names in PRIVATE.items():
        for path in root.rglob("*.py"):
            text = path.read_text()
            used = [n for n in names if n in text]
            if path != root / "compat" / module:
                assert not used, f"{path.relative_to(root)} uses {used}: move it to compat/"
    assert "loop" not in (root / "tasks" / "base.py").read_text().lower()


@pytest.mark.slow
def test_lightning_log_lines_are_printed_once(tmp_path):
    """nnlab-train imports Lightning after Hydra set up logging: its records still print once
    (and reach the run's train.log through Hydra's handlers)."""
    import subprocess
    import sys

    args = ["experiment=sine_mlp", "trainer.max_epochs=1", "print_config=false", "logger=none"]
    proc = subprocess.run(
        [sys.executable, "-m", "nnlab.train", *args, f"hydra.run.dir={tmp_path / 'run'}"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    output = proc.stdout + proc.stderr
    assert output.count("Seed set to 12345") == 1, output[-3000:]
    assert "Seed set to 12345" in (tmp_path / "run" / "train.log").read_text()


def test_omegaconfs_dumper_quotes_as_to_yaml():
    import yaml
    from omegaconf import OmegaConf

    dumper = hydra_compat.omegaconf_dumper()
    assert dumper is not None  # the installed OmegaConf still has it where compat/ looks
    data = {"a": "1", "b": "true", "c": "text"}
    assert yaml.dump(data, Dumper=dumper, sort_keys=False) == OmegaConf.to_yaml(data)
