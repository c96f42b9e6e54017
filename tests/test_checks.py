"""Everything a command is given is checked against one declared schema before anything runs
(issue 26): an Optuna search space through its ends, the launchers' and the sweeper's settings,
each command's own arguments, a re-run saved config; and a refused or checked command leaves no
folder behind. The cases are generated from the declarations (signatures, config dataclasses),
not listed by hand."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import compose_config, run_cli, train_in_process
from inprocess import call
from test_schema import WRONG_TYPES, out_of_range, refused

import nnlab.evaluate
import nnlab.export
import nnlab.predict
import nnlab.report
from nnlab.errors import ConfigError, UserError
from nnlab.schema import check_hydra_settings, declared, hydra_settings

BIN = Path(sys.executable).parent


_train = train_in_process


def _nothing_written(tmp_path: Path) -> None:
    assert not (tmp_path / "out").exists(), sorted((tmp_path / "out").rglob("*"))


# -- 1. an Optuna search space checked against the schema, before any trial ----------------------
SEARCH = ["experiment=sine_mlp", "hparams_search=sine_mlp_optuna"]


@pytest.mark.parametrize(
    "entry,key,point,bound",
    [
        ("task.optimizer.lr=interval(-1, 0.1)", "task.optimizer.lr", "the low end -1.0",
         "expected a number > 0"),
        ("task.optimizer.lr=tag(log, interval(1e-4, 3e-2))", None, None, None),  # valid
        ("data.batch_size=range(0, 16, step=4)", "data.batch_size", "the low end 0",
         "expected a number >= 1"),
        ("data.batch_size=choice(16, 32, -8)", "data.batch_size", "the choice -8",
         "expected a number >= 1"),
        ("data.standardize=choice(true, maybe)", "data.standardize", "the choice maybe",
         "expected true or false"),
        ("model.dropout=interval(0.0, 1.0)", "model.dropout", "the high end 1.0",
         "expected a number < 1"),
    ],
)  # fmt: skip
def test_a_search_space_leaving_a_bound_runs_nothing(
    entry, key, point, bound, tmp_path, monkeypatch, capfd
):
    argv = [*SEARCH, entry, "check=true"]
    code, output = _train(argv, tmp_path, monkeypatch, capfd)
    if key is None:
        assert code == 0 and "check: every config is valid" in output, output[-2000:]
        # lr's two ends, hidden_sizes' four choices, batch_size's three, window's two ends
        assert "its space checked at 11 point(s)" in output
        _nothing_written(tmp_path)  # check=true: the study's folder is not made either
        return
    assert code == 2, output[-2000:]
    last = output.splitlines()[-1]
    assert last.startswith(f"error: {key}: got "), last
    assert bound in last and f"{point} of the search-space entry {entry}" in last, last
    assert "nothing was run" in last and "Traceback" not in output
    _nothing_written(tmp_path)


def test_a_model_choice_outside_its_variants_names_the_entry(tmp_path, monkeypatch, capfd):
    argv = ["experiment=sine_lstm", "hparams_search=sine_lstm_optuna", "model.cell=choice(lstm, banana)"]  # fmt: skip
    code, output = _train(argv, tmp_path, monkeypatch, capfd)
    last = output.splitlines()[-1]
    assert code == 2 and last.startswith("error: model.cell: got 'banana'; expected one of"), last
    assert "the choice banana of the search-space entry model.cell=choice(lstm, banana)" in last
    _nothing_written(tmp_path)


def test_the_search_space_is_checked_through_the_search_probes():
    """Every end of every entry is probed with the others at their first point, in the order the
    sweeper gives a trial (params, then fixed arguments)."""
    from omegaconf import OmegaConf

    from nnlab.schema import search_probes

    config = OmegaConf.create(
        {
            "hydra": {
                "sweeper": {"params": {"a": "interval(1, 2)", "b": "choice(x, y, z)"}},
                "overrides": {"task": ["c=3", "a=interval(0.5, 4)"]},
            }
        }
    )
    probes = search_probes(config)
    assert [o for o, _ in probes] == [
        ["b=x", "a=0.5", "c=3"], ["b=y", "a=0.5", "c=3"], ["b=z", "a=0.5", "c=3"],
        ["b=x", "a=0.5", "c=3"], ["b=x", "a=4.0", "c=3"],  # the command line's a replaced the params'
    ]  # fmt: skip
    assert probes[4][1]["a"] == "the high end 4.0 of the search-space entry a=interval(0.5, 4)"
    assert probes[1][1]["b"] == "the choice y of the search-space entry b=choice(x, y, z)"


# -- 2. the launchers' and the sweeper's settings, declared once --------------------------------
LAUNCHERS = ["joblib", "local", "slurm", "packed"]


def _hydra_cases(settings: dict[str, Any]) -> list[tuple[str, str, tuple, Any]]:
    """(kind, dotted key, path, value) for every declared key of each node under `settings`."""
    generated = []
    for name, node in settings.items():
        spec = declared(node["_target_"])
        assert not spec.open, spec.owner  # every key is declared
        generated.append(("unknown key", f"hydra.{name}.zz_unknown", (name, "zz_unknown"), 1))
        for key, (annotation, _) in spec.fields.items():
            if isinstance(node.get(key), dict) and "_target_" in node[key]:
                continue
            wrong = next((v for v in WRONG_TYPES if refused(annotation, v)), None)
            if wrong is not None:
                generated.append(("wrong type", f"hydra.{name}.{key}", (name, key), wrong))
            bad = out_of_range(annotation)
            if bad is not None and refused(annotation, bad):
                generated.append(("out of range", f"hydra.{name}.{key}", (name, key), bad))
    return generated


@pytest.mark.parametrize("launcher", LAUNCHERS)
def test_every_launcher_and_sweeper_key_refuses_bad_values(launcher, tmp_path):
    cfg = compose_config(
        ["experiment=sine_mlp", f"hydra/launcher={launcher}", "hydra/sweeper=nnlab"],
        tmp_path / "run",
    )
    settings = hydra_settings(cfg)
    check_hydra_settings(settings)  # as composed: valid
    generated = _hydra_cases(settings)
    kinds = {kind for kind, *_ in generated}
    assert kinds == {"unknown key", "wrong type", "out of range"}
    keys = {key for _, key, *_ in generated}
    assert {
        "hydra.sweeper.n_trials",
        "hydra.sweeper.pruner",
        "hydra.sweeper.max_failure_rate",
    } <= keys
    assert len([k for k in keys if k.startswith("hydra.launcher.")]) >= 3
    for kind, key, path, value in generated:
        bad = copy.deepcopy(settings)
        bad[path[0]][path[1]] = value
        with pytest.raises(ConfigError) as err:
            check_hydra_settings(bad)
        assert str(err.value).startswith(f"{key}: "), (kind, str(err.value))


@pytest.mark.parametrize(
    "argv,message",
    [
        (["hydra/launcher=packed", "hydra.launcher.pack_size=0"],
         "error: hydra.launcher.pack_size: got 0; expected a number >= 1"),
        (["hydra/launcher=joblib", "+hydra.launcher.n_job=2"],
         "error: hydra.launcher.n_job: unknown key (value 2)"),
        (["hydra/launcher=slurm", "hydra.launcher.timeout_min=0"],
         "error: hydra.launcher.timeout_min: got 0; expected a number >= 1"),
        (["hydra/launcher=joblib", "hydra.launcher.prefer=fast"],
         "error: hydra.launcher.prefer: got 'fast'; expected one of 'processes' or 'threads'"),
        (["hparams_search=sine_mlp_optuna", "hydra.sweeper.n_jobs=0"],
         "error: hydra.sweeper.n_jobs: got 0; expected a number >= 1"),
        (["hparams_search=sine_mlp_optuna", "hydra.sweeper.sampler.n_startup_trials=x"],
         "error: hydra.sweeper.sampler.n_startup_trials: got 'x'; expected a whole number"),
        (["hydra/launcher=joblib", "hydra.launcher.n_jobs=x"],  # OmegaConf's typed node says it
         "error: Error merging override hydra.launcher.n_jobs=x: Value 'x' of type 'str' could not be converted to Integer"),
    ],
)  # fmt: skip
def test_the_command_refuses_launcher_and_sweeper_settings(
    argv, message, tmp_path, monkeypatch, capfd
):
    sweep = ["seed=1,2"] if "hparams_search" not in argv[0] else []
    code, output = _train(
        ["-m", "experiment=sine_mlp", *sweep, *argv], tmp_path, monkeypatch, capfd
    )
    assert code == 2, output[-2000:]
    assert output.splitlines()[-1].startswith(message), output[-2000:]
    _nothing_written(tmp_path)


# -- 2. each command's arguments, declared once (the function's annotations) --------------------
COMMANDS = {
    "eval": nnlab.evaluate.main,
    "predict": nnlab.predict.main,
    "export": nnlab.export.main,
    "report": nnlab.report.main,
}
WRONG_TEXT = ("zz-text", "1.5", "[1]")


def _command_cases(name: str) -> list[tuple[str, str, str]]:
    """(kind, key, argument) for every declared argument of a command."""
    main = COMMANDS[name]
    spec = declared(f"{main.__module__}.{main.__qualname__}")
    generated = [("unknown key", "zz_unknown", "zz_unknown=1")]
    for key, (annotation, _) in spec.fields.items():
        if key == "overrides":
            continue
        for text in WRONG_TEXT:  # refused as read (Hydra's grammar) and as typed
            import yaml

            if refused(annotation, yaml.safe_load(text)) and refused(annotation, text):
                generated.append(("wrong type", key, f"{key}={text}"))
                break
        bad = out_of_range(annotation)
        if bad is not None:
            generated.append(("out of range", key, f"{key}={bad}"))
    return generated


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_argument_of_every_command_refuses_bad_values(name):
    generated = _command_cases(name)
    assert {"unknown key", "wrong type"} <= {kind for kind, *_ in generated}
    for kind, key, argument in generated:
        with pytest.raises(UserError) as err:
            COMMANDS[name].call([argument])
        assert str(err.value).startswith(f"{key}: "), (kind, argument, str(err.value))
        if kind != "unknown key":
            assert isinstance(err.value, ConfigError), (argument, str(err.value))
    kinds = {kind for kind, *_ in generated}
    if name != "report":  # report's arguments have no bounds
        assert "out of range" in kinds


def test_an_argument_is_read_as_typed_where_a_string_is_wanted():
    from nnlab.cli import Typed, typed_arguments

    def fn(text: str | None, top_k: int | None, flag: bool) -> None:
        """a command's declaration"""

    fn.__module__, fn.__qualname__ = __name__, "_declared_fn"
    globals()["_declared_fn"] = fn
    declared.cache_clear()
    got = typed_arguments(fn, {"text": Typed("123"), "top_k": Typed("null"), "flag": True}, "x")
    assert got == {"text": "123", "top_k": None, "flag": True}
    assert typed_arguments(fn, {"text": Typed("'a b'"), "top_k": Typed("3"), "flag": Typed("false")}, "x") == {"text": "'a b'", "top_k": 3, "flag": False}  # fmt: skip
    with pytest.raises(ConfigError, match=r"^flag: got 'no'; expected true or false"):
        typed_arguments(fn, {"text": None, "top_k": None, "flag": Typed("no")}, "x")


@pytest.mark.parametrize(
    "command,argument,message",
    [
        ("nnlab-export", "atol=-1", "error: atol: got -1; expected a number >= 0"),
        ("nnlab-predict", "steps=-1", "error: steps: got -1; expected a number >= 0"),
        ("nnlab-eval", "split=train", "error: split: got 'train'; expected one of 'test' or 'val'"),
        ("nnlab-report", "tensorboard=no", "error: tensorboard: got 'no'; expected true or false"),
    ],
)
def test_the_installed_commands_refuse_their_arguments(command, argument, message, tmp_path):
    proc = subprocess.run(
        [str(BIN / command), "run=nowhere", argument] if command != "nnlab-report"
        else [str(BIN / command), "sweep=nowhere", argument],
        capture_output=True, text=True, cwd=tmp_path, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-1].startswith(message), proc.stderr[-2000:]
    assert list(tmp_path.iterdir()) == []


# -- 3. a saved config of an earlier run, run again with -cp <run>/.hydra -cn config -----------
@pytest.fixture(scope="module")
def lstm_run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("lstm")
    return run_cli(
        "experiment=sine_lstm", "debug=limit", "trainer.accelerator=cpu", "logger=none",
        "callbacks=none", outputs=root / "out", cwd=root,
    ).run_dir()  # fmt: skip


@pytest.mark.slow
def test_a_rerun_saved_config_gets_old_keys_upgraded_with_a_note(lstm_run, tmp_path):
    saved = lstm_run / ".hydra" / "config.yaml"
    text = saved.read_text()
    assert "  depth: null\n" in text
    old = tmp_path / "old"  # a run saved by an nnlab whose LSTM kept depth's old default
    import shutil

    shutil.copytree(lstm_run, old)
    (old / ".hydra" / "config.yaml").write_text(text.replace("  depth: null\n", "  depth: 3\n"))
    rerun = ["-cp", str(old / ".hydra"), "-cn", "config"]
    result = run_cli(*rerun, "check=true", outputs=tmp_path / "out", cwd=tmp_path, check=False)
    assert result.returncode == 0, result.output[-3000:]
    note = f"{old}'s saved config: model.depth=3 (an old default, unused by model.cell='lstm') read as null"  # fmt: skip
    assert note in result.output and "check: the config is valid" in result.output
    assert not (tmp_path / "out").exists()  # check=true trained nothing
    result = run_cli(*rerun, outputs=tmp_path / "out", cwd=tmp_path)  # trains, as the old run
    assert result.output.count(note) == 1 and result.metrics()["epochs"] >= 1
    # a value that is no old default is still the check's to refuse
    (old / ".hydra" / "config.yaml").write_text(text.replace("  depth: null\n", "  depth: 7\n"))
    result = run_cli(*rerun, outputs=tmp_path / "out2", cwd=tmp_path, check=False)
    assert result.returncode == 2
    assert (
        result.stderr.strip()
        .splitlines()[-1]
        .startswith("error: model.depth: 7 is not used by model.cell='lstm'")
    )
    assert not (tmp_path / "out2").exists()


# -- 4. a refused or checked command leaves no folder behind -----------------------------------
@pytest.mark.parametrize(
    "args,code",
    [
        (["model.depth=7"], 2),  # a refused key
        (["trainer.max_epochs=0"], 2),
        (["check=true"], 0),
        (["-m", "seed=1,2", "check=true"], 0),
        (["-m", "seed=1,2", "data.batch_size=0"], 2),
        (["experiment=sine_mlp", "hparams_search=sine_mlp_optuna", "check=true"], 0),
    ],
    ids=["refused-key", "refused-value", "check", "sweep-check", "refused-sweep", "search-check"],
)
def test_nothing_is_left_behind_in_a_scratch_directory(args, code, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "NNLAB_OUTPUT_DIR"}  # ./outputs
    proc = call("nnlab.train", args, env=env, cwd=tmp_path)
    assert proc.returncode == code, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert list(tmp_path.iterdir()) == [], sorted(tmp_path.rglob("*"))
