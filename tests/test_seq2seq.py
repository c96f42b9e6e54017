"""Encoder-decoder forecasting: autoregressive at test time, teacher forcing only while
training, the sine_seq2seq preset end to end."""

from __future__ import annotations

import pytest
import torch

from nnlab.errors import ConfigError
from nnlab.models.seq2seq import Seq2SeqForecaster
from nnlab.schema import check_args
from nnlab.tasks.regression import RegressionTask

NET = {"_target_": "nnlab.models.seq2seq.Seq2SeqForecaster", "input_size": 1, "output_size": 4}


def test_shapes_and_autoregression_by_hand():
    torch.manual_seed(0)
    net = Seq2SeqForecaster(1, 3, hidden_size=5).eval()
    x = torch.randn(2, 6)
    out = net(x)
    assert out.shape == (2, 3)
    _, state = net.encoder(x.unsqueeze(-1))
    previous, expected = x[:, -1:, None], []
    for _ in range(3):
        h, state = net.decoder(previous, state)
        previous = net.head(h)
        expected.append(previous[:, 0, 0])
    assert torch.allclose(out, torch.stack(expected, 1), atol=1e-6)


def test_teacher_forcing_only_while_training():
    torch.manual_seed(0)
    net = Seq2SeqForecaster(1, 4, hidden_size=5, teacher_forcing_ratio=1.0)
    x, y = torch.randn(3, 6), torch.randn(3, 4) * 10
    net.train()
    forced = net(x, targets=y)
    free = net(x)
    assert torch.allclose(forced[:, 0], free[:, 0])  # step 0 reads the window's last value
    assert not torch.allclose(forced[:, 1:], free[:, 1:])  # later steps read the true values
    net.eval()
    assert torch.allclose(net(x, targets=y), net(x))  # never at test time


def test_the_task_passes_targets_while_training_only():
    torch.manual_seed(0)
    task = RegressionTask(net={**NET, "teacher_forcing_ratio": 1.0})
    x, y = torch.randn(3, 6), torch.randn(3, 4) * 10
    task.train()
    forced, _ = task.outputs((x, y))
    assert torch.allclose(forced, task.net(x, targets=y))
    task.eval()
    assert torch.allclose(task.outputs((x, y))[0], task.net(x))


def test_bad_ratio_is_refused():
    with pytest.raises(ConfigError, match="model.teacher_forcing_ratio"):
        check_args(
            Seq2SeqForecaster, "model", input_size=1, output_size=2, teacher_forcing_ratio=1.5
        )


def test_the_preset_trains(cli):
    metrics = cli("experiment=sine_seq2seq", "trainer.max_epochs=1", "logger=none").metrics()
    assert metrics["test/mse"] > 0


@pytest.mark.slow
def test_sine_seq2seq_reaches_its_bound(cli):
    """8 steps ahead on the noisy sine: near the noise floor (0.04)."""
    assert cli("experiment=sine_seq2seq", "logger=none").metrics()["test/mse"] <= 0.06


def test_the_recursive_forecast_feeds_predictions_back():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).parents[1] / "scripts" / "recursive_forecast.py"
    spec = importlib.util.spec_from_file_location("recursive_forecast", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    # a "model" that predicts the sum of its window's last two values: a Fibonacci recursion
    windows = torch.tensor([[0.0, 1.0, 1.0]])
    out = module.recursive_forecast(lambda h: h[:, -2:].sum(1, keepdim=True), windows, 4)
    assert out.tolist() == [[2.0, 3.0, 5.0, 8.0]]
