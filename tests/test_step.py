"""The optimizer step (engine/step.py) on its own: stacked trials step as each trial alone with
torch.optim (accumulation, per-trial clipping, per-step schedulers, the step count), and the
non-finite-loss policy stops a trial without touching the others."""

from __future__ import annotations

import math

import pytest
import torch

from nnlab.engine.step import ModuleParameters, OptimizerStep, TrialParameters
from nnlab.packed.stack import Flat

OPTIMIZERS = {
    "Adam": (torch.optim.Adam, {"lr": 0.01, "weight_decay": 0.01}),
    "AdamW": (torch.optim.AdamW, {"lr": 0.01, "weight_decay": 0.1}),
    "SGD": (torch.optim.SGD, {"lr": 0.05, "momentum": 0.9, "nesterov": True}),
    "RMSprop": (torch.optim.RMSprop, {"lr": 0.01, "momentum": 0.5, "centered": True}),
}
CLIPS = [0.05, math.inf]  # trial 0 clipped to a gradient norm of 0.05, trial 1 not at all
BATCHES, ACCUMULATE = 7, 3  # windows of 3, 3 and the epoch's short last one


def data(trials: int):
    torch.manual_seed(0)
    return torch.randn(trials, BATCHES, 8, 4), torch.randn(trials, BATCHES, 8, 2)


def linears(trials: int) -> list[torch.nn.Linear]:
    torch.manual_seed(1)
    return [torch.nn.Linear(4, 2) for _ in range(trials)]


def warm_up(optimizer):
    return torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=0.2, total_iters=4)


def alone(kind: str, trial: int, epochs: int = 2):
    """Trial `trial` trained by itself: torch.optim, its clip value, its own warm-up."""
    cls, hp = OPTIMIZERS[kind]
    net = linears(2)[trial]
    optimizer = cls(net.parameters(), **{**hp, "lr": hp["lr"] * (trial + 1)})
    clip = None if math.isinf(CLIPS[trial]) else CLIPS[trial]
    counted = []
    step = OptimizerStep(
        ModuleParameters(net.parameters(), optimizer, clip),
        ACCUMULATE,
        counted.append,
    )
    step.schedulers = [warm_up(optimizer)]
    x, y = data(2)
    for _ in range(epochs):
        for b in range(BATCHES):
            if b % ACCUMULATE == 0:  # a window starts: the caller zeroes a module's gradients
                optimizer.zero_grad()
            loss = torch.nn.functional.mse_loss(net(x[trial, b]), y[trial, b])
            step(loss, b, b == BATCHES - 1)
    return net, len(counted)


def stacked(kind: str, epochs: int = 2, nan_at: int | None = None):
    """Both trials as one stack; trial 1's loss becomes NaN at batch `nan_at` of the first
    epoch. Returns the parameters, the step object and each trial's weights before each step."""
    cls, hp = OPTIMIZERS[kind]
    nets = linears(2)
    params = {n: torch.stack([getattr(m, n).detach() for m in nets]) for n in ("weight", "bias")}
    layout = Flat(params)
    flat = layout.join(params).requires_grad_(True)
    # each trial's optimizer holds its hyperparameters (its scheduler changes them)
    optimizers = [
        cls(m.parameters(), **{**hp, "lr": hp["lr"] * (i + 1)}) for i, m in enumerate(nets)
    ]
    schedulers = [warm_up(o) for o in optimizers]  # (they set the first learning rate)
    averaged = []
    parameters = TrialParameters(flat, layout, optimizers, CLIPS, {}, [0, 0])
    step = OptimizerStep(parameters, ACCUMULATE, averaging=averaged.append)
    step.schedulers = schedulers
    x, y = data(2)
    active = torch.tensor([True, True])
    history = []
    for epoch in range(epochs):
        for b in range(BATCHES):
            p = parameters.views()
            out = torch.einsum("tbi,toi->tbo", x[:, b], p["weight"]) + p["bias"][:, None]
            losses = (out - y[:, b]).pow(2).mean(dim=(1, 2))
            if epoch == 0 and b == nan_at:
                losses = losses * torch.tensor([1.0, math.nan])
            use = step.going_on(losses, active)
            history.append(flat.detach().clone())
            step(torch.where(use, losses, torch.zeros_like(losses)).sum(), b, b == BATCHES - 1, use)
    return parameters, step, history, averaged


@pytest.mark.parametrize("kind", OPTIMIZERS)
def test_stacked_trials_step_as_each_trial_alone_with_torch_optim(kind):
    parameters, _, _, averaged = stacked(kind)
    windows = 2 * math.ceil(BATCHES / ACCUMULATE)
    views = parameters.layout.split(parameters.flat.detach())
    for trial in (0, 1):
        net, steps = alone(kind, trial)
        torch.testing.assert_close(views["weight"][trial], net.weight.detach())
        torch.testing.assert_close(views["bias"][trial], net.bias.detach())
        assert steps == windows  # the count callback: once per optimizer step
    assert parameters.steps.tolist() == [windows, windows]
    assert len(averaged) == windows and all(use.all() for use in averaged)


def test_a_nan_loss_stops_its_trial_and_leaves_the_others():
    """Trial 1's loss is NaN at batch 4 (inside the second window): from that step on it keeps
    the weights, moments and count it had; trial 0 trains as if alone."""
    parameters, step, history, averaged = stacked("Adam", epochs=1, nan_at=4)
    assert step.failed.tolist() == [False, True]
    before = history[4]  # the weights when its loss became NaN (the first window had stepped)
    assert not torch.equal(before[1], history[0][1])
    assert torch.equal(parameters.flat.detach()[1], before[1])
    assert torch.isfinite(parameters.flat).all()
    assert parameters.steps.tolist() == [3, 1]
    assert [use.tolist() for use in averaged] == [[True, True], [True, False], [True, False]]
    net, _ = alone("Adam", 0, epochs=1)
    views = parameters.layout.split(parameters.flat.detach())
    torch.testing.assert_close(views["weight"][0], net.weight.detach())
    torch.testing.assert_close(views["bias"][0], net.bias.detach())


def test_one_network_stops_after_a_nan_loss_on_the_cpu():
    net = torch.nn.Linear(2, 1)
    step = OptimizerStep(
        ModuleParameters(net.parameters(), torch.optim.SGD(net.parameters(), lr=0.1))
    )
    assert step.going_on(torch.tensor(1.0)) is True
    assert step.going_on(torch.tensor(math.inf)) is False
    assert step.going_on(torch.tensor(math.nan)) is False


@pytest.mark.parametrize("bad", ["0", "2.5", "true"])
def test_a_bad_accumulation_count_is_refused_by_the_schema(make_cfg, bad):
    """The count is checked once, by the schema, before any engine is built."""
    from nnlab.errors import ConfigError
    from nnlab.schema import check

    cfg = make_cfg("experiment=sine_mlp", f"trainer.accumulate_grad_batches={bad}")
    with pytest.raises(ConfigError, match="trainer.accumulate_grad_batches"):
        check(cfg)
