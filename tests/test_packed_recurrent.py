"""The packed trainer's recurrent layers (nnlab/packed/recurrent.py): TrialRNN vmapped over a
stack of trials gives each trial what its own torch RNN / LSTM / GRU gives (outputs, final
state and every gradient), with either kernel: `batched` (one product per step for all trials,
hand-written backward) and `per_trial` (torch's layer per trial). Tolerance: rel 1e-4 of the
largest value, as the packed sweep tests (float32 sums in another order; seen ~1e-6)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from nnlab.engine.capabilities import stackable
from nnlab.packed import stack
from nnlab.packed.recurrent import TrialRNN

TRIALS, BATCH, STEPS, INPUTS, HIDDEN = 3, 4, 5, 3, 6
LAYERS = [
    (nn.LSTM, {}),
    (nn.GRU, {}),
    (nn.RNN, {}),
    (nn.RNN, {"nonlinearity": "relu"}),
    (nn.LSTM, {"num_layers": 2, "bidirectional": True}),
    (nn.GRU, {"num_layers": 2, "bidirectional": True}),
]


def close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return bool((a - b).abs().max() <= 1e-4 * b.abs().max().clamp_min(1e-6))


def score(out: torch.Tensor, state) -> torch.Tensor:
    """Uses the outputs and every final state, so each gets a gradient."""
    states = state if isinstance(state, tuple) else (state,)
    return (out * out.sin()).sum() + sum((s * s.cos()).sum() for s in states)


@pytest.mark.parametrize("kernel", ["batched", "per_trial"])
@pytest.mark.parametrize("cls, options", LAYERS)
def test_trial_rnn_vmapped_equals_each_trials_torch_layer(cls, options, kernel):
    torch.manual_seed(0)
    layers = [cls(INPUTS, HIDDEN, batch_first=True, **options) for _ in range(TRIALS)]
    params, buffers = stack.stack_states([nn.Sequential(layer) for layer in layers], "cpu")
    base = stack.functional_copy(nn.Sequential(layers[0]), kernel)
    assert isinstance(base[0], TrialRNN) and base[0].kernel == kernel
    x = torch.randn(TRIALS, BATCH, STEPS, INPUTS, requires_grad=True)

    def one_trial(p, b, xi):
        out, state = torch.func.functional_call(base, (p, b), (xi,))
        return out, state, score(out, state)

    outs, states, scores = torch.vmap(one_trial, randomness="different")(params, buffers, x)
    grads = torch.autograd.grad(scores.sum(), [x, *params.values()])
    for i, layer in enumerate(layers):
        out, state = layer(x[i])
        want = torch.autograd.grad(score(out, state), [x, *layer.parameters()])
        assert close(outs[i], out)
        got_state = states if isinstance(states, tuple) else (states,)
        want_state = state if isinstance(state, tuple) else (state,)
        for got, expected in zip(got_state, want_state, strict=True):
            assert close(got[i], expected)
        assert close(grads[0][i], want[0][i])  # the input's gradient
        for got, expected in zip(grads[1:], want[1:], strict=True):
            assert close(got[i], expected)


@pytest.mark.parametrize("cls", [nn.LSTM, nn.GRU])
def test_trial_rnn_outside_vmap_runs_the_batched_recurrence(cls):
    torch.manual_seed(1)
    layer = cls(INPUTS, HIDDEN, batch_first=True, bidirectional=True)
    trial = TrialRNN(layer)
    x = torch.randn(BATCH, STEPS, INPUTS, requires_grad=True)
    out, state = trial(x)
    ref_out, ref_state = layer(x)
    assert close(out, ref_out)
    got = torch.autograd.grad(score(out, state), [x, *trial.parameters()])
    want = torch.autograd.grad(score(ref_out, ref_state), [x, *layer.parameters()])
    for a, b in zip(got, want, strict=True):
        assert close(a, b)


def test_flat_parameters_are_named_views_of_one_tensor_and_mixed_dtypes_are_not_packed():
    """stack.Flat: a group's parameters side by side in one (trials, n) tensor; the named
    parameters are views of it (writes and gradients reach it), and a network whose parameters
    have several dtypes is not stacked (it runs on its own)."""
    net = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    other = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    params, _ = stack.stack_states([net, other], "cpu")
    layout = stack.Flat(params)
    flat = layout.join(params).detach().requires_grad_(True)
    assert flat.shape == (2, 3 * 4 + 4 + 4 * 2 + 2)
    views = layout.split(flat)
    assert list(views) == list(params)
    for name, p in params.items():
        assert torch.equal(views[name], p)
    (grad,) = torch.autograd.grad(views["2.bias"].sum(), [flat])
    assert grad[:, -2:].eq(1).all() and grad[:, :-2].eq(0).all()
    with torch.no_grad():
        views["0.bias"][1] = 7.0
    assert flat[1, 12:16].eq(7.0).all() and flat[0, 12:16].ne(7.0).all()
    assert stackable(net) is None
    mixed = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2).double())
    assert "several dtypes" in stackable(mixed)
