"""The declared schema (nnlab/schema.py): every preset passes it, and for every buildable node of
every preset an unknown key, a value of the wrong type and one out of range are each refused
with the node's dotted key. The cases are generated from the schema itself (the constructors'
annotations), not listed by hand, so a new key or class is covered when it is added."""

from __future__ import annotations

import copy
import os
import textwrap
import typing
from pathlib import Path
from typing import Annotated, Any, Literal, get_args, get_origin

import annotated_types
import pytest
import torch
from conftest import EXPERIMENTS, compose_config, train_in_process
from inprocess import call
from pydantic import TypeAdapter, ValidationError
from pydantic.fields import FieldInfo

from nnlab.config import build
from nnlab.errors import ConfigError
from nnlab.schema import (
    RunSettings,
    check,
    check_node,
    check_plain,
    declared,
    resolved,
    strict,
)
from nnlab.tasks.optimizers import build_optimizer

WRONG_TYPES = ({"zz": 1}, [["zz"]], "zz-text", 1.5, True, 7)


def _preset(experiment: str, tmp_path: Path) -> dict[str, Any]:
    return resolved(compose_config([f"experiment={experiment}"], tmp_path / "run"))


def target_nodes(value: Any, key: str = "") -> list[tuple[str, tuple]]:
    """(dotted key, path of keys/indices) of every node with a `_target_`."""
    found = []
    if isinstance(value, dict):
        if "_target_" in value:
            found.append((key, ()))
        for name, child in value.items():
            for sub, path in target_nodes(child, f"{key}.{name}" if key else str(name)):
                found.append((sub, (name, *path)))
    elif isinstance(value, list):
        for i, child in enumerate(value):
            for sub, path in target_nodes(child, f"{key}[{i}]"):
                found.append((sub, (i, *path)))
    return found


def node_at(plain: dict, path: tuple) -> dict:
    for part in path:
        plain = plain[part]
    return plain


def constraints(annotation: Any) -> list[Any]:
    """The bounds (annotated_types Ge/Gt/Le/Lt) and Literal choices inside an annotation."""
    found: list[Any] = []
    origin = get_origin(annotation)
    if origin is Annotated:
        base, *meta = get_args(annotation)
        for m in meta:
            found += m.metadata if isinstance(m, FieldInfo) else [m]
        found += constraints(base)
    elif origin is Literal:
        found.append(annotation)
    elif origin is not None:
        for arg in get_args(annotation):
            found += constraints(arg)
    return found


def out_of_range(annotation: Any) -> Any:
    """A value of the right type but outside the annotation's bounds or choices, or None."""
    for c in constraints(annotation):
        if get_origin(c) is Literal:
            return "zz-not-a-choice"
        if isinstance(c, annotated_types.Ge):
            return c.ge - 1
        if isinstance(c, annotated_types.Gt):
            return c.gt
        if isinstance(c, annotated_types.Le):
            return c.le + 1
        if isinstance(c, annotated_types.Lt):
            return c.lt
    return None


def refused(annotation: Any, value: Any) -> bool:
    try:
        TypeAdapter(strict(annotation)).validate_python(value)
    except ValidationError:
        return True
    return False


def cases(plain: dict) -> list[tuple[str, str, tuple, Any]]:
    """(kind, dotted key expected in the message, path to set, value) for every node."""
    generated = []
    fields = {n: f.annotation for n, f in RunSettings.model_fields.items()}
    for name in ("seed", "monitor_mode", "print_config", "checkpoint.save_top_k"):
        parts = tuple(name.split("."))
        annotation = (
            fields[name] if len(parts) == 1 else fields[parts[0]].model_fields[parts[1]].annotation
        )
        wrong = next(v for v in WRONG_TYPES if refused(annotation, v))
        generated.append(("wrong type", name, parts, wrong))
        if (bad := out_of_range(annotation)) is not None:
            generated.append(("out of range", name, parts, bad))
    generated.append(("unknown key", "zz_unknown", ("zz_unknown",), 1))
    for key, path in target_nodes({k: v for k, v in plain.items() if k != "paths"}):
        node = node_at(plain, path)
        spec = declared(node["_target_"])
        if not spec.open:
            generated.append(("unknown key", f"{key}.zz_unknown", (*path, "zz_unknown"), 1))
        for name, (annotation, _) in spec.fields.items():
            if name not in node or isinstance(node[name], dict) and "_target_" in node[name]:
                continue
            wrong = next((v for v in WRONG_TYPES if refused(annotation, v)), None)
            if wrong is not None:
                generated.append(("wrong type", f"{key}.{name}", (*path, name), wrong))
            bad = out_of_range(annotation)
            if bad is not None and refused(annotation, bad):
                generated.append(("out of range", f"{key}.{name}", (*path, name), bad))
    return generated


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_preset_passes_and_every_node_refuses_bad_values(experiment, tmp_path):
    plain = _preset(experiment, tmp_path)
    check_plain(plain)  # the preset itself is valid
    generated = cases(plain)
    kinds = {kind for kind, *_ in generated}
    assert kinds == {"unknown key", "wrong type", "out of range"}
    nodes = {key.rsplit(".", 1)[0] for kind, key, *_ in generated if kind == "unknown key"}
    assert {"data", "model", "task", "task.optimizer", "trainer"} <= nodes
    for kind, key, path, value in generated:
        bad = copy.deepcopy(plain)
        node_at(bad, path[:-1])[path[-1]] = value
        with pytest.raises(ConfigError) as err:
            check_plain(bad)
        message = str(err.value)
        # the key itself, or the place inside its value at fault (data.known.zz)
        assert message.startswith((f"{key}: ", f"{key}.", f"{key}[")), (kind, key, message)
        if message.startswith(f"{key}: ") and kind != "unknown key":
            assert repr(value) in message, (kind, message)


def test_many_cases_are_generated(tmp_path):
    plain = _preset("mnist_lstm", tmp_path)
    assert len(cases(plain)) > 60


LSTM = {"_target_": "nnlab.models.recurrent.RecurrentNet", "input_size": 1, "output_size": 1}


@pytest.mark.parametrize(
    "key,value,cell,variants",
    [
        ("depth", 7, "lstm", "deep_rnn, simple_deep_rnn"),
        ("forget_bias", 0.5, "gru", "lstm, keras_lstm"),
        (
            "inner_activation",
            "hard_sigmoid",
            "rnn",
            "lstm, gru, jzs1, jzs2, jzs3, simple_deep_rnn, keras_lstm, keras_gru",
        ),
    ],
)
def test_a_key_of_other_variants_is_refused_naming_them(key, value, cell, variants):
    with pytest.raises(ConfigError) as err:
        check_node({**LSTM, "cell": cell, key: value}, "model")
    assert str(err.value).startswith(f"model.{key}: {value!r} is not used by model.cell={cell!r}")
    assert f"applies to cell {variants} only" in str(err.value)
    check_node({**LSTM, "cell": cell, key: None}, "model")  # null: not set, accepted


def test_yaml_booleans_only(tmp_path):
    for value in ("no", "yes", "maybe", "true", 0, 1):
        cfg = compose_config([f"data.standardize={value}"], tmp_path / "run")
        if value == "true":  # Hydra's grammar reads it as the boolean
            check(cfg)
            continue
        with pytest.raises(ConfigError, match=r"^data.standardize: got .*; expected true or false"):
            check(cfg)


def test_a_layer_list_is_checked_entry_by_entry(tmp_path):
    def refusal(layers: str) -> str:
        cfg = compose_config(
            ["experiment=imdb_sequential_mlp", f"model.layers={layers}"], tmp_path / "run"
        )
        with pytest.raises(ConfigError) as err:
            check(cfg)
        return str(err.value)

    assert refusal("[flatten,{dense:16},{dense:0}]").startswith("model.layers[2].units: got 0")
    assert "did you mean units" in refusal("[flatten,{dense:{unts:3}}]")
    assert "did you mean dense?" in refusal("[flatten,{dens:16}]")
    assert "depth applies to deep_rnn, simple_deep_rnn layers only" in refusal(
        "[flatten,{lstm:{units:3,depth:2}}]"
    )
    assert refusal("[{time_distributed:{dense:0}}]").startswith(
        "model.layers[0].time_distributed[0].units"
    )


def test_a_users_own_class_is_checked_from_its_annotations(tmp_path, monkeypatch):
    (tmp_path / "my_callbacks.py").write_text(
        textwrap.dedent(
            """
            from typing import Annotated, Literal
            from pydantic import Field
            import lightning as L

            class Watch(L.Callback):
                def __init__(self, every: Annotated[int, Field(ge=1)] = 1,
                             mode: Literal["fast", "slow"] = "fast", loud: bool = False):
                    self.every, self.mode, self.loud = every, mode, loud
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    base = ["+callbacks.watch._target_=my_callbacks.Watch"]
    check(compose_config([*base, "+callbacks.watch.every=3"], tmp_path / "run"))
    for extra, message in [
        ("+callbacks.watch.every=0", "callbacks.watch.every: got 0; expected a number >= 1"),
        ("+callbacks.watch.mode=medium", "callbacks.watch.mode: got 'medium'; expected one of"),
        ("+callbacks.watch.loud=yes", "callbacks.watch.loud: got 'yes'; expected true or false"),
        ("+callbacks.watch.evry=2", "callbacks.watch.evry: unknown key (value 2)"),
    ]:
        with pytest.raises(ConfigError) as err:
            check(compose_config([*base, extra], tmp_path / "run"))
        assert str(err.value).startswith(message), str(err.value)
        assert "did you mean every?" in str(err.value) or "evry" not in extra


def test_an_unimportable_target_names_its_key_and_close_names(tmp_path):
    cfg = compose_config(["task.optimizer._target_=torch.optim.Adamm"], tmp_path / "run")
    with pytest.raises(
        ConfigError, match=r"^task.optimizer._target_: .*did you mean torch.optim.Adam"
    ):
        check(cfg)


def test_third_party_constructor_errors_name_the_node():
    params = [torch.nn.Parameter(torch.zeros(2))]
    adam = {"_target_": "torch.optim.Adam", "_partial_": True, "betas": [2.0, 0.5]}
    with pytest.raises(
        ConfigError, match=r"^task.optimizer: torch.optim.Adam refused its settings: Invalid beta"
    ):
        build_optimizer(adam, params, torch.device("cpu"))
    linear = {"_target_": "torch.nn.Linear", "in_features": -1, "out_features": 2}
    with pytest.raises(ConfigError, match=r"^model: torch.nn.Linear refused its settings"):
        build(linear, "model")


# The issue's own examples, through the real command (a process each): exit 2, one error line
# naming the key, nothing trained.
@pytest.mark.parametrize(
    "args,message",
    [
        (["model.nonlinearity=banana"], "error: model.nonlinearity: got 'banana'; expected one of"),
        (["model.depth=7"], "error: model.depth: 7 is not used by model.cell='lstm'"),
        (["+task.optimizer.momentum=0.9"], "error: task.optimizer.momentum: unknown key"),
        (["seed=5000000000"], "error: seed: got 5000000000; expected a number <= 4294967295"),
        (["model=sequential", "model.layers=[dense]"], "error: model.cell: unknown key"),
        (["data.in_memory=yes"], "error: data.in_memory: got 'yes'"),
    ],
)
def test_the_command_refuses_before_anything_runs(args, message, tmp_path):
    env = {**os.environ, "NNLAB_OUTPUT_DIR": str(tmp_path / "out")}
    proc = call("nnlab.train", ["trainer.max_epochs=1", *args], env=env, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines[-1].startswith(message), proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert not list((tmp_path / "out").glob("runs/*/*/metrics.json"))


def test_typing_strictness_keeps_tuples_and_paths():
    assert not refused(tuple[float, float, float], [0.7, 0.15, 0.15])
    assert not refused(float, 3)  # an int where a float goes
    assert refused(int, 3.0) and refused(bool, "no") and refused(str, 3)
    assert not refused(Path, "a.csv")
    assert typing.get_origin(strict(list[int])) is list


# -- whole commands checked before anything runs (nnlab.schema.UpFrontCheck) -------------------
_train = train_in_process


def _written(tmp_path: Path) -> list[Path]:
    return [p for p in (tmp_path / "out").rglob("*") if p.is_file()]


@pytest.mark.parametrize(
    "launcher", ["hydra/launcher=basic", "hydra/launcher=joblib", "hydra/launcher=packed",
                 "hydra/launcher=local"],
)  # fmt: skip
def test_a_sweep_with_one_invalid_trial_runs_nothing(launcher, tmp_path, monkeypatch, capfd):
    argv = ["-m", launcher, "experiment=sine_mlp", "data.batch_size=16,0", "seed=1,2"]
    code, output = _train(argv, tmp_path, monkeypatch, capfd)
    assert code == 2, output[-3000:]
    last = output.strip().splitlines()[-1]
    assert last.startswith("error: data.batch_size: got 0; expected a number >= 1"), last
    assert (
        "(in trial #2: trainer.accelerator=cpu experiment=sine_mlp data.batch_size=0 seed=1;"
        in last
    )
    assert _written(tmp_path) == []  # no sweep directory, no trial, no job queued


def test_check_prints_the_plan_and_trains_nothing(tmp_path, monkeypatch, capfd):
    argv = ["-m", "experiment=sine_mlp", "seed=1,2", "data.batch_size=16,32", "check=true"]
    code, output = _train(argv, tmp_path, monkeypatch, capfd)
    assert code == 0, output[-3000:]
    assert "the sweep would run 4 trial(s)" in output
    plan = [line for line in output.splitlines() if line.startswith("  #")]
    assert len(plan) == 4 and "seed=2 data.batch_size=32" in plan[3]
    assert all("MLP on SineDataModule as RegressionTask" in line for line in plan)
    assert len({line.split(" -> ")[1].rsplit("/", 2)[0] for line in plan}) == 1  # one sweep dir
    code, output = _train(["experiment=sine_lstm", "check=true"], tmp_path, monkeypatch, capfd)
    assert code == 0 and "would train RecurrentNet on SineDataModule" in output
    assert _written(tmp_path) == []


def test_a_refused_run_creates_no_directory(tmp_path, monkeypatch, capfd):
    code, output = _train(["model.depth=7"], tmp_path, monkeypatch, capfd)
    assert code == 2 and "error: model.depth: 7 is not used" in output
    assert _written(tmp_path) == []


def test_a_saved_config_with_old_defaults_still_passes(tmp_path, caplog):
    from omegaconf import OmegaConf

    from nnlab.schema import upgrade_saved

    cfg = compose_config(["experiment=sine_lstm"], tmp_path / "run")
    old = {"nonlinearity": "tanh", "inner_activation": "sigmoid", "depth": 3, "forget_bias": 1.0}
    for key, value in old.items():
        cfg.model[key] = value  # as runs before the keys became null saved them
    with pytest.raises(ConfigError, match="model.depth: 3 is not used"):
        check(cfg)
    with caplog.at_level("INFO", logger="nnlab.schema"):
        upgrade_saved(cfg)
    check(cfg)
    assert cfg.model.depth is None and cfg.model.forget_bias == 1.0  # lstm uses forget_bias
    assert "model.depth=3 (an old default, unused by model.cell='lstm') read as null" in caplog.text
    cfg.model.depth = 7  # not an old default: still the check's to refuse
    with pytest.raises(ConfigError, match="model.depth: 7"):
        check(upgrade_saved(OmegaConf.create(OmegaConf.to_container(cfg))))
