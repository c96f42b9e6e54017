"""Commands that start at once: `--help`, a refused key and a refused value answer without
importing torch, Lightning, torchmetrics, torchvision or scipy (seconds on a small CPU: see
docs/benchmarks.md). Each command runs in its own process with `python -X importtime`, which
lists every module the process imported, so a new top-level `import torch` anywhere on these
paths fails here."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

HEAVY = ("torch", "lightning", "torchmetrics", "torchvision", "scipy")


def imported(module: str, *args: str, cwd, code: int) -> set[str]:
    """The top-level packages `python -m module args...` imported (and its output checked)."""
    env = {**os.environ, "NNLAB_OUTPUT_DIR": str(cwd / "outputs"), "HYDRA_FULL_ERROR": "0"}
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", module, *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=300,
    )
    assert proc.returncode == code, proc.stdout[-2000:] + proc.stderr[-2000:]
    names = set()
    for line in proc.stderr.splitlines():
        if line.startswith("import time:") and line.count("|") == 2:
            names.add(line.rsplit("|", 1)[1].strip().split(".")[0])
    assert "nnlab" in names, "no -X importtime output: the check would pass vacuously"
    return names


@pytest.mark.parametrize(
    "module,args,code",
    [
        ("nnlab.train", ["--help"], 0),
        ("nnlab.train", ["experiment=sine_mlp", "nosuchkey=1"], 2),  # Hydra refuses the key
        ("nnlab.train", ["experiment=nosuchpreset"], 2),  # Hydra refuses the option
        # nnlab's check of a run key (a constructor's key is checked against the constructor's
        # annotations, which imports its module, and with it torch)
        ("nnlab.train", ["experiment=sine_mlp", "seed=-3"], 2),
        # an unknown key of nnlab's own class: read from its source (nnlab.schema.source_keys)
        ("nnlab.train", ["experiment=sine_mlp", "+model.zz_unknown=1"], 2),
        ("nnlab.evaluate", ["--help"], 0),
        ("nnlab.predict", ["--help"], 0),
        ("nnlab.predict", ["run=nowhere", "steps=-1"], 2),
        ("nnlab.export", ["--help"], 0),
        ("nnlab.export", ["run=nowhere", "format=keras"], 2),
        ("nnlab.report", ["--help"], 0),
        ("nnlab.report", ["sweep=does/not/exist"], 2),
    ],
    ids=["train-help", "train-bad-key", "train-bad-group", "train-bad-value",
         "train-bad-constructor-key", "eval-help", "predict-help", "predict-bad-argument",
         "export-help", "export-bad-argument", "report-help", "report-bad-sweep"],
)  # fmt: skip
def test_these_commands_answer_without_torch(tmp_path, module, args, code):
    heavy = sorted(set(HEAVY) & imported(module, *args, cwd=tmp_path, code=code))
    assert not heavy, f"{module} {' '.join(args)} imported {heavy}"


@pytest.mark.slow
def test_a_training_still_imports_what_it_needs(tmp_path):
    """The same probe sees torch when a run trains: the check above can fail."""
    args = ["experiment=sine_mlp", "trainer.max_epochs=1", "logger=none", "callbacks=none"]
    names = imported("nnlab.train", *args, "print_config=false", cwd=tmp_path, code=0)
    assert {"torch", "lightning"} <= names


def test_a_report_on_a_sweep_imports_no_torch_without_its_tensorboard_log(tmp_path):
    """nnlab-report reads run directories (JSON, CSV, YAML) and uses scipy and matplotlib for its
    statistics and plots; only its TensorBoard HPARAMS log (tensorboard=true) needs torch."""
    from test_report_groups import write_trial

    sweep = tmp_path / "sweep"
    for num, seed in enumerate((1, 2)):
        loss = 0.5 + 0.1 * seed
        metrics = {"val/loss": loss, "test/loss": loss, "best_epoch": 1}
        write_trial(sweep / str(num), [f"seed={seed}"], metrics, [loss + 0.1, loss])
    args = [f"sweep={sweep}", "tensorboard=false"]
    names = imported("nnlab.report", *args, cwd=tmp_path, code=0)
    assert (sweep / "report" / "leaderboard.csv").is_file()
    assert not {"torch", "lightning", "torchmetrics", "torchvision"} & names


def test_keys_read_from_source_are_the_declared_keys(monkeypatch):
    """Every nnlab class whose keys `keys_in_source` reads without importing its module takes
    exactly those keys by the full declaration (`declared`), so a refusal from the source is
    the refusal the full check makes."""
    import importlib
    import inspect
    import pkgutil

    import nnlab
    from nnlab.schema import check_node, declared, keys_in_source, refuse_unknown_from_source

    judged = 0
    for info in pkgutil.walk_packages(nnlab.__path__, "nnlab."):
        module = importlib.import_module(info.name)
        for name, obj in vars(module).items():
            if not inspect.isclass(obj) or obj.__module__ != module.__name__:
                continue
            target = f"{module.__name__}.{name}"
            keys = keys_in_source(target)
            if keys is None:
                continue
            judged += 1
            spec = declared(target)
            assert set(spec.fields) == keys and not spec.open, target
    assert judged >= 20  # models, layers, callbacks: the check above is not vacuous
    import nnlab.schema

    monkeypatch.setattr(nnlab.schema, "source_keys", keys_in_source)  # as if not imported yet
    node = {"_target_": "nnlab.models.mlp.MLP", "input_size": 1, "output_size": 1, "hiden": 3}
    messages = []
    for refuse in (refuse_unknown_from_source, check_node):
        try:
            refuse(dict(node), "model")
        except Exception as exc:  # noqa: BLE001 - the ConfigError each raises
            messages.append(str(exc))
    assert len(messages) == 2 and messages[0] == messages[1]
    assert messages[0].startswith("model.hiden: unknown key (value 3)")
