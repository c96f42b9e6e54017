"""Every logger gets the run's summary: flattened config, parameter counts, git state, tags,
final metrics, best checkpoint. MLflow (local store and a real tracking server), W&B offline,
logger=many; read back through each tool's own reader."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import socket
import struct
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from nnlab.tracking import flatten, git_state

ROOT = Path(__file__).resolve().parents[1]
SHORT = ["experiment=sine_mlp", "debug=limit", "trainer.accelerator=cpu"]
needs_mlflow = pytest.mark.skipif(
    importlib.util.find_spec("mlflow") is None,
    reason="mlflow is not installed (pip install 'nnlab[mlflow]')",
)
needs_wandb = pytest.mark.skipif(
    importlib.util.find_spec("wandb") is None,
    reason="wandb is not installed (pip install 'nnlab[wandb]')",
)


def check_params(params: dict, run_dir: Path) -> None:
    """The summary's hyperparameters, whatever the logger turned their values into."""
    assert str(params["model._target_"]) == "nnlab.models.mlp.MLP"
    assert float(params["data.window"]) == 4 and float(params["seed"]) == 12345
    assert float(params["params.total"]) == float(params["params.trainable"]) > 0
    assert float(params["params.non_trainable"]) == 0
    assert str(params["task.class"]) == "RegressionTask"
    assert float(params["trainer.max_epochs"]) == 2  # the trainer's settings (debug=limit)
    assert str(params["callbacks.lr_monitor.logging_interval"]) == "epoch"  # the callbacks'
    assert len(str(params["git.commit"])) in (40, len("unknown"))
    assert str(params["git.dirty"]) in ("True", "False", "true", "false", "1.0", "0.0", "unknown")
    assert str(params["tags"]) == "baseline, mlp"
    assert str(params["best_checkpoint"]).startswith(str(run_dir / "checkpoints" / "epoch"))


def test_parameter_counts_split_trainable_and_frozen(tmp_path):
    import torch

    from nnlab.tracking import run_params

    net = torch.nn.Linear(3, 2)  # 6 weights, 2 biases
    net.bias.requires_grad_(False)
    params = run_params(OmegaConf.create({"seed": 1, "tags": []}), net)
    assert (params["params.total"], params["params.trainable"]) == (8, 6)
    assert params["params.non_trainable"] == 2 and params["task.class"] == "Linear"


def test_flatten_and_git_state(tmp_path):
    assert flatten({"a": {"b": 1, "c": [1, 2]}, "d": None}) == {
        "a.b": 1,
        "a.c": "[1, 2]",
        "d": "null",
    }
    assert git_state(tmp_path) == {"git.commit": "unknown", "git.dirty": "unknown"}
    git = ["git", "-C", str(tmp_path), "-c", "user.email=a@b", "-c", "user.name=a"]
    subprocess.run([*git, "init", "-q"], check=True)
    (tmp_path / "f.txt").write_text("1")
    subprocess.run([*git, "add", "f.txt"], check=True)
    subprocess.run([*git, "commit", "-qm", "x"], check=True)
    clean = git_state(tmp_path)
    assert len(clean["git.commit"]) == 40 and clean["git.dirty"] is False
    (tmp_path / "f.txt").write_text("2")
    assert git_state(tmp_path) == {**clean, "git.dirty": True}


def test_the_csv_loggers_hparams_file_holds_the_run_summary(cli):
    """What lightning-hydra-template's log_hyperparameters sends, in the CSV logger's
    hparams.yaml: parameter counts (total, trainable, non-trainable), the trainer's and the
    callbacks' settings, the task's class, with the final metrics."""
    result = cli(*SHORT, "logger=csv", "tags=[baseline,mlp]")
    run = result.run_dir()
    hparams = yaml.safe_load((run / "csv" / "hparams.yaml").read_text())
    check_params(hparams, run)
    assert hparams["final/test/mse"] == pytest.approx(result.metrics()["test/mse"])


@needs_mlflow
@pytest.mark.slow
def test_logger_many_reaches_tensorboard_csv_and_mlflow(cli, tmp_path, monkeypatch):
    import mlflow

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # the default: a local store
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    result = cli(*SHORT, "logger=many", "tags=[baseline,mlp]")
    run, metrics = result.run_dir(), result.metrics()
    # CSV: hparams.yaml holds the summary, metrics.csv the curves
    hparams = yaml.safe_load((run / "csv" / "hparams.yaml").read_text())
    check_params(hparams, run)
    assert hparams["final/test/mse"] == pytest.approx(metrics["test/mse"])
    assert "val/mse" in (run / "csv" / "metrics.csv").read_text().splitlines()[0]
    # TensorBoard: an HPARAMS session with the hyperparameters, final metrics as hp/<name>
    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"tensors": 0})
    events.Reload()
    content = events.PluginTagToContent("hparams")
    session = plugin_data_pb2.HParamsPluginData.FromString(
        content["_hparams_/session_start_info"]
    ).session_start_info
    params = {k: getattr(v, v.WhichOneof("kind")) for k, v in session.hparams.items()}
    check_params(params, run)
    assert events.Scalars("hp/test/mse")[-1].value == pytest.approx(metrics["test/mse"])
    assert (
        "baseline, mlp"
        in events.Tensors("run/summary/text_summary")[0].tensor_proto.string_val[0].decode()
    )
    # MLflow, the local store under the outputs folder, read through MLflow's client
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'outputs' / 'mlflow.db'}")
    (found,) = client.search_runs([client.get_experiment_by_name("sine_mlp").experiment_id])
    assert found.info.status == "FINISHED" and found.info.run_name == run.name
    check_params(found.data.params, run)
    assert found.data.metrics["test/mse"] == pytest.approx(metrics["test/mse"])
    assert found.data.metrics["best_epoch"] == metrics["best_epoch"]
    assert found.data.tags["baseline"] == "" and found.data.tags["nnlab.tags"] == "baseline, mlp"
    assert found.data.tags["best_checkpoint"] == metrics["best_checkpoint"]
    history = client.get_metric_history(found.info.run_id, "val/mse")
    assert len(history) >= 2  # the per-epoch values, not only the final one


def test_tensorboard_writes_each_log_call_as_one_event(tmp_path):
    """nnlab's TensorBoardLogger (conf/logger/tensorboard.yaml): one event per `log_metrics`
    call holding all its scalars, which TensorBoard reads back tag by tag."""
    import torch
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.backend.event_processing.event_file_loader import LegacyEventFileLoader

    from nnlab.tracking import TensorBoardLogger

    logger = TensorBoardLogger(str(tmp_path), name="tb", version="")
    for step in range(3):
        logger.log_metrics(
            {"train/loss": 1.0 / (step + 1), "val/mse": torch.tensor(2.0 * step)}, step
        )
    with pytest.raises(ValueError, match="val/text: you tried to log 'high'"):
        logger.log_metrics({"val/text": "high"}, 3)
    logger.finalize("success")
    (path,) = (tmp_path / "tb").glob("events.out.tfevents.*")
    events = LegacyEventFileLoader(str(path)).Load()
    scalar_events = [e for e in events if e.WhichOneof("what") == "summary"]
    assert [len(e.summary.value) for e in scalar_events] == [2, 2, 2]
    acc = EventAccumulator(str(path))
    acc.Reload()
    assert [(s.step, s.value) for s in acc.Scalars("train/loss")] == [
        (0, 1.0),
        (1, 0.5),
        (2, pytest.approx(1 / 3)),
    ]
    assert [s.value for s in acc.Scalars("val/mse")] == [0.0, 2.0, 4.0]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@needs_mlflow
@pytest.mark.slow
def test_mlflow_tracking_server_receives_a_run(cli, tmp_path):
    import mlflow

    port = free_port()
    env = {**os.environ, "PATH": f"{Path(os.sys.executable).parent}:{os.environ['PATH']}"}
    server = subprocess.Popen(
        [
            str(ROOT / "scripts" / "mlflow_server.sh"),
            str(tmp_path / "srv" / "mlflow.db"),
            str(port),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                pytest.fail(
                    f"mlflow server did not start:\n{server.stdout.read().decode()[-3000:]}"
                )
            time.sleep(1)
        result = cli(
            *SHORT, "logger=mlflow", "tags=[baseline,mlp]", env={"MLFLOW_TRACKING_URI": url}
        )
        run, metrics = result.run_dir(), result.metrics()
        client = mlflow.MlflowClient(url)
        (found,) = client.search_runs(
            [client.get_experiment_by_name("sine_mlp").experiment_id], "tags.baseline = ''"
        )
        check_params(found.data.params, run)
        assert found.data.metrics["test/mse"] == pytest.approx(metrics["test/mse"])
        assert found.info.status == "FINISHED"
        assert (tmp_path / "srv" / "mlflow.db").is_file()
        assert not (tmp_path / "outputs" / "mlflow.db").exists()  # nothing went to the local store
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


def key(item) -> str:
    return item.key or "/".join(item.nested_key)


def wandb_records(path: Path):
    """The protobuf records of a .wandb file (W&B's variant of the LevelDB log format: a 7-byte
    header, then 32 KiB blocks of records framed by crc32, length and type)."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, chunks = 7, b""
    while pos + 7 <= len(data):
        if (pos % 32768) + 7 > 32768:  # the rest of a block too short for a header: padding
            pos += 32768 - pos % 32768
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if length == 0 and kind == 0:
            break
        chunks += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a full record, or the last piece of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(chunks)
            yield record
            chunks = b""


@needs_wandb
@pytest.mark.slow
def test_wandb_offline_run_holds_the_summary(cli):
    import json

    result = cli(*SHORT, "logger=wandb", "tags=[baseline,mlp]", env={"WANDB_SILENT": "true"})
    run, metrics = result.run_dir(), result.metrics()
    (offline,) = (run / "wandb").glob("offline-run-*/run-*.wandb")
    records = list(wandb_records(offline))
    (start,) = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    assert list(start.tags) == ["baseline", "mlp"] and start.run_group == "sine_mlp"
    config = {}
    for r in records:
        if r.WhichOneof("record_type") == "config":
            config.update({key(i): json.loads(i.value_json) for i in r.config.update})
    check_params(config, run)
    summary = {}
    for r in records:
        if r.WhichOneof("record_type") == "summary":
            summary.update({key(i): json.loads(i.value_json) for i in r.summary.update})
    assert summary["test/mse"] == pytest.approx(metrics["test/mse"])
    assert summary["best_checkpoint"] == metrics["best_checkpoint"]
    history = [r for r in records if r.WhichOneof("record_type") == "history"]
    assert any(key(i) == "val/mse" for r in history for i in r.history.item)


def test_missing_extra_is_one_clear_error(cli, tmp_path):
    """Without mlflow installed, logger=mlflow stops with the install command, exit 2."""
    fake = tmp_path / "no_mlflow" / "mlflow"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('mlflow is not installed here')\n")
    path = os.pathsep.join([str(fake.parent), os.environ.get("PYTHONPATH", "")])
    # a process of its own: an mlflow imported by an earlier test cannot be shadowed here
    result = cli(*SHORT, "logger=mlflow", check=False, env={"PYTHONPATH": path}, process=True)
    assert result.returncode == 2, result.output[-2000:]
    assert "pip install 'nnlab[mlflow]'" in result.stderr
    assert "Traceback" not in result.stderr


@needs_mlflow
@pytest.mark.slow
def test_a_resumed_run_continues_its_mlflow_run(cli, tmp_path, monkeypatch):
    """resume= logs into the MLflow run the run started (its id in tracking.json), so the
    curves go on in one run instead of two half-runs."""
    import mlflow

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    first = cli(*SHORT, "logger=mlflow", "trainer.max_epochs=2")
    run = first.run_dir()
    ids = json.loads((run / "tracking.json").read_text())
    cli(f"resume={run}", "trainer.max_epochs=4")
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'outputs' / 'mlflow.db'}")
    (found,) = client.search_runs([client.get_experiment_by_name("sine_mlp").experiment_id])
    assert found.info.run_id == ids["mlflow"]
    epochs = {int(m.value) for m in client.get_metric_history(found.info.run_id, "epoch")}
    assert {0, 1, 2, 3} <= epochs  # both sessions' epochs in the one run


@needs_wandb
def test_a_resumed_run_continues_its_wandb_run(cli):
    first = cli(*SHORT, "logger=wandb", "trainer.max_epochs=2", env={"WANDB_SILENT": "true"})
    run = first.run_dir()
    run_id = json.loads((run / "tracking.json").read_text())["wandb"]
    cli(f"resume={run}", "trainer.max_epochs=3", env={"WANDB_SILENT": "true"})
    offline = sorted((run / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(offline) == 2 and all(p.name == f"run-{run_id}.wandb" for p in offline)
