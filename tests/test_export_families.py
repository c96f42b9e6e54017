"""nnlab-export for every model family: each network, built from its preset on tiny generated
data, written as TorchScript and as ONNX (inputs and outputs named), and the file run on two
batches of other sizes than the traced one must give the network's own outputs."""

from __future__ import annotations

import pytest
import torch
from conftest import compose_config
from mnist_files import write_mnist
from test_imdb import write_tree

from nnlab.config import build
from nnlab.data.base import batch_names
from nnlab.export import export_network, model_inputs

TINY_MNIST = ["data.val_size=20"]
TINY_IMDB = ["data.num_words=40", "data.max_len=24", "data.val_size=0.25"]
FAMILIES = {  # model family: the preset (and overrides) that builds it
    "mlp": ["experiment=sine_mlp"],
    "recurrent": ["experiment=sine_lstm"],
    "recurrent_classifier": ["experiment=mnist_lstm", *TINY_MNIST],
    "seq2seq": ["experiment=sine_seq2seq"],
    "conv1d": ["experiment=weather_conv1d"],
    "cnn": ["experiment=mnist_cnn", *TINY_MNIST],
    "lenet": ["experiment=mnist_lenet", *TINY_MNIST],
    "alexnet": ["experiment=mnist_alexnet_small", *TINY_MNIST],
    "separable_cnn": ["experiment=mnist_cnn", "model=separable_cnn", *TINY_MNIST],
    "sequential": ["experiment=sine_conv1d_gru"],
    "text_cnn": ["experiment=imdb_cnn", *TINY_IMDB],
    "text_rnn": ["experiment=imdb_lstm", *TINY_IMDB],  # packed sequences: ids and lengths
    "language_model": [
        "experiment=imdb_word_lm",
        "data.max_eval_chars=500",
        "data.seq_len=8",
        "data.batch_size=4",
    ],  # fmt: skip
    "graph": ["experiment=imdb_wide_deep", *TINY_IMDB],
    "graph_two_outputs": ["experiment=mnist_digit_parity", *TINY_MNIST],
}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("export_data")
    write_mnist(root)
    write_tree(root)
    return root


def test_every_model_family_has_a_case():
    from nnlab import CONF_DIR

    families = {p.stem for p in (CONF_DIR / "model").glob("*.yaml")}
    assert families <= set(FAMILIES), families - set(FAMILIES)


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_every_family_exports(family, fmt, data, tmp_path, monkeypatch):
    if fmt == "onnx":
        pytest.importorskip("onnxruntime")
    monkeypatch.setenv("NNLAB_DATA_DIR", str(data))
    cfg = compose_config(FAMILIES[family], tmp_path / "run")
    torch.manual_seed(0)
    datamodule = build(cfg.data, "data")
    datamodule.prepare_data()
    datamodule.setup("test")
    net = build(cfg.task, "task", net=cfg.model, _recursive_=False).net.eval()
    inputs = model_inputs(datamodule)
    names, _ = batch_names(datamodule)
    path = tmp_path / f"model.{fmt}"
    record = export_network(net, inputs, names, fmt, path)
    assert path.is_file() and record["max_abs_diff"] <= 1e-5, record
    assert list(record["inputs"]) == names
    if family.startswith("graph"):
        assert names != ["input"] or family == "graph_two_outputs"
        assert len(record["outputs"]) == (2 if family == "graph_two_outputs" else 1)
    if fmt == "onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        assert {i.name for i in session.get_inputs()} <= set(names)
        assert [o.name for o in session.get_outputs()] == list(record["outputs"])
