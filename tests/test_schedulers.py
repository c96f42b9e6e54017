"""The per-step warm-up + cosine schedule (conf/task/scheduler/warmup_cosine.yaml,
nnlab/tasks/schedulers.py): its factors by hand, its refusals, and Lightning's loop against the
fused loop with it. Packed trials with their own warm-up lengths: tests/test_packed.py."""

from __future__ import annotations

import math

import pytest
import torch
from omegaconf import open_dict

from nnlab.errors import ConfigError
from nnlab.runs import Run
from nnlab.schema import check
from nnlab.tasks.schedulers import WarmupCosine
from nnlab.train import train as train_run


def train(cfg):
    with open_dict(cfg):
        del cfg["hydra"]
    return train_run(cfg, Run(cfg.paths.output_dir))


def test_the_factors_by_hand():
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=2.0)
    schedule = WarmupCosine(optimizer, warmup_steps=4, total_steps=14, final_factor=0.1)
    lrs = []
    for _ in range(16):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    assert lrs[:5] == pytest.approx([0.0, 0.5, 1.0, 1.5, 2.0])  # linear warm-up to lr
    half = 2.0 * (0.1 + 0.9 * (1 + math.cos(math.pi * 0.5)) / 2)
    assert lrs[9] == pytest.approx(half)  # half-way through the cosine's 10 steps
    assert lrs[14] == lrs[15] == pytest.approx(0.2)  # final_factor x lr, and there it stays


WARMUP_COSINE = (
    "+task/scheduler@task.scheduler=warmup_cosine",
    "task.scheduler.warmup_steps=5",
    "task.scheduler.total_steps=22",
)


def test_it_must_be_stepped_per_optimizer_step_and_told_its_length(make_cfg):
    with pytest.raises(ConfigError, match="task.scheduler_interval: is epoch, but WarmupCosine"):
        train(make_cfg("experiment=sine_mlp", *WARMUP_COSINE, "logger=none"))
    with pytest.raises(ConfigError, match="task.scheduler.total_steps"):
        check(make_cfg("experiment=sine_mlp", "+task/scheduler@task.scheduler=warmup_cosine"))


@pytest.mark.parametrize("accumulate", [1, 2])
def test_the_fused_loop_warms_up_as_lightnings_loop(make_cfg, accumulate):
    """sine_mlp, 2 epochs of 22 batches: the same learning rate at every optimizer step in both
    loops (grouped micro-batches of 4, not lined up with windows of 2)."""
    recipe = (
        "experiment=sine_mlp",
        "trainer.max_epochs=2",
        f"trainer.accumulate_grad_batches={accumulate}",
        *WARMUP_COSINE,
        "task.scheduler_interval=step",
        "logger=none",
    )
    lightning = train(make_cfg(*recipe, "task.loop=lightning"))
    fused = train(make_cfg(*recipe, "task.loop=fused", "task.micro_batches=4"))
    assert fused["global_step"] == lightning["global_step"] == 2 * math.ceil(22 / accumulate)
    for key in ("test/mse", "val/loss"):
        assert fused[key] == pytest.approx(lightning[key], rel=1e-5, abs=1e-7), key
