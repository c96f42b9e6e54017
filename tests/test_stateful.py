"""Keras' stateful recurrent models and a learned initial state (models/recurrent.py): what a
stateful network computes against a stateless one, where its state resets, the refusals (shuffled
data, CUDA graphs, packed trials), and a learned start state trained and saved in checkpoints."""

from __future__ import annotations

import json

import pytest
import torch

from nnlab.engine.capabilities import stackable, why_not
from nnlab.errors import ConfigError
from nnlab.models.recurrent import RecurrentNet
from nnlab.schema import check_node
from nnlab.tasks.regression import RegressionTask

CELLS = ["rnn", "lstm", "gru", "jzs1", "keras_lstm"]


def pair(cell: str, **kwargs) -> tuple[RecurrentNet, RecurrentNet]:
    """A stateful network and a stateless one with the same weights."""
    torch.manual_seed(0)
    stateful = RecurrentNet(3, 2, cell=cell, hidden_size=5, stateful=True, **kwargs)
    plain = RecurrentNet(3, 2, cell=cell, hidden_size=5, **kwargs)
    plain.load_state_dict(stateful.state_dict())
    return stateful.eval(), plain.eval()


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("bidirectional", [False, True])
def test_a_stateful_batch_continues_the_rows_of_the_one_before(cell, bidirectional):
    """Row i of batch 2 starts where row i of batch 1 ended: the stateful network's output on
    batch 2 is the stateless one's on the two batches joined in time (one direction); after
    reset_states it is the stateless one's again."""
    stateful, plain = pair(cell, num_layers=2, bidirectional=bidirectional)
    first, second = torch.randn(4, 6, 3), torch.randn(4, 5, 3)
    with torch.no_grad():
        assert torch.allclose(stateful(first), plain(first), atol=1e-6)  # from zeros
        continued = stateful(second)
        if not bidirectional:
            joined = plain(torch.cat([first, second], dim=1))
            assert torch.allclose(continued, joined, atol=1e-5)
        assert not torch.allclose(continued, plain(second), atol=1e-3)
        # a shorter last batch: its rows continue the first rows' states
        short = stateful(first[:2])
        if not bidirectional:
            whole = plain(torch.cat([first, second, first], dim=1))[:2]
            assert torch.allclose(short, whole, atol=1e-5)
        with pytest.raises(ValueError, match="model.stateful: a batch of 4"):
            stateful(first)  # more rows than the state carried
        stateful.reset_states()
        assert torch.allclose(stateful(second), plain(second), atol=1e-6)


def test_no_gradient_crosses_the_batch_boundary_and_training_and_evaluation_carry_apart():
    stateful, _ = pair("lstm")
    first = torch.randn(2, 4, 3, requires_grad=True)
    stateful.train()
    stateful(first).sum().backward()
    first.grad = None
    stateful(torch.randn(2, 4, 3)).sum().backward()
    assert first.grad is None  # the carried state is a constant
    train_state = stateful.carried[True]
    stateful.eval()
    with torch.no_grad():
        stateful(torch.randn(2, 4, 3))
    assert stateful.carried[True] is train_state and False in stateful.carried
    stateful.reset_states(False)
    assert set(stateful.carried) == {True}


def task_of(net_cfg: dict) -> RegressionTask:
    return RegressionTask(net={"_target_": "nnlab.models.recurrent.RecurrentNet", **net_cfg})


def test_the_task_resets_states_where_epochs_and_evaluations_start_and_checkpoints_them():
    task = task_of({"input_size": 1, "output_size": 1, "hidden_size": 4, "stateful": True})
    net = task.net
    net.train()
    net(torch.randn(3, 5))
    net.eval()
    net(torch.randn(3, 5))
    checkpoint: dict = {}
    task.on_save_checkpoint(checkpoint)
    assert torch.equal(checkpoint["carried_states"][""][0], net.carried[True][0])
    task.on_validation_epoch_start()
    assert set(net.carried) == {True}  # evaluation's state reset, training's kept
    task.on_train_epoch_start()
    assert net.carried == {}
    task.on_load_checkpoint(checkpoint)  # a mid-epoch checkpoint continues the carried state
    assert torch.equal(net.carried[True][1], checkpoint["carried_states"][""][1])


def test_stateful_refuses_shuffled_data_cuda_graphs_and_packing():
    from nnlab.data.series import SineDataModule

    task = task_of({"input_size": 1, "output_size": 1, "hidden_size": 4, "stateful": True})
    with pytest.raises(ConfigError, match=r"data\.shuffle: true, but model\.stateful"):
        task.check_data(SineDataModule(window=8, shuffle=True))
    task.check_data(SineDataModule(window=8, shuffle=False))
    for engine in ("captured", "packed"):
        assert "is stateful" in why_not(engine, task=task)
    plain = task_of({"input_size": 1, "output_size": 1, "hidden_size": 4})
    assert why_not("packed", task=plain) is None
    learned = task_of({"input_size": 1, "output_size": 1, "initial_state": "learned"})
    assert "learned initial state" in stackable(learned.net)
    net = {"_target_": "nnlab.models.recurrent.RecurrentNet", "input_size": 1, "output_size": 1}
    with pytest.raises(ConfigError, match="model.initial_state"):
        check_node({**net, "initial_state": "random"}, "model")
    with pytest.raises(ConfigError, match="model.stateful"):
        check_node({**net, "stateful": "yes"}, "model")


@pytest.mark.parametrize("cell", ["lstm", "gru", "jzs2"])
def test_a_learned_initial_state_is_a_trained_parameter(cell):
    torch.manual_seed(0)
    net = RecurrentNet(3, 1, cell=cell, hidden_size=4, num_layers=2, initial_state="learned")
    names = {n for n, _ in net.named_parameters() if n.startswith("initial_")}
    assert names == ({"initial_h", "initial_c"} if cell == "lstm" else {"initial_h"})
    x = torch.randn(6, 5, 3)
    before = net(x).detach()
    net.initial_h.data.normal_()
    assert not torch.allclose(net(x), before)  # the start state is read
    net.zero_grad()
    net(x).pow(2).sum().backward()
    assert net.initial_h.grad.abs().sum() > 0


def test_a_stateful_run_with_a_learned_start_trains_and_saves_it(cli):
    result = cli(
        "experiment=sine_rnn",
        "logger=none",
        "trainer.max_epochs=2",
        "model.stateful=true",
        "model.initial_state=learned",
        "data.shuffle=false",
    )
    assert "test/mse" in result.metrics() or any(k.startswith("test/") for k in result.metrics())
    checkpoint = torch.load(
        next((result.run_dir() / "checkpoints").glob("*.ckpt")), weights_only=False
    )
    start = checkpoint["state_dict"]["net.initial_h"]
    assert start.shape[1] == 1 and start.abs().sum() > 0  # trained away from zeros
    refused = cli("experiment=sine_rnn", "model.stateful=true", "data.shuffle=true", check=False)
    assert refused.returncode == 2 and "error: data.shuffle" in refused.output


def test_the_fused_loop_carries_the_state_as_lightnings_own(make_cfg):
    """Micro-batches run in the batches' order, so the fused loop hands each batch the same
    carried state as Lightning's loop; a stateless run of the same recipe learns otherwise."""
    from test_captured import train

    recipe = ("experiment=sine_rnn", "trainer.max_epochs=2", "logger=none", "callbacks=none")
    stateful = (*recipe, "model.stateful=true")
    fused = train(make_cfg(*stateful, "task.loop=fused", "task.micro_batches=4"))
    lightning = train(make_cfg(*stateful, "task.loop=lightning"))
    stateless = train(make_cfg(*recipe, "task.loop=fused", "task.micro_batches=4"))
    assert fused["global_step"] == lightning["global_step"]
    for key in ("test/mse", "val/loss"):
        assert fused[key] == pytest.approx(lightning[key], rel=1e-5), key
    assert fused["test/mse"] != pytest.approx(stateless["test/mse"], rel=1e-3)


def test_a_traced_or_exported_stateful_network_is_one_call_from_its_initial_state(tmp_path):
    """TensorBoard's graph and nnlab-export trace the network: from zeros, carrying nothing."""
    stateful, plain = pair("gru")
    x = torch.randn(3, 4, 3)
    traced = torch.jit.trace(stateful, (x,), check_trace=True)  # a second trace agrees
    stateful.reset_states()  # (the check also ran the module itself once)
    with torch.no_grad():
        assert torch.allclose(traced(x), plain(x), atol=1e-6)
        assert torch.allclose(traced(x), plain(x), atol=1e-6)  # and carries nothing either
    assert stateful.carried == {}


def test_a_run_continued_mid_epoch_carries_on_as_the_one_never_stopped(cli, tmp_path):
    """A periodic checkpoint 20 batches into epoch 2 holds the carried state: training continued
    from it ends with the uninterrupted run's numbers, bit for bit; without it (the state
    dropped from the file) the next batch starts from zeros and the numbers differ."""
    recipe = (
        "experiment=sine_rnn", "model.stateful=true", "trainer.max_epochs=2",
        "trainer.deterministic=true", "checkpoint.every_n_train_steps=7", "logger=none",
        "callbacks=none", "task.loop=lightning",
    )  # fmt: skip
    cli(*recipe, f"hydra.run.dir={tmp_path / 'whole'}")
    reference = json.loads((tmp_path / "whole" / "metrics.json").read_text())
    middle = torch.load(tmp_path / "whole/checkpoints/periodic/step000042.ckpt", weights_only=False)
    assert middle["loops"]["fit_loop"]["epoch_loop.batch_progress"]["current"]["completed"] == 19
    assert set(middle["carried_states"]) == {""}
    torch.save(middle, tmp_path / "with_state.ckpt")
    del middle["carried_states"]
    torch.save(middle, tmp_path / "without_state.ckpt")
    results = {}
    for name in ("with_state", "without_state"):
        run = tmp_path / f"from_{name}"
        cli(*recipe, f"hydra.run.dir={run}", f"ckpt_path={tmp_path / name}.ckpt")
        results[name] = json.loads((run / "metrics.json").read_text())
    for key in ("test/mse", "val/loss", "global_step"):
        assert results["with_state"][key] == reference[key], key
    assert results["without_state"]["test/mse"] != reference["test/mse"]


# -- every sequence network takes it: the text RNN, a layer list's and a graph node's layers ------
def text_rnn(**kwargs):
    from nnlab.models.text import RecurrentTextClassifier

    return RecurrentTextClassifier(
        9, 2, embedding_dim=3, hidden_size=4, bidirectional=False, **kwargs
    )


def layer_list(**kwargs):
    from nnlab.models.sequential import Sequential

    return Sequential([{"gru": {"units": 4, **kwargs}}, "dense"], input_shape=[6, 3], output_size=2)


def graph_node(**kwargs):
    from nnlab.models.graph import Graph

    layers = {
        "read": {"inputs": "x", "lstm": {"units": 4, **kwargs}},
        "out": {"inputs": "read", "dense": None},
    }
    return Graph({"x": [6, 3]}, layers, "out", output_size=2)


FAMILIES = {  # a network, and a batch of 3 sequences of `steps` for it
    "text_rnn": (text_rnn, lambda steps: torch.randint(1, 9, (3, steps))),
    "sequential": (layer_list, lambda steps: torch.randn(3, steps, 3)),
    "graph": (graph_node, lambda steps: torch.randn(3, steps, 3)),
}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_every_sequence_network_carries_its_state_and_learns_its_start(family):
    """The same contract as model=recurrent's: batch 2 continues batch 1 row by row (the
    stateless twin on the two joined in time), reset_states starts afresh, the carried state is
    found and refused by the engines as model=recurrent's is; a learned start is a parameter that
    the output reads and the gradient reaches."""
    build, batch = FAMILIES[family]
    torch.manual_seed(0)
    stateful = build(stateful=True).eval()
    plain = build().eval()
    plain.load_state_dict(stateful.state_dict())
    first, second = batch(6), batch(6)
    with torch.no_grad():
        assert torch.allclose(stateful(first), plain(first), atol=1e-6)
        continued = stateful(second)
        assert torch.allclose(continued, plain(torch.cat([first, second], 1)), atol=1e-5)
        assert not torch.allclose(continued, plain(second), atol=1e-3)
        (module,) = [m for m in stateful.modules() if getattr(m, "stateful", False)]
        module.reset_states()
        assert torch.allclose(stateful(second), plain(second), atol=1e-6)
    task = RegressionTask(net={"_target_": "torch.nn.Identity"})
    task.net = stateful
    assert task.stateful_modules() == [module]
    assert "is stateful" in why_not("captured", task=task)
    stateful.train()
    stateful(first)
    checkpoint: dict = {}
    task.on_save_checkpoint(checkpoint)  # a mid-epoch checkpoint holds the layer's state
    (name,) = checkpoint["carried_states"]
    assert dict(stateful.named_modules())[name] is module
    task.on_train_epoch_start()
    assert True not in module.carried  # training's state reset where an epoch starts
    task.on_load_checkpoint(checkpoint)
    assert module.carried[True] is checkpoint["carried_states"][name]

    learned = build(initial_state="learned")
    (start,) = [p for n, p in learned.named_parameters() if n.endswith("initial_h")]
    x = batch(5)
    before = learned(x).detach()
    with torch.no_grad():
        start.normal_()
    assert not torch.allclose(learned(x), before)  # the start state is read
    learned(x).pow(2).sum().backward()
    assert start.grad.abs().sum() > 0
    assert "learned initial state" in stackable(learned)


@pytest.mark.parametrize(
    ("net", "key"),
    [
        ({"_target_": "nnlab.models.text.RecurrentTextClassifier", "num_words": 9, "stateful": "yes"},
         "model.stateful"),
        ({"_target_": "nnlab.models.text.RecurrentTextClassifier", "num_words": 9,
          "initial_state": "random"}, "model.initial_state"),
        ({"_target_": "nnlab.models.sequential.Sequential", "input_shape": [6, 3],
          "layers": [{"lstm": {"units": 4, "initial_state": "random"}}]},
         "model.layers[0].initial_state"),
        ({"_target_": "nnlab.models.sequential.Sequential", "input_shape": [6, 3],
          "layers": [{"lstm": {"units": 4, "return_state": True}}]},
         "model.layers[0].return_state"),
        ({"_target_": "nnlab.models.graph.Graph", "inputs": {"x": [6, 3]}, "outputs": "out",
          "layers": {"out": {"inputs": "x", "gru": {"units": 4, "stateful": 3}}}},
         "model.layers.out.gru.stateful"),
    ],
)  # fmt: skip
def test_the_schema_names_a_bad_state_key_as_typed(net, key):
    with pytest.raises(ConfigError) as refused:
        check_node(net, "model")
    assert refused.value.key == key, str(refused.value)


def test_a_stateful_text_rnn_trains_on_imdb_in_order(tmp_path, monkeypatch, capfd):
    from conftest import train_in_process
    from test_imdb import write_tree

    write_tree(tmp_path / "data")
    monkeypatch.setenv("NNLAB_DATA_DIR", str(tmp_path / "data"))
    tiny = ["experiment=imdb_lstm", "debug=limit", "trainer.max_epochs=1", "data.num_words=40",
            "data.max_len=24", "data.val_size=0.25", "data.batch_size=8", "logger=none",
            "model.stateful=true", "model.initial_state=learned"]  # fmt: skip
    code, output = train_in_process([*tiny, "data.shuffle=false"], tmp_path, monkeypatch, capfd)
    assert code == 0, output[-3000:]
    code, output = train_in_process([*tiny, "data.shuffle=true"], tmp_path, monkeypatch, capfd)
    assert code == 2 and "error: data.shuffle: true, but model.stateful" in output, output[-3000:]
