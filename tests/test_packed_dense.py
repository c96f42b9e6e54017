"""The packed trainer's dense layers (nnlab/packed/dense.py): TrialLinear and TrialNetwork run a
stack of trials on a leading trial axis and give each trial what its own nn.Linear / network
gives (outputs and every gradient); a network with a layer they do not know, or a task that
calls its network with more than the batch's inputs, is left to vmap. Tolerance: rel 1e-5 of
the largest value (float32 products summed in another order)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from nnlab.models.mlp import MLP
from nnlab.packed import dense, stack

TRIALS, BATCH = 3, 5


def close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return bool((a - b).abs().max() <= 1e-5 * b.abs().max().clamp_min(1e-6))


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("inner", [(), (4,)])  # (trials, batch, in) and (trials, batch, 4, in)
def test_trial_linear_equals_each_trials_linear(bias, inner):
    torch.manual_seed(0)
    layers = [nn.Linear(6, 7, bias=bias) for _ in range(TRIALS)]
    trial = dense.TrialLinear(layers[0])
    weight = torch.stack([lin.weight.detach() for lin in layers]).requires_grad_(True)
    trial.weight = weight
    if bias:
        trial.bias = torch.stack([lin.bias.detach() for lin in layers]).requires_grad_(True)
    x = torch.randn(TRIALS, BATCH, *inner, 6, requires_grad=True)
    out = trial(x)
    assert out.shape == (TRIALS, BATCH, *inner, 7)
    weights = [x, weight, *([trial.bias] if bias else [])]
    grads = torch.autograd.grad((out * out.sin()).sum(), weights)
    for i, lin in enumerate(layers):
        want = lin(x[i])
        assert close(out[i], want)
        want_grads = torch.autograd.grad((want * want.sin()).sum(), [x, *lin.parameters()])
        assert close(grads[0][i], want_grads[0][i])  # the input's gradient
        for got, expected in zip(grads[1:], want_grads[1:], strict=True):
            assert close(got[i], expected)


def mlp_trials(dropout: float = 0.0) -> list[nn.Module]:
    torch.manual_seed(1)
    return [MLP(8, 2, hidden_sizes=[5, 4], activation="tanh", dropout=dropout) for _ in range(3)]


@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_trial_network_equals_the_vmapped_network(dropout):
    """The whole MLP (flatten, linear layers, activations, dropout in eval mode) on the trial
    axis, against each trial's own network through vmap + functional_call, as the packed group
    ran every network before."""
    nets = mlp_trials(dropout)
    params, buffers = stack.stack_states(nets, "cpu")
    base = stack.functional_copy(nets[0]).eval()
    network = dense.trial_network(base)
    assert network is not None
    x = torch.randn(TRIALS, BATCH, 2, 4)  # flattened to 8 features per sample
    got = network(params, buffers, x)
    got_grads = torch.autograd.grad(got.pow(3).sum(), list(params.values()))

    def one(p, b, xi):
        return torch.func.functional_call(base, (p, b), (xi,))

    want = torch.vmap(one)(params, buffers, x)
    want_grads = torch.autograd.grad(want.pow(3).sum(), list(params.values()))
    assert close(got, want)
    for a, b in zip(got_grads, want_grads, strict=True):
        assert close(a, b)
    for i, net in enumerate(nets):  # and each trial's own module
        assert close(got[i], net.eval()(x[i]))


def test_trial_dropout_keeps_each_trials_rate_in_training():
    nets = mlp_trials()
    for net, p in zip(nets, (0.0, 0.5, 0.9), strict=True):
        net.layers.insert(1, nn.Dropout(p))
    params, buffers = stack.stack_states(nets, "cpu")
    base = stack.functional_copy(nets[0]).train()
    network = dense.trial_network(base)
    (dropout,) = [m for m in network.modules() if isinstance(m, dense.TrialDropoutLayer)]
    x = torch.ones(TRIALS, 4000, 8)
    network(params, buffers, x)
    dropped = (dropout(x) == 0).float().mean((1, 2))
    assert dropped.tolist() == pytest.approx([0.0, 0.5, 0.9], abs=0.02)
    base.eval()
    assert torch.equal(dropout(x), x)


def test_a_network_with_a_layer_not_known_here_is_left_to_vmap():
    conv = nn.Sequential(nn.Conv1d(2, 3, 3), nn.Flatten(), nn.Linear(6, 1))
    assert dense.trial_network(stack.functional_copy(conv)) is None
    norm = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.Linear(4, 1))
    assert dense.trial_network(stack.functional_copy(norm)) is None
    assert dense.trial_network(stack.functional_copy(mlp_trials()[0])) is not None


def test_the_stand_in_refuses_calls_other_than_the_batchs_inputs():
    """What the packed group checks before it runs a task around a TrialNetwork's outputs."""
    stand_in = dense.Outputs()
    x, out = torch.randn(2, 3), torch.randn(2, 1)
    stand_in.value, stand_in.inputs = out, x
    assert stand_in(x) is out
    with pytest.raises(dense.NotNative):
        stand_in(x.clone())  # changed inputs (channels_last, ...)
    with pytest.raises(dense.NotNative):
        stand_in(x, torch.tensor([3, 2]))  # lengths
    with pytest.raises(dense.NotNative):
        stand_in(x, targets=out)  # teacher forcing
