"""Recurrent stacks as in Keras: readouts last / mean / all, per-layer return_sequences, and
masking: for every cell, direction and readout the output never depends on the padding."""

from __future__ import annotations

import pytest
import torch

from nnlab.errors import ConfigError
from nnlab.models.cells import reverse_padded
from nnlab.models.recurrent import CELLS, RecurrentNet

LENGTHS = torch.tensor([7, 3, 5, 1])


def net(cell: str, bidirectional: bool, readout: str, **kwargs) -> RecurrentNet:
    torch.manual_seed(0)
    model = RecurrentNet(
        3,
        2,
        cell=cell,
        hidden_size=5,
        num_layers=2,
        bidirectional=bidirectional,
        readout=readout,
        **kwargs,
    )
    return model.eval()


@pytest.mark.parametrize("readout", ["last", "mean", "all"])
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("cell", CELLS)
def test_output_never_depends_on_padding(cell, bidirectional, readout):
    model = net(cell, bidirectional, readout)
    x = torch.randn(4, 7, 3)
    x[torch.arange(7)[None, :] >= LENGTHS[:, None]] = 0.0
    out = model(x, LENGTHS)
    # other padding values, and more padding: the same outputs
    noisy = torch.cat([x, torch.zeros(4, 5, 3)], dim=1)
    pad = torch.arange(12)[None, :] >= LENGTHS[:, None]
    noisy[pad] = torch.randn(int(pad.sum()), 3) * 100
    again = model(noisy, LENGTHS)
    if readout == "all":
        assert again.shape == (4, 12, 2) and (again[:, 7:] == 0).all()
        again = again[:, :7]
    assert torch.allclose(out, again, atol=1e-5)
    # and each sequence alone, unpadded, gives its own output
    for i, length in enumerate(LENGTHS.tolist()):
        alone = model(x[i : i + 1, :length])[0]
        if readout == "all":
            assert torch.allclose(alone, out[i, :length], atol=1e-5)
            assert (out[i, length:] == 0).all()
        else:
            assert torch.allclose(alone, out[i], atol=1e-5)


def test_without_lengths_every_step_is_read():
    model = net("lstm", False, "last")
    x = torch.randn(2, 6, 3)
    assert torch.allclose(model(x), model(x, torch.tensor([6, 6])), atol=1e-6)
    assert not torch.allclose(model(x), model(x, torch.tensor([3, 3])), atol=1e-4)


def test_reverse_padded_reverses_real_steps_only():
    x = torch.arange(8.0).reshape(2, 4, 1)
    out = reverse_padded(x, torch.tensor([4, 2]))[..., 0]
    assert out.tolist() == [[3, 2, 1, 0], [5, 4, 6, 7]]


def test_readout_all_gives_one_output_per_step():
    model = net("gru", True, "all")
    assert model(torch.randn(3, 9, 3)).shape == (3, 9, 2)


@pytest.mark.parametrize(
    ("flags", "readout", "expected"),
    [([True, True], "last", "all"), ([True, False], "last", "last"), ([True, True], "all", "all")],
)
def test_keras_return_sequences_spell_the_readout(flags, readout, expected):
    model = net("lstm", False, readout, return_sequences=flags)
    assert model.readout == expected
    out = model(torch.randn(2, 4, 3))
    assert out.shape == ((2, 4, 2) if expected == "all" else (2, 2))


@pytest.mark.parametrize(
    ("flags", "readout", "message"),
    [
        ([False, True], "last", "a layer below the top must return sequences"),
        ([True], "last", "1 flags for 2 layers"),
        ([True, True], "mean", "contradicts model.return_sequences"),
    ],
)
def test_impossible_keras_stacks_are_refused(flags, readout, message):
    with pytest.raises(ConfigError, match=message):
        net("lstm", False, readout, return_sequences=flags)
