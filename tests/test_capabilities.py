"""engine/capabilities.py: the one place that says why a run cannot train fused, captured or
packed (the fused and captured checks on a live trainer: tests/test_captured.py)."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from nnlab.engine.capabilities import ENGINES, why_not
from nnlab.engine.stacked import OPTIMIZERS
from nnlab.tasks.classification import ClassificationTask
from nnlab.tasks.language_model import LanguageModelTask

MLP = {"_target_": "nnlab.models.mlp.MLP", "input_size": 4, "hidden_sizes": [8], "output_size": 3}
PARAMS = [torch.nn.Parameter(torch.zeros(2))]


@pytest.mark.parametrize(
    "trainer, reason",
    [
        ({}, None),
        ({"max_epochs": 3, "gradient_clip_val": 0.5, "accelerator": "cpu"}, None),
        ({"strategy": "ddp"}, "distributed training"),
        ({"devices": 2}, "trainer.devices=2"),
        ({"precision": "bf16-mixed"}, "trainer.precision=bf16-mixed"),
        ({"max_steps": 10}, "trainer.max_steps=10"),
        ({"gradient_clip_algorithm": "value"}, "trainer.gradient_clip_algorithm=value"),
    ],
)
def test_the_trainer_settings_a_packed_group_runs(trainer, reason):
    found = why_not("packed", trainer_cfg=OmegaConf.create(trainer))
    assert found is None if reason is None else reason in found


@pytest.mark.parametrize(
    "optimizer, reason",
    [
        (torch.optim.Adam(PARAMS), None),
        (torch.optim.AdamW(PARAMS, weight_decay=0.1), None),
        (torch.optim.SGD(PARAMS, lr=0.1, momentum=0.9, nesterov=True), None),
        (torch.optim.RMSprop(PARAMS, centered=True), None),
        (torch.optim.Adam(PARAMS, amsgrad=True), "optimizer option amsgrad=true"),
        (torch.optim.SGD(PARAMS, lr=0.1, maximize=True), "optimizer option maximize=true"),
        (torch.optim.Adagrad(PARAMS), "optimizer Adagrad (packed: Adam, AdamW, SGD, RMSprop)"),
        (torch.optim.Adam(PARAMS, lr=torch.tensor(0.1)), "a tensor learning rate"),
    ],
)
def test_the_optimizers_a_packed_group_steps(optimizer, reason):
    found = why_not("packed", optimizer=optimizer)
    assert found is None if reason is None else reason in found


def test_every_torch_optimizer_packs_or_is_refused_by_name():
    """Any optimizer the fused loop takes: written for stacked parameters, or refused naming it."""
    for name in torch.optim.__all__:
        cls = getattr(torch.optim, name)
        if not (isinstance(cls, type) and issubclass(cls, torch.optim.Optimizer)):
            continue
        if cls is torch.optim.Optimizer:
            continue
        try:
            optimizer = cls(PARAMS, lr=0.01)
        except (TypeError, ValueError, RuntimeError):  # needs arguments of its own (LBFGS...)
            continue
        found = why_not("packed", optimizer=optimizer)
        assert (found is None) == (name in OPTIMIZERS), name
        if found is not None:
            assert name in found


def test_tasks_nets_and_intervals_a_packed_group_runs():
    task = ClassificationTask(net=MLP, num_classes=3)
    assert why_not("packed", task=task, scheduler_interval="step") is None
    lm = LanguageModelTask(
        {"_target_": "nnlab.models.language.RecurrentLanguageModel", "vocab_size": 9}
    )
    assert "task LanguageModelTask" in why_not("packed", task=lm)
    rnn = ClassificationTask(
        net={"_target_": "torch.nn.GRU", "input_size": 2, "hidden_size": 3}, num_classes=3
    )
    assert "not batch_first" in why_not("packed", task=rnn)
    assert why_not("packed", scheduler_interval="batch") == "task.scheduler_interval=batch"
    assert why_not("packed", task_cfg=OmegaConf.create({"compile": True})) == "task.compile"


def test_only_the_checks_whose_parts_are_given_run():
    assert why_not("packed") is None and why_not("fused") is None
    assert set(ENGINES) == {"fused", "captured", "packed"}
    with pytest.raises(ValueError, match="engine 'vmap'"):
        why_not("vmap")


def test_run_settings_callbacks_data_and_monitors_a_packed_group_runs():
    from lightning.pytorch.callbacks import EarlyStopping, LearningRateMonitor, ModelCheckpoint

    from nnlab.data.memory import MemoryBatcher

    def cfg(**keys):
        return OmegaConf.create(keys)

    assert why_not("packed", run_cfg=cfg(seed=1)) is None
    assert "resume=" in why_not("packed", run_cfg=cfg(ckpt_path="last.ckpt"))
    assert "save_top_k" in why_not("packed", run_cfg=cfg(checkpoint={"save_top_k": 3}))
    assert why_not("packed", run_cfg=cfg(checkpoint={"enabled": False, "save_top_k": 3})) is None
    assert why_not("packed", callback=EarlyStopping("val/loss")) is None
    assert why_not("packed", callback=LearningRateMonitor()) is None
    found = why_not("packed", callback=EarlyStopping("val/loss", stopping_threshold=0.1))
    assert found == "EarlyStopping thresholds"
    assert "callback ModelCheckpoint" in why_not("packed", callback=ModelCheckpoint())
    x, y = torch.zeros(10, 3), torch.zeros(10)
    assert why_not("packed", loader=MemoryBatcher([x, y], 4, shuffle=False)) is None
    found = why_not("packed", loader=MemoryBatcher([x, y, y], 4, shuffle=False))
    assert "extra inputs" in found
    assert "not held in memory" in why_not("packed", loader=[(x, y)])
    task = ClassificationTask(net=MLP, num_classes=3)
    assert why_not("packed", task=task, monitors={"checkpoint": "val/acc"}) is None
    assert why_not("packed", task=task, monitors={"checkpoint": None}) is None
    found = why_not("packed", task=task, monitors={"early_stopping": "val/auc"})
    assert found == "early_stopping monitors val/auc, which the task does not log"
    assert "monitors None" in why_not("packed", task=task, monitors={"the scheduler": None})
