"""Initial weights from a file (Keras' `weights=`): `model.weights=PATH`, a checkpoint or a
state-dict `.pt` of the same network, loaded before training; a file that does not fit is one
error line naming the file and the first parameter that differs."""

from __future__ import annotations

import json

import pytest
import torch

from nnlab.checkpoint_io import load_initial_weights
from nnlab.errors import ConfigError
from nnlab.models.recurrent import RecurrentNet
from nnlab.schema import check_node


def net(seed: int, **kwargs) -> RecurrentNet:
    torch.manual_seed(seed)
    return RecurrentNet(2, 3, cell="lstm", hidden_size=kwargs.pop("hidden_size", 5), **kwargs)


def same(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    pairs = zip(a.state_dict().values(), b.state_dict().values(), strict=True)
    return all(torch.equal(x, y) for x, y in pairs)


@pytest.mark.parametrize("form", ["state_dict", "checkpoint", "module"])
def test_weights_load_from_a_state_dict_a_checkpoint_or_a_module(tmp_path, form):
    source, target = net(0), net(1)
    assert not same(source, target)
    saved = {
        "state_dict": source.state_dict(),
        "checkpoint": {"state_dict": {f"net.{k}": v for k, v in source.state_dict().items()},
                       "epoch": 3},
        "module": source,
    }[form]  # fmt: skip
    torch.save(saved, tmp_path / "w.pt")
    load_initial_weights(target, tmp_path / "w.pt")
    assert same(source, target)


def test_a_file_that_does_not_fit_names_the_file_and_the_first_parameter(tmp_path):
    target = net(1)
    before = {k: v.clone() for k, v in target.state_dict().items()}
    torch.save(net(0, hidden_size=7).state_dict(), tmp_path / "wide.pt")
    with pytest.raises(ConfigError) as error:
        load_initial_weights(target, tmp_path / "wide.pt")
    message = str(error.value)
    assert message.startswith("model.weights: ") and str(tmp_path / "wide.pt") in message
    assert "rnn.weight_ih_l0: (28, 2) in the file, (20, 2) here" in message
    assert all(torch.equal(before[k], v) for k, v in target.state_dict().items())  # untouched
    torch.save(net(0, initial_state="learned").state_dict(), tmp_path / "more.pt")
    with pytest.raises(ConfigError, match="initial_h is in the file but not in this network"):
        load_initial_weights(target, tmp_path / "more.pt")
    with pytest.raises(ConfigError, match="initial_h is not in the file"):
        load_initial_weights(net(0, initial_state="learned"), tmp_path / "wide.pt")
    (tmp_path / "junk.pt").write_text("not torch")
    with pytest.raises(ConfigError, match="junk.pt cannot be read as torch weights"):
        load_initial_weights(target, tmp_path / "junk.pt")
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(ConfigError, match="holds no state dict"):
        load_initial_weights(target, tmp_path / "list.pt")
    with pytest.raises(ConfigError, match="missing.pt not found"):
        load_initial_weights(target, tmp_path / "missing.pt")


def test_every_network_takes_the_key_and_the_schema_checks_it():
    node = {"_target_": "nnlab.models.mlp.MLP", "input_size": 4, "output_size": 1}
    check_node({**node, "weights": "start.pt"}, "model")
    check_node({**node, "weights": None}, "model")
    with pytest.raises(ConfigError, match="model.weights"):
        check_node({**node, "weights": 3}, "model")


def test_a_run_starts_from_another_runs_weights(cli, tmp_path):
    first = cli("experiment=sine_mlp", "logger=none", "trainer.max_epochs=2", "test_on=last")
    first_dir = first.run_dir()
    metrics = {k: v for k, v in first.metrics().items() if k.startswith("test/")}
    checkpoint = first_dir / "checkpoints" / "last.ckpt"
    # train=false: the loaded weights are evaluated as they are: the first run's final numbers
    second = cli("experiment=sine_mlp", "logger=none", f"model.weights={checkpoint}", "train=false")
    (evaluated,) = [r for r in second.run_dirs() if r != first_dir]
    loaded = json.loads((evaluated / "metrics.json").read_text())
    assert metrics and all(loaded[k] == pytest.approx(v, rel=1e-6) for k, v in metrics.items())
    # a state-dict file, trained on: the run starts there and trains on
    state = torch.load(checkpoint, weights_only=False)["state_dict"]
    torch.save({k[4:]: v for k, v in state.items()}, tmp_path / "start.pt")
    cli("experiment=sine_mlp", "logger=none", "model.weights=start.pt", "trainer.max_epochs=1")
    wrong = cli(
        "experiment=sine_mlp", "model.hidden_sizes=[7]", f"model.weights={checkpoint}", check=False
    )
    lines = [line for line in wrong.stderr.splitlines() if line.startswith("error:")]
    assert wrong.returncode == 2 and len(lines) == 1, wrong.output[-2000:]
    assert str(checkpoint) in lines[0] and "layers.1.weight: (10, 4) in the file" in lines[0]
