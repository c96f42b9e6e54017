"""The optimizer's implementation (nnlab/tasks/optimizers.py): fused on a CPU unless the config
names one, the same math as torch's default, and this process's choice after a resume."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import run_cli
from torch import nn

from nnlab.tasks.optimizers import build_optimizer, implementation, restore

CPU = torch.device("cpu")


def adam(**options):
    return {"_target_": "torch.optim.Adam", "_partial_": True, "lr": 1e-2, **options}


@pytest.mark.parametrize(
    ("cfg", "fused"),
    [
        (adam(), True),
        ({"_target_": "torch.optim.SGD", "_partial_": True, "lr": 0.1}, True),
        ({"_target_": "torch.optim.RMSprop", "_partial_": True, "lr": 1e-3}, None),  # no kernel
        (adam(foreach=True), None),  # the config's own choice stands
        (adam(fused=False), False),
        (None, True),  # no optimizer configured: Adam
    ],
)
def test_the_cpu_gets_the_fused_implementation_unless_the_config_names_one(cfg, fused):
    optimizer = build_optimizer(cfg, nn.Linear(3, 2).parameters(), CPU)
    assert optimizer.param_groups[0].get("fused") == fused


def test_fused_and_default_steps_are_the_same_math():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 1))
    twin = copy.deepcopy(net)
    fast = build_optimizer(adam(), net.parameters(), CPU)
    plain = torch.optim.Adam(twin.parameters(), lr=1e-2)
    x, y = torch.randn(64, 6), torch.randn(64, 1)
    for model, optimizer in ((net, fast), (twin, plain)):
        for _ in range(50):
            optimizer.zero_grad()
            nn.functional.mse_loss(model(x), y).backward()
            optimizer.step()
    for a, b in zip(net.parameters(), twin.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_restore_puts_back_the_flags_a_loaded_state_replaced():
    optimizer = build_optimizer(adam(), nn.Linear(3, 2).parameters(), CPU)
    flags = implementation(optimizer)
    saved = optimizer.state_dict()
    saved["param_groups"][0].update(fused=None, foreach=True)  # as a GPU run saves it
    optimizer.load_state_dict(saved)
    assert optimizer.param_groups[0]["foreach"] is True
    restore(optimizer, flags)
    assert optimizer.param_groups[0]["fused"] is True and not optimizer.param_groups[0]["foreach"]


def groups(path):
    return torch.load(path, weights_only=False)["optimizer_states"][0]["param_groups"][0]


def test_a_run_resumed_from_another_devices_checkpoint_steps_with_this_ones_choice(tmp_path):
    outputs = tmp_path / "outputs"
    args = ["experiment=sine_mlp", "trainer.accelerator=cpu", "logger=csv"]
    run = run_cli(*args, "trainer.max_epochs=1", outputs=outputs, cwd=tmp_path).run_dir()
    last = run / "checkpoints" / "last.ckpt"
    assert groups(last)["fused"] is True
    checkpoint = torch.load(last, weights_only=False)  # made as on a GPU: torch's foreach
    checkpoint["optimizer_states"][0]["param_groups"][0].update(fused=None, foreach=True)
    torch.save(checkpoint, last)
    run_cli(f"resume={run}", "trainer.max_epochs=2", outputs=outputs, cwd=tmp_path)
    resumed = groups(run / "checkpoints" / "last.ckpt")
    assert resumed["fused"] is True and not resumed["foreach"]
