"""The run manager (nnlab/runs.py): the lock, the status as things stand, the checkpoint that a
resume continues from, and last.ckpt as the newest state."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from nnlab.report import load_trial
from nnlab.runs import RESOLVED_CONFIG, Run, RunInUse, write_json


def make_run(root):
    root.mkdir(parents=True, exist_ok=True)
    (root / RESOLVED_CONFIG).write_text("name: x\n")
    return Run(root)


def checkpoint(path, step):
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": {}, "global_step": step}, path)
    return path


def test_a_second_holder_is_refused_with_the_holder_named(tmp_path):
    run = make_run(tmp_path / "run")
    run.lock()
    code = (
        "import sys; from nnlab.runs import Run, RunInUse\n"
        "try:\n    Run.check_free(sys.argv[1])\nexcept RunInUse as e:\n    print(e); sys.exit(3)\n"
    )
    other = subprocess.run([sys.executable, "-c", code, str(run.root)], capture_output=True, text=True)  # fmt: skip
    assert other.returncode == 3, other.stderr
    assert str(run.root) in other.stdout and f"process {os.getpid()}" in other.stdout
    run.unlock()
    Run.check_free(run.root)  # free again
    with pytest.raises(RunInUse):  # a lock is per open file: a second Run object is refused too
        run.lock()
        Run(run.root).lock()
    run.unlock()


def test_resume_takes_the_newest_usable_checkpoint_hpc_included(tmp_path):
    run = make_run(tmp_path / "run")
    last = checkpoint(run.checkpoints / "last.ckpt", 10)
    periodic = checkpoint(run.checkpoints / "periodic" / "step000020.ckpt", 20)
    assert run.resume_checkpoint() == periodic
    time.sleep(0.01)
    hpc = checkpoint(run.root / "hpc_ckpt_1.ckpt", 30)
    assert run.resume_checkpoint() == hpc
    time.sleep(0.01)
    hpc.write_bytes(b"truncated")  # damaged: the next newest one is used
    os.utime(hpc)
    assert run.resume_checkpoint() == periodic
    assert last.is_file() and run.has_checkpoint()


def test_the_state_as_things_stand(tmp_path):
    run = make_run(tmp_path / "run")
    assert run.state() == ("unknown", "no status.json (the run never started)")
    run.start(experiment="x")
    assert run.state() == ("running", "")
    status = json.loads(run.status_path.read_text())
    write_json(run.status_path, {**status, "pid": 2**22 + 12345})  # a process that is gone
    state, why = run.state()
    assert state == "failed" and "ended without finishing" in why
    run.finish({"test/mse": 0.1})
    assert run.state() == ("completed", "")
    run.status_path.write_text("{ not json")
    assert run.state()[0] == "damaged"


def test_a_resumed_run_with_a_damaged_status_gets_a_new_one(tmp_path):
    run = make_run(tmp_path / "run")
    run.status_path.write_text("{ not json")
    run.start(resumed=True)
    assert json.loads(run.status_path.read_text())["status"] == "running"


def test_the_report_lists_a_damaged_trial_instead_of_failing(tmp_path):
    trial = make_run(tmp_path / "0").root
    (trial / ".hydra").mkdir()
    (trial / ".hydra" / "overrides.yaml").write_text("- seed=1\n")
    (trial / "metrics.json").write_text("{ truncated")
    found = load_trial(trial)
    assert found.status == "damaged" and "unreadable" in found.error


def test_last_checkpoint_is_the_newest_state_even_without_improvement(cli):
    """monitor_mode=max on val/mse: the 'best' stays at an early epoch, but last.ckpt is
    written at every epoch end."""
    result = cli("experiment=sine_mlp", "trainer.max_epochs=4", "monitor_mode=max", "logger=none")
    run = result.run_dir()
    last = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)
    assert last["epoch"] == 3  # the fourth epoch (counted from 0) finished
    best = result.metrics()["best_epoch"]
    assert best < 3
    assert len(list((run / "checkpoints").glob("epoch*.ckpt"))) == 1


def test_the_best_epoch_is_the_one_the_checkpoint_callback_kept_also_after_a_resume(make_cfg):
    """monitor_mode=max on val/mse keeps an early epoch; the epoch in metrics.json is the one
    inside the kept checkpoint, also for a run resumed after the best was chosen (the callback's
    state carries it) and for one whose callback state predates it (read from the checkpoint)."""
    from omegaconf import open_dict

    from nnlab.train import train

    def run_it(*extra):
        cfg = make_cfg("experiment=sine_mlp", "monitor_mode=max", "logger=none", *extra)
        with open_dict(cfg):
            del cfg["hydra"]
        run = Run(cfg.paths.output_dir)
        return run, train(cfg, run)

    run, first = run_it("trainer.max_epochs=2")
    kept = torch.load(first["best_checkpoint"], weights_only=False)
    assert first["best_epoch"] == kept["epoch"] and run.best_callback.best_epoch == kept["epoch"]
    last = str(run.checkpoints / "last.ckpt")
    resumed_run, resumed = run_it("trainer.max_epochs=3", f"ckpt_path={last}")
    assert resumed["best_checkpoint"] == first["best_checkpoint"]
    assert resumed["best_epoch"] == first["best_epoch"]
    resumed_run.best_callback.best_epoch = None  # as restored from an older nnlab's checkpoint
    assert resumed_run.best_epoch() == first["best_epoch"]


def test_the_atomic_writer_leaves_the_old_content_when_a_write_fails(tmp_path):
    from nnlab.runs import atomic_save, atomic_write, atomic_write_text

    target = tmp_path / "metrics.json"
    atomic_write_text(target, "old\n")

    def half(f):
        f.write(b"ne")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, half)
    assert target.read_text() == "old\n" and sorted(tmp_path.iterdir()) == [target]
    atomic_save({"epoch": 3}, tmp_path / "state.ckpt", durable=False)
    assert torch.load(tmp_path / "state.ckpt")["epoch"] == 3


# -- YAML text: libyaml's emitter where it writes what OmegaConf's does ------------------------
PLAIN = [
    "", " ", "a b", " lead", "trail ", "x" * 200, "word " * 40, "???", "${a.b}", "1", "1.5",
    "1e-3", "true", "no", "null", "~", "-", "- x", ": x", "a: b", "#c", "a #c", "'q'", '"dq"',
    "[1]", "{a: 1}", "@x", "`x", "%x", "!x", "&x", "*x", "|", ">", "?x", "a\\b", "2026-12-06",
    "12:30", "0x1F", ".inf", "nan", "+1", "1_000", "a=b", "${oc.env:HOME}",
]  # fmt: skip
# libyaml folds, escapes and quotes these otherwise: OmegaConf's emitter writes them
OTHER = ["tab\there", "ümlaut ✓ 日本", "\u2028", "🙂", "é" * 100, "\x85x", "trailing \n" * 30]
MULTILINE = [
    "multi\nline",
    "a\n\nb\n",
    "some words, then a break\n" * 8,
]  # single-quoted: libyaml's too
TRICKY = PLAIN + OTHER + MULTILINE


def _tricky_config():
    values = {f"k{i}": v for i, v in enumerate(TRICKY)}
    keys = {v: 1 for v in TRICKY if v not in ("", "???")}
    return {
        **values,
        "keys": keys,
        "odd_keys": {"": 1, "x" * 130: 2, 5: 3, 1.5: 4},
        "n": None, "f": 1.0, "tiny": 1e-8, "nan": float("nan"), "inf": -float("inf"),
        "b": True, "big": 10**20, "l": [1, "a", None, [], {}, [1, [2, {"x": 3}]]], "e": {},
        "nest": {"a": {"b": {"c": [{"d": 1}]}}},
    }  # fmt: skip


@pytest.mark.slow
def test_yaml_text_is_omegaconfs_text(make_cfg):
    """Run files are written with `yaml_text` (libyaml's emitter for plain ASCII): the same text
    as OmegaConf.to_yaml for every experiment's composed config (its Hydra node too, resolved or
    not) and for strings each emitter quotes its own way."""
    from conftest import EXPERIMENTS
    from omegaconf import OmegaConf

    from nnlab.runs import plain_data, yaml_text

    for experiment in EXPERIMENTS:
        cfg = make_cfg(f"experiment={experiment}")
        assert plain_data(OmegaConf.to_container(cfg))  # the fast path, not the fallback
        assert yaml_text(cfg) == OmegaConf.to_yaml(cfg), experiment
        for key in ("data", "model", "task", "trainer", "hydra"):
            assert yaml_text(cfg[key], resolve=True) == OmegaConf.to_yaml(cfg[key], resolve=True)
    tricky = OmegaConf.create(_tricky_config())
    assert yaml_text(tricky) == OmegaConf.to_yaml(tricky)
    for value in TRICKY:
        for key in ("v", value or "empty"):
            data = {key: [value]}
            assert yaml_text(data) == OmegaConf.to_yaml(OmegaConf.create(data)), repr(value)
            key_is_plain = key.isascii() and key.isprintable() and len(key) < 100
            value_is_plain = value in PLAIN or value in MULTILINE
            assert plain_data(data) == (value_is_plain and key_is_plain), repr(value)


def test_tensorboard_hparams_file_is_lightnings_text(tmp_path, monkeypatch):
    """nnlab's TensorBoardLogger writes hparams.yaml itself (plain hyperparameters) or leaves
    it to Lightning (others): the file reads as Lightning's own writer leaves it."""
    import lightning.pytorch.loggers.tensorboard as lightning_tensorboard
    from lightning.pytorch.loggers import TensorBoardLogger as Lightnings
    from omegaconf import OmegaConf

    from nnlab.tracking import TensorBoardLogger

    lightning_writes = []
    original = lightning_tensorboard.save_hparams_to_yaml

    def save_hparams_to_yaml(path, hparams):
        lightning_writes.append(Path(path).parts[-3])  # the logger class's module
        original(path, hparams)

    monkeypatch.setattr(lightning_tensorboard, "save_hparams_to_yaml", save_hparams_to_yaml)

    cases = {
        "plain": {"lr": 1e-3, "name": "sine", "layers": [8, 8], "opt": {"kind": "adam"}},
        "config": {"net": OmegaConf.create({"a": 1, "b": "${a}"}), "x": None},
        "not plain": {"shape": (3, 4), "text": "ümlaut", "big": 2**70},
    }
    for name, hparams in cases.items():
        files = []
        for cls in (TensorBoardLogger, Lightnings):
            logger = cls(save_dir=tmp_path / name / cls.__module__, name="tb", version="")
            logger.log_hyperparams(hparams)
            logger.log_metrics({"loss": 1.0}, step=0)
            logger.finalize("success")
            files.append((Path(logger.log_dir) / "hparams.yaml").read_text())
        assert files[0] == files[1], name
    nnlab_module = TensorBoardLogger.__module__
    assert lightning_writes.count(nnlab_module) == 1  # "not plain" only
    assert lightning_writes.count(Lightnings.__module__) == len(cases)
