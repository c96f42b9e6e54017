"""model=graph and task=multi_output: networks wired by name (several inputs, merges, several
outputs each with its own loss), the schema's refusals of bad wiring, data with several inputs
or targets by name, and the commands (train, checkpoint without a config, predict, export) on
tiny generated data."""

from __future__ import annotations

import csv
import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import compose_config, run_cli
from mnist_files import write_mnist
from test_imdb import write_tree

from nnlab.errors import ConfigError
from nnlab.models.graph import Graph
from nnlab.schema import check, check_node
from nnlab.tasks.multi_output import MultiOutputTask

FILES = Path(__file__).parent / "graph_files"


def two_inputs(**changes):
    """A graph reading a 6-number table and a (5, 2) series, with two outputs."""
    layers = {
        "wide": {"inputs": "table", "dense": {"units": 8, "activation": "relu"}},
        "deep": {"inputs": "series", "layers": [{"gru": 8}]},
        "joined": {"inputs": ["wide", "deep"], "concatenate": {}},
        "positive": {"inputs": "joined", "dense": {"activation": "sigmoid"}},
        "level": {"inputs": "deep", "dense": None},
    }
    kwargs = {
        "inputs": {"table": [6], "series": [5, 2]},
        "layers": layers,
        "outputs": ["positive", "level"],
        "output_size": {"positive": 1, "level": 1},
    }
    return {**kwargs, **changes}


# --- the network ------------------------------------------------------------------------------


def test_a_graph_wires_its_inputs_by_name_and_sizes_every_layer():
    net = Graph(**two_inputs())
    assert net.shapes == {
        "table": (6,), "series": (5, 2), "wide": (8,), "deep": (8,), "joined": (16,),
        "positive": (1,), "level": (1,),
    }  # fmt: skip
    assert net.nodes["positive"].layers[0].in_features == 16  # concatenated widths
    out = net(torch.randn(3, 6), torch.randn(3, 5, 2))
    assert set(out) == {"positive", "level"} and out["positive"].shape == (3, 1)
    # the head's sigmoid is left to the loss: the output is a logit
    assert not any(isinstance(m, torch.nn.Sigmoid) for m in net.modules())
    # a middle node's sigmoid stays (only a network's end is left to the loss)
    middle = two_inputs()
    middle["layers"]["wide"]["dense"]["activation"] = "sigmoid"
    assert any(isinstance(m, torch.nn.Sigmoid) for m in Graph(**middle).modules())


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        ("add", lambda a, b: a + b),
        ("subtract", lambda a, b: a - b),
        ("multiply", lambda a, b: a * b),
        ("average", lambda a, b: (a + b) / 2),
        ("maximum", torch.maximum),
        ("minimum", torch.minimum),
        ("concatenate", lambda a, b: torch.cat([a, b], -1)),
    ],
)
def test_merges_compute_what_keras_merges_compute(mode, expected):
    net = Graph(
        inputs={"a": [3, 4], "b": [3, 4]},
        layers={"m": {"inputs": ["a", "b"], mode: {}}},
        outputs="m",
    )
    a, b = torch.randn(2, 3, 4), torch.randn(2, 3, 4)
    assert torch.equal(net(a, b), expected(a, b))


def test_concatenate_on_another_axis_and_a_padding_mask_through_single_input_nodes():
    net = Graph(
        inputs={"a": [3, 4], "b": [5, 4]},
        layers={"m": {"inputs": ["a", "b"], "concatenate": {"axis": 1}}},
        outputs="m",
    )
    assert net.shapes["m"] == (8, 4)
    # the mask of mask_zero passes from the embedding node to the recurrent node: a padded
    # review gives the same output as the unpadded one
    net = Graph(
        inputs={"ids": [6]},
        layers={
            "embed": {"inputs": "ids", "embedding": {"input_dim": 9, "output_dim": 4, "mask_zero": True}},
            "read": {"inputs": "embed", "lstm": 3},
        },
        outputs="read",
    ).eval()  # fmt: skip
    padded = torch.tensor([[3, 4, 5, 0, 0, 0]])
    short = Graph(
        inputs={"ids": [3]},
        layers={
            "embed": {"inputs": "ids", "embedding": {"input_dim": 9, "output_dim": 4, "mask_zero": True}},
            "read": {"inputs": "embed", "lstm": 3},
        },
        outputs="read",
    ).eval()  # fmt: skip
    short.load_state_dict(net.state_dict())
    assert torch.allclose(net(padded), short(padded[:, :3]), atol=1e-6)


# --- refusals: one key each ---------------------------------------------------------------------


@pytest.fixture
def users_data(monkeypatch):
    """tests/graph_files: a data module of the user's own (two inputs, two targets by name)
    and its configs, found as a user's are (PYTHONPATH, NNLAB_CONFIG_PATH)."""
    monkeypatch.syspath_prepend(str(FILES))
    monkeypatch.setenv("NNLAB_CONFIG_PATH", str(FILES / "conf"))
    return FILES


def nodes(cfg):
    from omegaconf import OmegaConf

    return OmegaConf.to_container(cfg.model.layers)


REFUSALS = {
    "unknown name": (
        lambda n: n["joined"].update(inputs=["wide", "dep"]),
        "model.layers.joined.inputs", "no input or layer named 'dep'; did you mean deep",
    ),
    "cycle": (
        lambda n: n["deep"].update(inputs="level"),
        "model.layers.level.inputs", "cycle: deep -> level -> deep",
    ),
    "unknown merge": (
        lambda n: n.update(joined={"inputs": ["wide", "deep"], "concat": {}}),
        "model.layers.joined.concat", "merges: add, subtract",
    ),
    "add of two widths": (
        lambda n: (n.update(joined={"inputs": ["wide", "deep"], "add": {}}),
                   n["wide"]["dense"].update(units=4)),
        "model.layers.joined.inputs", "add needs inputs of one shape, got wide (4,), deep (8,)",
    ),
    "concatenate of two ranks": (
        lambda n: n.update(joined={"inputs": ["wide", "series"], "concatenate": {}}),
        "model.layers.joined.inputs", "other sizes equal",
    ),
    "bad axis": (
        lambda n: n["joined"].update(concatenate={"axis": 3}),
        "model.layers.joined.concatenate.axis", "no axis",
    ),
    "a layer's argument": (
        lambda n: n["wide"]["dense"].update(units=0),
        "model.layers.wide.dense.units", ">= 1",
    ),
    "a chain's argument": (
        lambda n: n["deep"]["layers"].__setitem__(0, {"gru": {"unit": 8}}),
        "model.layers.deep.layers[0].unit", "unknown key",
    ),
    "an unread node": (
        lambda n: n.update(extra={"inputs": "table", "dense": 4}),
        "model.layers.extra", "no output reads it",
    ),
    "two inputs to one layer": (
        lambda n: n["positive"].update(inputs=["wide", "deep"]),
        "model.layers.positive.inputs", "merge them first",
    ),
    "two kinds in a node": (
        lambda n: n["wide"].update(dropout=0.5),
        "model.layers.wide", "one layer kind",
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_bad_wiring_is_refused_by_the_schema_naming_the_key(case, users_data, tmp_path):
    change, key, words = REFUSALS[case]
    cfg = compose_config(["experiment=two_views_graph"], tmp_path / "run")
    check(cfg)  # the preset as written passes
    layers = nodes(cfg)
    change(layers)
    cfg.model.layers = layers
    with pytest.raises(ConfigError) as refused:
        check(cfg)
    assert refused.value.key == key, str(refused.value)
    assert words in str(refused.value), str(refused.value)


def test_outputs_not_named_as_the_tasks_are_refused(users_data, tmp_path):
    cfg = compose_config(
        ["experiment=two_views_graph", "model.outputs=[positive,levels]"], tmp_path / "run"
    )
    with pytest.raises(ConfigError, match="no layer named 'levels'") as refused:
        check(cfg)
    assert refused.value.key == "model.outputs"
    cfg = compose_config(["experiment=two_views_graph", "~task.outputs.level"], tmp_path / "run")
    with pytest.raises(ConfigError) as refused:
        check(cfg)
    assert refused.value.key == "model.outputs", str(refused.value)


def test_the_same_mismatched_add_names_the_shapes(tmp_path):
    bad = two_inputs()
    bad["layers"]["joined"] = {"inputs": ["wide", "deep"], "add": {}}
    bad["layers"]["wide"]["dense"]["units"] = 4
    with pytest.raises(ConfigError, match=r"wide \(4,\), deep \(8,\)") as refused:
        Graph(**bad)
    assert refused.value.key == "model.layers.joined.inputs"


@pytest.mark.parametrize(
    ("override", "key", "words"),
    [
        ("+task.outputs.even.wieght=0.3", "task.outputs.even.wieght", "did you mean weight"),
        ("task.outputs.even.loss=bce", "task.outputs.even.loss", "binary_cross_entropy"),
        ("task.outputs.even.weight=-1", "task.outputs.even.weight", ">= 0"),
        ("data.targets=[digit,parity]", "data.targets", "even"),
    ],
)
def test_the_outputs_losses_are_checked_by_the_schema(override, key, words, tmp_path):
    cfg = compose_config(["experiment=mnist_digit_parity", override], tmp_path / "run")
    with pytest.raises(ConfigError) as refused:
        check(cfg)
    assert refused.value.key.startswith(key), str(refused.value)
    assert words in str(refused.value)


# --- the commands, as a user runs them ------------------------------------------------------------


@pytest.mark.slow
def test_two_inputs_two_outputs_train_checkpoint_predict_and_export(tmp_path):
    """nnlab-train, -predict and -export as subprocesses on a data module of the user's own with
    two inputs and two targets by name; the checkpoint alone rebuilds the network."""
    env = {"PYTHONPATH": str(FILES), "NNLAB_CONFIG_PATH": str(FILES / "conf")}
    result = run_cli("experiment=two_views_graph", outputs=tmp_path / "out", cwd=tmp_path, env=env)
    run = result.run_dir()
    metrics = json.loads((run / "metrics.json").read_text())
    for name in ("test/loss", "test/positive/loss", "test/positive/acc", "test/positive/auroc",
                 "test/level/loss", "test/level/mse", "test/level/mae", "val/positive/acc"):  # fmt: skip
        assert name in metrics, sorted(metrics)
    # the logged total is the weighted sum of the outputs' own losses (weights 1 and 2)
    assert metrics["test/loss"] == pytest.approx(
        metrics["test/positive/loss"] + 2.0 * metrics["test/level/loss"], rel=1e-5
    )
    summary = (run / "model_summary.txt").read_text()
    assert "nodes.joined (Merge)" in summary and "(B, 16)" in summary, summary
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    assert any("Graph[net]" in node.name for node in events.Graph().node)  # the model graph
    run_cli(f"run={run}", module="nnlab.evaluate", outputs=tmp_path / "out", cwd=tmp_path, env=env)
    evaluated = json.loads((run / "eval_metrics.json").read_text())
    assert evaluated["test/level/mse"] == pytest.approx(metrics["test/level/mse"], rel=1e-6)

    # the checkpoint alone (no config, no data module) rebuilds the network
    task = MultiOutputTask.load_from_checkpoint(metrics["best_checkpoint"]).eval()
    assert task.hparams.net["inputs"] == {"table": [6], "series": [5, 2]}
    table, series = torch.randn(4, 6), torch.randn(4, 5, 2)
    with torch.no_grad():
        out = task(table, series)
    assert {k: tuple(v.shape) for k, v in out.items()} == {"positive": (4, 1), "level": (4, 1)}

    np.savez(tmp_path / "rows.npz", table=table.numpy(), series=series.numpy())
    run_cli(f"run={run}", f"input={tmp_path / 'rows.npz'}", f"out={tmp_path / 'pred'}",
            module="nnlab.predict", outputs=tmp_path / "out", cwd=tmp_path, env=env)  # fmt: skip
    with open(tmp_path / "pred" / "predictions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["input", "positive", "p_positive", "level"]
    p = torch.sigmoid(out["positive"][:, 0])
    assert [float(r["p_positive"]) for r in rows] == pytest.approx(p.tolist(), abs=1e-5)
    assert [int(r["positive"]) for r in rows] == (p > 0.5).long().tolist()
    assert [float(r["level"]) for r in rows] == pytest.approx(out["level"][:, 0].tolist(), abs=1e-5)

    for fmt in ("torchscript", "onnx"):
        run_cli(f"run={run}", f"format={fmt}", module="nnlab.export", outputs=tmp_path / "out",
                cwd=tmp_path, env=env)  # fmt: skip
        record = json.loads((run / "export" / "export.json").read_text())
        assert record["matches"] and set(record["inputs"]) == {"table", "series"}, record
        assert set(record["outputs"]) == {"positive", "level"}
    import onnxruntime

    session = onnxruntime.InferenceSession(str(run / "export" / "model.onnx"))
    assert [i.name for i in session.get_inputs()] == ["table", "series"]
    got = dict(zip(["positive", "level"], session.run(["positive", "level"], {
        "table": table.numpy(), "series": series.numpy()}), strict=True))  # fmt: skip
    assert np.allclose(got["level"], out["level"].numpy(), atol=1e-5)
    loaded = torch.jit.load(str(run / "export" / "model.torchscript.pt"))
    assert torch.allclose(loaded(table, series)["positive"], out["positive"], atol=1e-5)


TINY_IMDB = [
    "debug=limit", "trainer.accelerator=cpu", "trainer.max_epochs=1", "data.num_words=40",
    "data.max_len=24", "data.val_size=0.25", "data.batch_size=8",
]  # fmt: skip


@pytest.mark.slow
def test_imdb_wide_deep_reads_both_views_of_a_review_by_name(tmp_path):
    write_tree(tmp_path / "data")
    env = {"NNLAB_DATA_DIR": str(tmp_path / "data")}
    run = run_cli(
        "experiment=imdb_wide_deep", *TINY_IMDB, outputs=tmp_path / "out", cwd=tmp_path, env=env
    ).run_dir()
    metrics = json.loads((run / "metrics.json").read_text())
    assert 0.0 <= metrics["test/acc"] <= 1.0
    from nnlab.tasks.classification import ClassificationTask

    task = ClassificationTask.load_from_checkpoint(metrics["best_checkpoint"]).eval()
    assert list(task.hparams.net["inputs"]) == ["ids", "lengths", "multihot"]
    assert task.hparams.net["inputs"]["multihot"] == [40]
    # the deep branch reads the ids, the wide one the bag: both change the output
    ids = torch.randint(2, 40, (3, 24))
    bag = torch.zeros(3, 40).scatter_(1, ids, 1.0)
    lengths = torch.full((3,), 24)
    with torch.no_grad():
        base = task(ids, lengths, bag)
        assert not torch.allclose(base, task(ids, lengths, torch.zeros_like(bag)))
        assert not torch.allclose(base, task(torch.flip(ids, [1]) * 0 + 2, lengths, bag))
    run_cli(f"run={run}", 'text="a wonderful film, great acting"', f"out={tmp_path / 'pred'}",
            module="nnlab.predict", outputs=tmp_path / "out", cwd=tmp_path, env=env)  # fmt: skip
    with open(tmp_path / "pred" / "predictions.csv", newline="") as f:
        (row,) = list(csv.DictReader(f))
    assert row["sentiment"] in ("negative", "positive")
    for fmt in ("torchscript", "onnx"):
        run_cli(f"run={run}", f"format={fmt}", module="nnlab.export", outputs=tmp_path / "out",
                cwd=tmp_path, env=env)  # fmt: skip
        record = json.loads((run / "export" / "export.json").read_text())
        assert record["matches"] and list(record["inputs"]) == ["ids", "lengths", "multihot"]


def test_mnist_digit_parity_trains_two_outputs_with_their_own_losses(tmp_path):
    write_mnist(tmp_path / "data")
    env = {"NNLAB_DATA_DIR": str(tmp_path / "data")}
    run = run_cli(
        "experiment=mnist_digit_parity", "debug=limit", "trainer.max_epochs=1",
        "data.val_size=20", outputs=tmp_path / "out", cwd=tmp_path, env=env,
    ).run_dir()  # fmt: skip
    metrics = json.loads((run / "metrics.json").read_text())
    assert {"test/digit/acc", "test/digit/f1", "test/even/acc", "test/even/auroc"} <= set(metrics)
    assert metrics["test/loss"] == pytest.approx(
        metrics["test/digit/loss"] + 0.5 * metrics["test/even/loss"], rel=1e-5
    )
    images = np.random.default_rng(0).integers(0, 256, (3, 28, 28), dtype=np.uint8)
    np.save(tmp_path / "digits.npy", images)
    run_cli(f"run={run}", f"input={tmp_path / 'digits.npy'}", f"out={tmp_path / 'pred'}",
            module="nnlab.predict", outputs=tmp_path / "out", cwd=tmp_path, env=env)  # fmt: skip
    with open(tmp_path / "pred" / "predictions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 3 and list(rows[0]) == ["input", "digit", "p_digit", "even", "p_even"]
    assert all(0 <= int(r["digit"]) <= 9 and r["even"] in ("0", "1") for r in rows)


def test_the_data_gives_several_targets_by_name(data_dir):
    from nnlab.data.mnist import MNISTDataModule

    dm = MNISTDataModule(str(data_dir), view="image", targets=["digit", "even", "ink"], val_size=20)
    dm.setup()
    x, digit, even, ink = dm.datasets["train"].tensors
    assert dm.target_names == ("digit", "even", "ink") and dm.target_kind == "outputs"
    assert torch.equal(even, (digit % 2 == 0).long())
    assert torch.allclose(ink, x.reshape(len(x), -1).mean(1))
    with pytest.raises(ConfigError, match="at most once"):
        MNISTDataModule(str(data_dir), targets=["digit", "digit"])


def test_a_task_for_one_output_refuses_several_and_back(tmp_path):
    write_mnist(tmp_path / "data")
    env = {"NNLAB_DATA_DIR": str(tmp_path / "data")}
    # the two-output network under the one-output classification task
    result = run_cli(
        "experiment=mnist_digit_parity", "task=classification", "~task.outputs", "debug=limit",
        outputs=tmp_path / "out", cwd=tmp_path, env=env, check=False,
    )  # fmt: skip
    assert result.returncode == 2, result.output[-3000:]
    assert "error: model.outputs: the network has outputs digit, even by name" in result.output
    # a network with one output under task=multi_output, on data with one target
    result = run_cli(
        "experiment=mnist_cnn", "task=multi_output", "~task.num_classes",
        "task.outputs={digit: {loss: cross_entropy, num_classes: 10}}", "debug=limit",
        outputs=tmp_path / "out", cwd=tmp_path, env=env, check=False,
    )  # fmt: skip
    assert result.returncode == 2, result.output[-3000:]
    assert "error: task.targets: the data gives one unnamed target" in result.output


# -- the real data (NNLAB_DATA_DIR), long: -m full_run ------------------------------------------
REAL = os.environ.get("NNLAB_DATA_DIR")


@pytest.mark.full_run
@pytest.mark.real_data
@pytest.mark.skipif(
    not REAL or not (Path(REAL) / "aclImdb").is_dir(),
    reason="needs NNLAB_DATA_DIR with aclImdb/ (the real IMDB reviews)",
)
def test_imdb_wide_deep_full(cli):
    """Measured 89.36% on the test reviews (docs/results.md), above both of its halves alone
    (imdb_mlp's 88.19%, imdb_cnn's 87.82%)."""
    metrics = cli("experiment=imdb_wide_deep", env={"NNLAB_DATA_DIR": REAL}, timeout=3600)
    assert metrics.metrics()["test/acc"] >= 0.885, metrics.metrics()


@pytest.mark.full_run
@pytest.mark.real_data
@pytest.mark.skipif(
    not REAL or not (Path(REAL) / "MNIST" / "raw").is_dir(),
    reason="needs NNLAB_DATA_DIR with MNIST/raw/ (the real digits)",
)
def test_mnist_digit_parity_full(cli):
    """Measured: digit 98.39%, even 98.77% on the test images (docs/results.md)."""
    metrics = cli("experiment=mnist_digit_parity", env={"NNLAB_DATA_DIR": REAL}, timeout=3600)
    scores = metrics.metrics()
    assert scores["test/digit/acc"] >= 0.98 and scores["test/even/acc"] >= 0.98, scores


# --- a start state given by other nodes (Keras' layer(x, initial_state=[h, c])) ------------------


def encoder_decoder(enc: dict, dec: dict | None = None, **node) -> dict:
    """Keras' sequence-to-sequence wiring: the encoder returns its state, the decoder starts
    from it (`initial_state: enc`, or the names of its parts)."""
    dec = {"units": 4, "return_sequences": True, **(dec or enc)}
    dec.pop("return_state", None)
    kind = next(iter(enc))
    layers = {
        "enc": {"inputs": "src", kind: {**enc[kind], "return_state": True}},
        "dec": {"inputs": "tgt", "initial_state": "enc", **{kind: dec.get(kind, dec)}, **node},
        "out": {"inputs": "dec", "dense": 2},
    }
    return {"inputs": {"src": [5, 3], "tgt": [6, 2]}, "layers": layers, "outputs": "out"}


@pytest.mark.parametrize(
    "enc",
    [
        {"lstm": {"units": 4}},
        {"gru": {"units": 4}},
        {"lstm": {"units": 4, "bidirectional": True}},
        {"lstm": {"units": 4, "inner_activation": "hard_sigmoid"}},  # nnlab's keras_lstm: [h | c]
    ],
    ids=["lstm", "gru", "bidirectional", "keras_lstm"],
)
def test_a_given_initial_state_starts_the_decoder_where_the_encoder_ended(enc):
    """The decoder's outputs are its layer's run from the encoder's final state (not from
    zeros); a list of the state's parts by name is the same; gradients reach the encoder."""
    torch.manual_seed(0)
    kind, args = next(iter(enc.items()))
    net = Graph(**encoder_decoder(enc, {kind: {**args, "return_sequences": True}}))
    parts = net.published["enc"]
    assert net.starts["dec"] == parts
    assert parts[:2] == (["enc.h", "enc.c"] if kind == "lstm" else ["enc.h"])
    assert all(net.shapes[p] == (4,) for p in parts)
    src, tgt = torch.randn(3, 5, 3), torch.randn(3, 6, 2)
    out = net(src, tgt)
    enc_layer, dec_layer = net.nodes["enc"].recurrent(), net.nodes["dec"].recurrent()
    _, _, state = enc_layer.run(src)
    expected, _, _ = dec_layer.run(tgt, None, state)
    assert torch.allclose(out, net.nodes["out"](expected)[0], atol=1e-6)
    from_zeros, _, _ = dec_layer.run(tgt)
    zeros = [torch.zeros_like(s) for s in state]
    assert torch.allclose(dec_layer.run(tgt, None, zeros)[0], from_zeros, atol=1e-6)
    assert not torch.allclose(expected, from_zeros, atol=1e-3)  # the state changes the output
    if kind == "lstm" and not args.get("bidirectional") and "inner_activation" not in args:
        # torch's own LSTM, started from the encoder's (h_n, c_n), computes the same
        _, (h, c) = enc_layer.rnn(src)
        torch_out, _ = dec_layer.rnn(tgt, (h, c))
        assert torch.allclose(expected, torch_out, atol=1e-6)
    named = encoder_decoder(enc, {kind: {**args, "return_sequences": True}})
    named["layers"]["dec"]["initial_state"] = parts  # the same, by the parts' names
    by_name = Graph(**named)
    by_name.load_state_dict(net.state_dict())
    assert torch.allclose(by_name(src, tgt), out, atol=1e-6)
    out.pow(2).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in enc_layer.parameters())


STATE_REFUSALS = {
    "one part of an LSTM's two": (
        lambda n: n["dec"].update(initial_state=["enc.h"]),
        "model.layers.dec.initial_state", "starts from [h (4,), c (4,)] per sample, got [enc.h (4,)]",
    ),
    "a state of other units": (
        lambda n: n["dec"]["lstm"].update(units=5),
        "model.layers.dec.initial_state", "a lstm layer of 5 units starts from [h (5,), c (5,)]",
    ),
    "a part the node does not give": (
        lambda n: n["enc"]["lstm"].update(return_state=False),
        "model.layers.dec.initial_state", "got [enc (4,)]; enc gives no state: set return_state: true",
    ),
    "a state for a dense node": (
        lambda n: n["out"].update(initial_state="enc"),
        "model.layers.out.initial_state", "only a node of one recurrent layer",
    ),
    "a given and a learned start": (
        lambda n: n["dec"]["lstm"].update(initial_state="learned"),
        "model.layers.dec.initial_state", "keep one of them",
    ),
    "return_state in a layer list": (
        lambda n: n.update(enc={"inputs": "src", "layers": [{"lstm": {"units": 4, "return_state": True}}]}),
        "model.layers.enc.layers[0].return_state", "only a graph node of one recurrent layer",
    ),
    "an unknown node's state": (
        lambda n: n["dec"].update(initial_state=["encoder.h", "enc.c"]),
        "model.layers.dec.initial_state", "no input or layer named 'encoder.h'",
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(STATE_REFUSALS))
def test_a_given_state_that_does_not_fit_is_one_error_naming_the_node(case):
    config = encoder_decoder({"lstm": {"units": 4}})
    change, key, words = STATE_REFUSALS[case]
    change(config["layers"])
    with pytest.raises(ConfigError) as refused:
        check_node({"_target_": "nnlab.models.graph.Graph", **config}, "model")
    assert refused.value.key == key, str(refused.value)
    assert words in str(refused.value), str(refused.value)


@pytest.mark.slow
def test_a_graph_with_given_states_trains_checkpoints_and_exports(
    users_data, tmp_path, monkeypatch, capfd
):
    """A GRU started from a dense layer of the table, and a second GRU started from the first's
    final state (tests/graph_files/conf/experiment/two_views_states.yaml, whose graph calls
    its inputs features and steps): trained in process, rebuilt from the checkpoint alone,
    called by the graph's input names, exported (ONNX, TorchScript) and predicted from an .npz
    under those names."""
    from conftest import train_in_process

    import nnlab.export
    import nnlab.predict

    code, output = train_in_process(
        ["experiment=two_views_states", "logger=none", "model.inputs={features:[6],steps:[5,2]}"],
        tmp_path,
        monkeypatch,
        capfd,
    )
    assert code == 0, output[-3000:]
    (ckpt,) = (tmp_path / "out").glob("runs/*/*/checkpoints/last.ckpt")
    run = ckpt.parents[1]
    task = MultiOutputTask.load_from_checkpoint(ckpt).eval()
    assert task.net.starts == {"enc": ["start"], "dec": ["enc.h"]}
    table, series = torch.randn(4, 6), torch.randn(4, 5, 2)
    with torch.no_grad():
        out = task.net(table, series)
        other = task.net(torch.randn(4, 6), series)  # the table's start state is read
        by_name = task(steps=series, features=table)
    assert not torch.allclose(out["positive"], other["positive"])
    assert all(torch.equal(by_name[k], out[k]) for k in out)
    for fmt in ("onnx", "torchscript"):
        nnlab.export.main.call([f"run={run}", f"format={fmt}"])
        record = json.loads((run / "export" / "export.json").read_text())
        assert record["matches"] and list(record["inputs"]) == ["features", "steps"], record
    import onnxruntime

    session = onnxruntime.InferenceSession(str(run / "export" / "model.onnx"))
    assert [i.name for i in session.get_inputs()] == ["features", "steps"]
    (level,) = session.run(["level"], {"features": table.numpy(), "steps": series.numpy()})
    assert np.allclose(level, out["level"].numpy(), atol=1e-5)

    np.savez(tmp_path / "rows.npz", steps=series.numpy(), features=table.numpy())
    target = nnlab.predict.main.call([f"run={run}", f"input={tmp_path / 'rows.npz'}"])
    with open(target / "predictions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [float(r["level"]) for r in rows] == pytest.approx(out["level"][:, 0].tolist(), abs=1e-5)
    np.savez(tmp_path / "bad.npz", table=table.numpy(), steps=series.numpy())
    code, output = run_main(
        nnlab.predict.main, [f"run={run}", f"input={tmp_path / 'bad.npz'}"], capfd
    )
    assert code == 2 and "has no array features; the network's inputs are features, steps" in output


def run_main(main, argv, capfd) -> tuple[int, str]:
    """A command's main in this process: (exit code, what it printed)."""
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
        raise SystemExit(0)
    out, err = capfd.readouterr()
    return exit_info.value.code, out + err


def test_a_graph_takes_its_inputs_by_position_by_name_or_as_a_mapping():
    net = Graph(**two_inputs()).eval()
    table, series = torch.randn(3, 6), torch.randn(3, 5, 2)
    with torch.no_grad():
        expected = net(table, series)
        for got in (
            net(series=series, table=table),
            net(table, series=series),
            net({"series": series, "table": table}),
        ):
            assert all(torch.equal(got[k], expected[k]) for k in expected)
    for args, kwargs, words in [
        ((table,), {}, "missing inputs series; the network takes table, series"),
        ((), {"table": table, "serie": series}, "unknown inputs ['serie']"),
        ((table,), {"table": table}, "inputs ['table'] given twice"),
        ((table, series, series), {}, "takes 2 inputs (table, series), got 3"),
    ]:
        with pytest.raises(ValueError, match=re.escape(words)):
            net(*args, **kwargs)


def test_a_graph_may_output_a_nodes_final_state():
    """Keras' Model(inputs, [outputs, state_h, state_c]): the encoder's state parts as outputs,
    equal to its layer's final state; a part it does not give is refused naming model.outputs."""
    config = encoder_decoder({"lstm": {"units": 4}})
    config["outputs"] = {"out": "out", "h": "enc.h", "c": "enc.c"}
    net = Graph(**config)
    src, tgt = torch.randn(3, 5, 3), torch.randn(3, 6, 2)
    got = net(src, tgt)
    _, (h, c) = net.nodes["enc"].recurrent().rnn(src)
    assert torch.allclose(got["h"], h[0], atol=1e-6) and torch.allclose(got["c"], c[0], atol=1e-6)
    config["outputs"] = {"out": "out", "x": "enc.x"}
    with pytest.raises(
        ConfigError, match="no state named 'enc.x'; the states enc gives: enc.h, enc.c"
    ) as refused:
        Graph(**config)
    assert refused.value.key == "model.outputs"
