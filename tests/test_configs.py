"""Every experiment composes, and its data, task (with the net) and trainer instantiate."""

import pytest
import torch
from conftest import EXPERIMENTS

from nnlab.config import build, build_all


def test_experiments_exist():
    assert {"sine_lstm", "sine_mlp"} <= set(EXPERIMENTS)


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_instantiates(make_cfg, experiment):
    cfg = make_cfg(f"experiment={experiment}", "trainer.accelerator=cpu")
    datamodule = build(cfg.data, "data")
    task = build(cfg.task, "task", net=cfg.model, _recursive_=False)
    callbacks = build_all(cfg.callbacks, "callbacks")
    loggers = build_all(cfg.logger, "logger")
    trainer = build(cfg.trainer, "trainer", callbacks=callbacks, logger=loggers)
    assert trainer.max_epochs == cfg.trainer.max_epochs
    example = datamodule.example_input(3)  # a tensor, or a tuple such as (ids, lengths)
    out = task(*example) if isinstance(example, tuple) else task(example)
    for value in out.values() if isinstance(out, dict) else [out]:  # a graph's outputs by name
        assert value.shape[0] == 3 and torch.isfinite(value).all()


def test_default_experiment_is_sine_lstm(make_cfg):
    cfg = make_cfg()
    assert cfg.name == "sine_lstm"
    assert cfg.model.cell == "lstm"


def test_model_sizes_follow_the_data(make_cfg):
    cfg = make_cfg("experiment=sine_mlp", "data.window=7", "data.horizon=3")
    assert cfg.model.input_size == 7 and cfg.model.output_size == 3
    task = build(cfg.task, "task", net=cfg.model, _recursive_=False)
    assert task(torch.zeros(5, 7)).shape == (5, 3)


def test_run_dir_is_unique_per_process(make_cfg):
    cfg = make_cfg()
    assert cfg.name in cfg.hydra.run.dir
    # the random tag after the name keeps same-second starts apart
    assert len(cfg.hydra.run.dir.rsplit("_", 1)[1]) == 6
