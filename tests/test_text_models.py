"""Text classifiers: shapes, padding invariance (packed sequences / masks), the task passing
lengths through."""

from __future__ import annotations

import pytest
import torch

from nnlab.errors import ConfigError
from nnlab.models.text import ConvTextClassifier, RecurrentTextClassifier
from nnlab.schema import check_args
from nnlab.tasks.classification import ClassificationTask

NETS = {
    "lstm_last": {"_target_": "nnlab.models.text.RecurrentTextClassifier", "cell": "lstm"},
    "lstm_max": {"_target_": "nnlab.models.text.RecurrentTextClassifier", "pooling": "max"},
    "gru_last": {"_target_": "nnlab.models.text.RecurrentTextClassifier", "cell": "gru"},
    "gru_mean_2layers": {
        "_target_": "nnlab.models.text.RecurrentTextClassifier",
        "cell": "gru",
        "pooling": "mean",
        "num_layers": 2,
    },
    "lstm_unidirectional": {
        "_target_": "nnlab.models.text.RecurrentTextClassifier",
        "bidirectional": False,
    },
    "cnn": {"_target_": "nnlab.models.text.ConvTextClassifier", "channels": [8, 8]},
    "cnn_even_kernel": {"_target_": "nnlab.models.text.ConvTextClassifier", "kernel_size": 4},
}


def build(name: str):
    from hydra.utils import instantiate

    torch.manual_seed(0)
    spec = {"num_words": 50, "embedding_dim": 8, **NETS[name]}
    if "Recurrent" in spec["_target_"]:
        spec["hidden_size"] = 6
    return instantiate(spec).eval()


def batch(pad_to: int):
    """Three reviews of lengths 5, 9 and 1, padded with zeros to `pad_to` steps."""
    g = torch.Generator().manual_seed(3)
    lengths = torch.tensor([5, 9, 1])
    ids = torch.zeros(3, pad_to, dtype=torch.long)
    for i, n in enumerate(lengths):
        ids[i, :n] = torch.randint(2, 50, (int(n),), generator=g)
    return ids, lengths


@pytest.mark.parametrize("name", NETS)
def test_the_output_does_not_depend_on_padding(name):
    net = build(name)
    with torch.no_grad():
        short = net(*batch(9))
        long = net(*batch(40))
        alone = net(batch(9)[0][2:3, :1], torch.tensor([1]))  # the 1-token review unpadded
    assert short.shape == (3, 1)
    torch.testing.assert_close(short, long, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(short[2:3], alone, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["lstm_last", "cnn"])
def test_lengths_default_to_the_non_pad_ids(name):
    net = build(name)
    ids, lengths = batch(12)
    with torch.no_grad():
        torch.testing.assert_close(net(ids), net(ids, lengths))


@pytest.mark.parametrize("name", ["lstm_last", "cnn"])
def test_padding_matters_without_lengths_only_if_it_is_real_data(name):
    # A check that the invariance test can fail: the same ids read as longer reviews differ.
    net = build(name)
    ids, lengths = batch(12)
    with torch.no_grad():
        assert not torch.allclose(net(ids, lengths), net(ids, torch.full((3,), 12)))


def test_bad_settings_name_their_key():
    # refused by the schema (nnlab.schema), before anything is built
    with pytest.raises(ConfigError, match="model.cell"):
        check_args(RecurrentTextClassifier, "model", num_words=10, cell="tcn")
    with pytest.raises(ConfigError, match="model.pooling"):
        check_args(RecurrentTextClassifier, "model", num_words=10, pooling="attention")
    with pytest.raises(ConfigError, match="model.channels"):
        check_args(ConvTextClassifier, "model", num_words=10, channels=[])
    with pytest.raises(ConfigError, match="model.dropout"):
        check_args(ConvTextClassifier, "model", num_words=10, dropout=1.0)


def test_the_task_passes_lengths_to_the_net():
    net = {"_target_": "nnlab.models.text.ConvTextClassifier", "num_words": 50, "embedding_dim": 8}
    task = ClassificationTask(net=net, num_classes=2, binary=True)
    ids, lengths = batch(12)
    y = torch.tensor([0, 1, 1])
    loss = task.training_step((ids, lengths, y), 0)
    loss.backward()
    assert torch.isfinite(loss) and task.net.embedding.weight.grad is not None
    probs = task.predict_step((ids, lengths, y), 0)
    assert probs.shape == (3,) and ((probs >= 0) & (probs <= 1)).all()
    with torch.no_grad():
        torch.testing.assert_close(probs, torch.sigmoid(task.net(ids, lengths)).squeeze(-1))


@pytest.mark.parametrize("cls", [RecurrentTextClassifier, ConvTextClassifier])
def test_embeddings_start_small_with_a_zero_pad_row(cls):
    weight = cls(100, embedding_dim=16).embedding.weight
    assert (weight[0] == 0).all()
    assert weight[1:].abs().max() <= 0.05 and weight[1:].std() > 0.01
