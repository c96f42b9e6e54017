"""docs/reference/configuration.md is generated from the schema (scripts/gen_config_reference.py)
and must be up to date: a key, type, default or comment changed without regenerating fails."""

from __future__ import annotations

import importlib.util
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "gen_config_reference.py"


def _generator():
    spec = importlib.util.spec_from_file_location("gen_config_reference", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_configuration_reference_is_current():
    gen = _generator()
    assert gen.OUT.read_text() == gen.render(), (
        f"{gen.OUT} is stale: run python scripts/gen_config_reference.py and commit it"
    )


def test_the_reference_shows_types_defaults_choices_and_variants():
    text = _generator().render()
    assert "| `model.cell` | one of rnn, lstm, gru, deep_rnn" in text
    assert "| `data.batch_size` | int >= 1 | `32` |" in text
    assert "(only with cell: deep_rnn, simple_deep_rnn)" in text
    assert "| `trainer.max_epochs` |" in text and "| `task.optimizer.lr` | number > 0 |" in text
    assert "### callbacks=default" in text
    for group in ("data", "model", "task", "trainer", "callbacks", "logger"):
        assert f"\n## {group}\n" in text
    # a multirun's launchers and sweeper, and the commands' arguments, declared once
    assert "| `hydra.launcher.pack_size` | int >= 1 | `32` |" in text
    assert "| `hydra.launcher.timeout_min` | int >= 1 | `60` |" in text
    assert "| `hydra.sweeper.n_trials` | int >= 1 | `20` | trials this command asks for |" in text
    assert "| `hydra.sweeper.pruner` | one of none, median, percentile," in text
    assert "### hydra/sweeper/sampler=tpe" in text
    assert "| `split` | one of test, val | `test` | test \\| val |" in text
    assert "| `steps` | int >= 0 | `50` |" in text and "### nnlab-report" in text
