"""scripts/bench.py: nnlab and the hand-written loop on the same configuration, in one run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "scripts" / "bench.py"


def run_bench(tmp_path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(BENCH), *args],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=600,
        env={**__import__("os").environ, "NNLAB_OUTPUT_DIR": str(tmp_path / "outputs")},
    )


@pytest.mark.parametrize(
    "extra",
    [
        ["rounds=2", "hand_optimizer=nnlab"],
        ["task.loop=lightning", "baseline=dataloader", "processes=one"],
    ],
)
@pytest.mark.slow
def test_bench_compares_both_loops_on_the_same_model(tmp_path, extra):
    out = tmp_path / "bench.json"
    proc = run_bench(tmp_path, "configs=sine_mlp", "epochs=2", f"json={out}", *extra)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["environment"]["torch"] and report["epochs"] == 2
    (result,) = report["results"]
    assert result["config"] == "sine_mlp" and result["metric"] == "test/mse"
    assert result["processes"] == ("one" if "processes=one" in extra else "separate")
    rounds = 2 if "rounds=2" in extra else 1
    for side in ("nnlab", "hand"):
        assert [len(times) for times in result[side]["epoch_times"]] == [2] * rounds
        assert result[side]["samples_per_s"] > 0 and 0 < result[side]["test/mse"] < 2.0
        kept = sorted(times[1] for times in result[side]["epoch_times"])  # first epochs left out
        assert result[side]["epoch_s"] == pytest.approx(sum(kept) / len(kept))  # their median
    if "hand_optimizer=nnlab" in extra:  # same model, batches, order and optimizer: same result
        assert result["nnlab"]["test/mse"] == pytest.approx(result["hand"]["test/mse"], rel=1e-4)
    assert result["ratio"] == pytest.approx(result["nnlab"]["epoch_s"] / result["hand"]["epoch_s"])
    assert "| sine_mlp | test/mse |" in proc.stdout  # the table
    assert not list(tmp_path.glob("outputs/runs/*"))  # benchmark runs leave no run directories


@pytest.mark.slow
def test_bench_names_an_unknown_configuration(tmp_path):
    proc = run_bench(tmp_path, "configs=[mnist_transformer]")
    assert proc.returncode == 2 and "unknown configuration 'mnist_transformer'" in proc.stderr


@pytest.mark.slow
def test_sweep_bench_times_each_launcher_and_marks_a_smaller_baseline(tmp_path):
    """scripts/bench_sweep.py runs the sweep through each launcher as `nnlab-train -m`; a
    baseline of fewer trials than the packed sweep is marked as overstating the speed-up."""
    out = tmp_path / "sweep.json"
    proc = subprocess.run(
        [sys.executable, str(BENCH.with_name("bench_sweep.py")), "trials=4", "baseline_trials=2"]
        + ["modes=[packed,basic]", "trainer.max_epochs=2", f"json={out}"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = {r["mode"]: r for r in json.loads(out.read_text())}
    assert rows["packed"]["completed"] == 4 and rows["basic"]["completed"] == 2
    assert all(r["wall_s"] > 0 and r["per_hour"] > 0 and r["cpu_s"] > 0 for r in rows.values())
    (basic_line,) = [line for line in proc.stdout.splitlines() if line.startswith("| basic")]
    assert "over 2 trials, not 4: overstated" in basic_line
