"""The commands over a run directory: eval, predict, export, resume, re-run; and their bad paths."""

import csv
import json
import shutil

import pytest
import torch
from conftest import run_cli

from nnlab.runs import read_status
from nnlab.tasks.regression import RegressionTask

SHORT = ["trainer.accelerator=cpu", "trainer.max_epochs=2", "trainer.limit_train_batches=5"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One short sine_mlp run and one sine_lstm run, shared by the tests of this module."""
    root = tmp_path_factory.mktemp("lifecycle")
    runs = {}
    for experiment in ("sine_mlp", "sine_lstm"):
        outputs = root / experiment
        runs[experiment] = run_cli(
            f"experiment={experiment}", *SHORT, outputs=outputs, cwd=root
        ).run_dir()
    return root, runs


class Result:
    def __init__(self, returncode, stdout, stderr):
        self.returncode, self.stdout, self.output = returncode, stdout, stdout + stderr


def command(root, module, *args, check=True):
    """Call a command's console entry point in this process (no interpreter start-up to pay);
    test_help runs each as a real subprocess."""
    import contextlib
    import importlib
    import io

    main = importlib.import_module(module).main
    out, err = io.StringIO(), io.StringIO()
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main(list(args))
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
    result = Result(code, out.getvalue(), err.getvalue())
    if check:
        assert code == 0, result.output[-3000:]
    return result


@pytest.mark.parametrize("experiment", ["sine_mlp", "sine_lstm"])
def test_eval_reproduces_the_recorded_test_metrics(trained, experiment):
    root, runs = trained
    run = runs[experiment]
    command(root, "nnlab.evaluate", f"run={run}")
    recorded = json.loads((run / "metrics.json").read_text())
    evaluated = json.loads((run / "eval_metrics.json").read_text())
    for key in ("test/mse", "test/mae", "test/loss"):
        assert evaluated[key] == recorded[key], key
    assert evaluated["split"] == "test"


def test_eval_val_split_and_last_checkpoint(trained):
    root, runs = trained
    run = runs["sine_mlp"]
    command(root, "nnlab.evaluate", f"run={run}", "split=val")
    evaluated = json.loads((run / "eval_metrics.json").read_text())
    assert evaluated["val/mse"] == json.loads((run / "metrics.json").read_text())["val/mse"]
    command(root, "nnlab.evaluate", f"run={run}", "ckpt=last", "data.batch_size=7")
    evaluated = json.loads((run / "eval_metrics.json").read_text())
    assert evaluated["checkpoint"].endswith("last.ckpt")


def read_predictions(out):
    with open(out / "predictions.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_predict_one_step_and_forecast(trained, tmp_path):
    root, runs = trained
    run = runs["sine_mlp"]
    values = [round(torch.sin(torch.tensor(0.01 * i)).item(), 4) for i in range(12)]
    out = tmp_path / "pred"
    result = command(
        root,
        "nnlab.predict",
        f"run={run}",
        "input=" + ",".join(map(str, values)),
        "steps=5",
        f"out={out}",
    )
    rows = read_predictions(out)
    one_step = [r for r in rows if r["kind"] == "one_step"]
    forecast = [r for r in rows if r["kind"] == "forecast"]
    assert len(one_step) == 12 - 4 + 1 and len(forecast) == 5
    assert [int(r["t"]) for r in forecast] == [12, 13, 14, 15, 16]
    # the one-step prediction of the first window is the checkpoint's output on it
    task = RegressionTask.load_from_checkpoint(
        run / json.loads((run / "metrics.json").read_text())["best_checkpoint"]
    )
    expected = task(torch.tensor([values[:4]])).item()
    assert float(one_step[0]["prediction"]) == pytest.approx(expected, abs=1e-5)
    assert float(one_step[0]["target"]) == values[4]
    assert (out / "forecast.png").read_bytes()[:4] == b"\x89PNG"
    assert "forecast" in result.stdout and "predictions.csv" in result.stdout


def test_predict_from_a_csv_file_and_the_test_split(trained, tmp_path):
    root, runs = trained
    run = runs["sine_lstm"]
    series = tmp_path / "series.csv"
    series.write_text("t,v\n" + "".join(f"{i},{0.1 * (i % 9)}\n" for i in range(40)))
    out = tmp_path / "from_csv"
    command(
        root, "nnlab.predict", f"run={run}", f"input={series}", "column=v", "steps=3", f"out={out}"
    )
    assert len([r for r in read_predictions(out) if r["kind"] == "one_step"]) == 40 - 16 + 1
    command(root, "nnlab.predict", f"run={run}", "steps=0")
    (made,) = (run / "predictions").iterdir()
    assert read_predictions(made)


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_export_matches_the_checkpoint(trained, fmt):
    pytest.importorskip("onnxruntime") if fmt == "onnx" else None
    root, runs = trained
    for run in runs.values():
        command(root, "nnlab.export", f"run={run}", f"format={fmt}")
        record = json.loads((run / "export" / "export.json").read_text())
        assert record["matches"] and record["max_abs_diff"] <= 1e-5
    run = runs["sine_lstm"]
    if fmt == "torchscript":
        loaded = torch.jit.load(str(run / "export" / "model.torchscript.pt"))
        task = RegressionTask.load_from_checkpoint(run / "checkpoints" / "last.ckpt")
        # exported from the best checkpoint; compare against that
        best = RegressionTask.load_from_checkpoint(
            json.loads((run / "metrics.json").read_text())["best_checkpoint"]
        )
        x = torch.randn(3, 16)
        assert torch.allclose(loaded(x), best(x), atol=1e-6)
        del task


def test_checkpoint_moved_into_an_empty_directory_loads_alone(trained, tmp_path):
    _, runs = trained
    moved = tmp_path / "empty" / "model.ckpt"
    moved.parent.mkdir()
    shutil.copy(runs["sine_lstm"] / "checkpoints" / "last.ckpt", moved)
    task = RegressionTask.load_from_checkpoint(moved)
    assert type(task.net).__name__ == "RecurrentNet" and task(torch.zeros(2, 16)).shape == (2, 1)


def test_resume_continues_in_the_same_directory(tmp_path):
    outputs = tmp_path / "outputs"
    first = run_cli("experiment=sine_mlp", *SHORT, outputs=outputs, cwd=tmp_path)
    run = first.run_dir()
    events_before = set((run / "tensorboard").glob("events.*"))
    run_cli(f"resume={run}", "trainer.max_epochs=4", outputs=outputs, cwd=tmp_path)
    assert first.run_dirs() == [run]  # no new run directory
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["epochs"] == 4 and metrics["global_step"] == 4 * 5
    status = read_status(run)
    assert status["status"] == "completed" and status["resumed"] == 1
    assert "max_epochs: 4" in (run / "config.resolved.yaml").read_text()
    assert set((run / "tensorboard").glob("events.*")) >= events_before  # the same TensorBoard run
    assert "Resuming" in (run / "train.log").read_text()


def test_resume_refuses_a_directory_that_is_not_a_run(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    result = run_cli(f"resume={empty}", outputs=tmp_path / "outputs", cwd=tmp_path, check=False)
    assert (
        result.returncode == 2
        and "resume: " in result.output
        and "is not an nnlab run" in result.output
    )
    assert not list(empty.iterdir())


def test_rerun_a_saved_config_with_new_overrides(trained, tmp_path):
    root, runs = trained
    saved = runs["sine_mlp"] / ".hydra"
    outputs = tmp_path / "outputs"
    result = run_cli(
        "-cp",
        str(saved),
        "-cn",
        "config",
        "trainer.max_epochs=1",
        "model.hidden_sizes=[6]",
        outputs=outputs,
        cwd=tmp_path,
    )
    run = result.run_dir()
    assert "sine_mlp" in run.name
    assert result.metrics()["epochs"] == 1
    assert "- 6" in (run / "config.resolved.yaml").read_text()


@pytest.mark.parametrize(
    "module,args,message",
    [
        ("nnlab.evaluate", ["run=/no/such/run"], "run: /no/such/run is not a directory"),
        ("nnlab.evaluate", [], "run: no run directory given"),
        ("nnlab.evaluate", ["run={empty}"], "is not an nnlab run directory"),
        ("nnlab.evaluate", ["run={nockpt}"], "holds no checkpoint"),
        (
            "nnlab.evaluate",
            ["run={mlp}", "ckpt={lstm_ckpt}"],
            "holds a nnlab.models.recurrent.RecurrentNet network",
        ),
        (
            "nnlab.evaluate",
            ["run={mlp}", "split=train"],
            "split: got 'train'; expected one of 'test' or 'val'",
        ),
        ("nnlab.evaluate", ["run={mlp}", "bogus=1"], "bogus: unknown argument"),
        ("nnlab.predict", ["run={mlp}", "input=0.1,0.2"], "give at least 4 values"),
        ("nnlab.predict", ["run={mlp}", "input=abc"], "neither a file nor comma-separated numbers"),
        ("nnlab.predict", ["run={mlp}", "input={emptyfile}"], "is empty"),
        ("nnlab.predict", ["run={mlp}", "steps=x"], "steps: got 'x'; expected a whole number"),
        (
            "nnlab.export",
            ["run={mlp}", "format=keras"],
            "format: got 'keras'; expected one of 'torchscript' or 'onnx'",
        ),
    ],
)
def test_bad_paths(trained, tmp_path, module, args, message):
    root, runs = trained
    empty = tmp_path / "empty"
    empty.mkdir()
    nockpt = tmp_path / "nockpt"
    shutil.copytree(runs["sine_mlp"], nockpt, ignore=shutil.ignore_patterns("*.ckpt"))
    (tmp_path / "empty.csv").write_text("")
    names = {
        "empty": empty,
        "nockpt": nockpt,
        "mlp": runs["sine_mlp"],
        "emptyfile": tmp_path / "empty.csv",
        "lstm_ckpt": runs["sine_lstm"] / "checkpoints" / "last.ckpt",
    }
    result = command(root, module, *(a.format(**names) for a in args), check=False)
    assert result.returncode == 2, result.output[-3000:]
    assert message in result.output and "Traceback" not in result.output
    assert not list(empty.iterdir())  # nothing written into a directory that is not a run


def test_help_in_a_real_process(tmp_path):
    for module in ("nnlab.evaluate", "nnlab.predict", "nnlab.export"):
        result = run_cli("--help", module=module, outputs=tmp_path, cwd=tmp_path)
        assert "usage: nnlab-" in result.stdout
