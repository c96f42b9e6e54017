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
        ("nnlab.evaluate", ["--help"], 0),
        ("nnlab.report", ["--help"], 0),
        ("nnlab.report", ["sweep=does/not/exist"], 2),
    ],
    ids=["train-help", "train-bad-key", "train-bad-group", "train-bad-value", "eval-help",
         "report-help", "report-bad-sweep"],
)  # fmt: skip
def test_these_commands_answer_without_torch(tmp_path, module, args, code):
    heavy = sorted(set(HEAVY) & imported(module, *args, cwd=tmp_path, code=code))
    assert not heavy, f"{module} {' '.join(args)} imported {heavy}"


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
