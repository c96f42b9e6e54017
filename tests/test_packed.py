"""Packed sweeps (hydra/launcher=packed) as users run them: the same sweep packed and through
Hydra's basic launcher gives the same per-epoch metrics (MLP, LSTM, CNN); every trial is a
complete run directory that nnlab-eval and nnlab-report read; a diverging trial fails alone;
jobs that cannot be packed run on their own; a killed packed sweep resumes.

Tolerance: per-epoch scalars and final metrics agree to rel 1e-4 (abs 1e-6). The packed step
computes the same float32 arithmetic in another order (vmapped matmuls, the batched recurrence of
packed/recurrent.py); the differences seen are ~1e-6 relative after a few epochs.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from inprocess import call

from nnlab.runs import read_status

REL, ABS = 1e-4, 1e-6
TB_TAGS_IGNORED = {"hp_metric"}


def nnlab(args: list[str], outputs: Path, cwd: Path, module: str = "nnlab.train"):
    """`python -m module args` (in this process: tests/inprocess.py)."""
    env = {**os.environ, "NNLAB_OUTPUT_DIR": str(outputs), "PYTHONUNBUFFERED": "1"}
    extra = ["print_config=false"] if module == "nnlab.train" else []
    return call(module, [*args, *extra], env=env, cwd=cwd)


def the_sweep(outputs: Path) -> Path:
    (sweep,) = [p for p in outputs.glob("multiruns/*/*") if p.is_dir()]
    return sweep


def trials_of(sweep: Path) -> list[Path]:
    return sorted((p for p in sweep.iterdir() if p.name.isdigit()), key=lambda p: int(p.name))


def scalars(run: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run / "tensorboard"))
    acc.Reload()
    out = {}
    for tag in acc.Tags()["scalars"]:
        if tag in TB_TAGS_IGNORED:
            continue
        # `epoch` is logged twice per step by Lightning (with the train and the val scalars)
        out[tag] = sorted({(s.step, s.value) for s in acc.Scalars(tag)})
    return out


def config_text(run: Path, name: str) -> str:
    """A run's config file with its sweep and outputs directories named generically (the tree's
    lines wrap where those paths make them: compared without layout)."""
    text = (run / name).read_text()
    if name == "config_tree.log":
        text = re.sub(r"[\s│├└─]+", "", text)
    text = text.replace(str(run.parent), "<sweep>")
    return text.replace(str(run.parents[3]), "<outputs>")  # <outputs>/multiruns/<day>/<sweep>/<job>


def assert_same_run(sequential: Path, packed: Path) -> None:
    seq_m = json.loads((sequential / "metrics.json").read_text())
    pk_m = json.loads((packed / "metrics.json").read_text())
    for key in ("best_epoch", "epochs", "global_step"):
        assert pk_m[key] == seq_m[key], key
    for key, value in seq_m.items():
        if "/" in key:
            assert pk_m[key] == pytest.approx(value, rel=REL, abs=ABS), key
    assert Path(pk_m["best_checkpoint"]).name == Path(seq_m["best_checkpoint"]).name
    # the files a run keeps of its config: the same text, but for the sweeps' own directories
    for name in ("config_tree.log", "config.resolved.yaml", ".hydra/config.yaml"):
        assert config_text(packed, name) == config_text(sequential, name), name
    seq_s, pk_s = scalars(sequential), scalars(packed)
    assert set(pk_s) == set(seq_s)
    for tag, points in seq_s.items():
        assert [s for s, _ in pk_s[tag]] == [s for s, _ in points], tag
        for (_, a), (_, b) in zip(pk_s[tag], points, strict=True):
            assert a == pytest.approx(b, rel=REL, abs=ABS), tag


def sweep_both(
    args: list[str], tmp_path: Path, packed: tuple[str, ...] = (), network: str = ""
) -> tuple[Path, Path]:
    """(sequential sweep, packed sweep); `network`: how the packed group must run the network
    (its log line "Stacked network: ...")."""
    runs = []
    for name, launcher in (("sequential", []), ("packed", ["hydra/launcher=packed", *packed])):
        proc = nnlab(["-m", *launcher, *args], tmp_path / name, tmp_path)
        assert proc.returncode == 0, proc.stderr[-4000:]
        runs.append(the_sweep(tmp_path / name))
    assert "Training 2 trials as one stacked model" in proc.stdout + proc.stderr
    assert f"Stacked network: {network}" in proc.stdout + proc.stderr
    return runs[0], runs[1]


COMMON = ["callbacks=[lr_monitor]", "seed=1,2"]


LSTM_ARGS = [
    "experiment=sine_lstm",
    "model.hidden_size=8",
    "data.window=8",
    "trainer.max_epochs=2",
    "trainer.gradient_clip_val=0.5",
]


MLP_ARGS = ["experiment=sine_mlp", "trainer.max_epochs=2"]
TABLE = ["paths.data_dir=data"]  # the generated table, written in the test's directory
ACCUMULATED_WARMUP = [
    "trainer.accumulate_grad_batches=3",
    "+task.scheduler={_target_:torch.optim.lr_scheduler.LinearLR,_partial_:true,"
    "start_factor:0.1,total_iters:10}",
    "task.scheduler_interval=step",
]
ADAMW = ["task.optimizer._target_=torch.optim.AdamW", "task.optimizer.weight_decay=0.05"]
SGD_NESTEROV = [
    "task.optimizer._target_=torch.optim.SGD",
    "task.optimizer.lr=0.05",
    "+task.optimizer.momentum=0.9",
    "+task.optimizer.nesterov=true",
]


@pytest.mark.slow
@pytest.mark.parametrize(
    "family, args, packed",
    [
        ("mlp", ["experiment=sine_mlp", "trainer.max_epochs=3", "task.optimizer.lr=1e-2"], []),
        ("lstm", LSTM_ARGS, []),  # shuffled: each trial's own data order; torch's LSTM per trial
        # the batched recurrence (one product per step for all trials, its own backward)
        ("lstm_batched", LSTM_ARGS, ["hydra.launcher.recurrent=batched"]),
        (
            "gru_batched",  # two bidirectional layers; regression with the huber loss
            [*LSTM_ARGS, "model.cell=gru", "model.num_layers=2", "model.bidirectional=true"]
            + ["task.loss=huber"],
            ["hydra.launcher.recurrent=batched"],
        ),
        # accumulated windows of 3 (the epoch's last short), a per-step warm-up, AdamW
        ("mlp_accumulated_warmup_adamw", [*MLP_ARGS, *ACCUMULATED_WARMUP, *ADAMW], []),
        ("mlp_sgd_nesterov", [*MLP_ARGS, *SGD_NESTEROV], []),
        # classification on the trial axis: train/acc from the task's counts, val/acc
        ("mlp_classification", ["experiment=tabular_mlp", "trainer.max_epochs=2"] + TABLE, []),
    ],
)
def test_packed_trials_equal_sequential_trials(family, args, packed, tmp_path):
    # dense networks run on the trial axis (packed/dense.py), the others vmapped
    network = "its layers on the trial axis" if family.startswith("mlp") else "vmapped"
    sequential, packed_sweep = sweep_both([*args, *COMMON], tmp_path, tuple(packed), network)
    assert [p.name for p in trials_of(packed_sweep)] == ["0", "1"]
    for seq_run, pk_run in zip(trials_of(sequential), trials_of(packed_sweep), strict=True):
        assert_same_run(seq_run, pk_run)


@pytest.mark.slow
@pytest.mark.parametrize(
    "averaging",
    [
        # each trial its own decay
        ("averaging=ema", "averaging.decay=0.8,0.95", "trainer.max_epochs=2"),
        # each trial its own SWA learning rate, taking over after the first epoch
        (
            "averaging=swa",
            "averaging.start_epoch=1",
            "averaging.lr=0.003,0.01",
            "averaging.anneal_epochs=1",
            "trainer.max_epochs=3",
        ),
    ],
    ids=["ema", "swa"],
)
def test_packed_trials_average_weights_as_trials_alone(averaging, tmp_path):
    """Weight averaging (engine/averaging.py): a packed trial validates, keeps and tests the
    same averaged weights as the trial run alone, with accumulated windows of 3 batches."""
    args = ["experiment=sine_mlp", "trainer.accumulate_grad_batches=3", "callbacks=[lr_monitor]"]
    sequential, packed = sweep_both([*args, *averaging, "seed=1"], tmp_path)
    for seq_run, pk_run in zip(trials_of(sequential), trials_of(packed), strict=True):
        assert_same_run(seq_run, pk_run)
        for run in (seq_run, pk_run):  # the trained weights beside the averaged ones
            last = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)
            assert "current_model_state" in last


@pytest.mark.slow
def test_packed_trials_each_warm_up_on_their_own_schedule(tmp_path):
    """conf/task/scheduler/warmup_cosine.yaml per optimizer step, windows of 3 batches: trials
    warming up over 3 and 10 steps each follow their own schedule, as alone."""
    args = [
        "experiment=sine_mlp",
        "trainer.max_epochs=2",
        "trainer.accumulate_grad_batches=3",
        "+task/scheduler@task.scheduler=warmup_cosine",
        "task.scheduler.warmup_steps=3,10",
        "task.scheduler.total_steps=16",
        "task.scheduler_interval=step",
        "callbacks=[lr_monitor]",
        "seed=1",
    ]
    sequential, packed = sweep_both(args, tmp_path)
    for seq_run, pk_run in zip(trials_of(sequential), trials_of(packed), strict=True):
        assert_same_run(seq_run, pk_run)


@pytest.mark.slow
def test_packed_cnn_with_batch_norm_and_cosine_schedule_equals_sequential(data_dir, tmp_path):
    args = [
        "experiment=mnist_cnn",
        f"data.data_dir={data_dir}",
        "data.download=false",
        "data.val_size=20",
        "data.batch_size=16",
        "data.eval_batch_size=16",
        "model.blocks=[{channels:4,kernel:3,padding:same,pool:2}]",
        "model.dense=[16]",
        "model.dropout=0",
        "model.dense_dropout=0",
        "trainer.max_epochs=2",
        "trainer.accelerator=cpu",
        *COMMON,
    ]
    sequential, packed = sweep_both(args, tmp_path)
    for seq_run, pk_run in zip(trials_of(sequential), trials_of(packed), strict=True):
        assert_same_run(seq_run, pk_run)
        assert "train/acc" in scalars(pk_run) and "lr-Adam" in scalars(pk_run)


@pytest.mark.slow
def test_packed_sweep_runs_read_like_sequential_ones(tmp_path):
    """A diverging trial fails alone; an unpackable job runs on its own; nnlab-eval and
    nnlab-report read the packed run directories."""
    outputs = tmp_path / "outputs"
    proc = nnlab(
        [
            "-m",
            "hydra/launcher=packed",
            "experiment=sine_mlp",
            "trainer.max_epochs=3",
            "task.optimizer._target_=torch.optim.SGD,torch.optim.Adagrad",
            "task.optimizer.lr=1e-2,1e12",
        ],
        outputs,
        tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    sweep = the_sweep(outputs)
    runs = trials_of(sweep)
    assert [p.name for p in runs] == ["0", "1", "2", "3"]
    # job order: (SGD, 1e-2), (SGD, 1e12), (Adagrad, 1e-2), (Adagrad, 1e12)
    log = proc.stdout + proc.stderr  # Hydra's log lines go to stdout
    assert "runs on its own: optimizer Adagrad" in log
    assert "Training 2 trials as one stacked model: #0, #1" in log
    good, diverged = runs[0], runs[1]
    assert read_status(good)["status"] == "completed"
    status = read_status(diverged)
    assert status["status"] == "failed" and "nan/inf" in status["error"]
    assert not (diverged / "metrics.json").exists()
    metrics = json.loads((good / "metrics.json").read_text())
    assert metrics["epochs"] == 3 and metrics["global_step"] == 66 and metrics["best_epoch"] >= 0
    for path in (".hydra/config.yaml", ".hydra/overrides.yaml", "config.resolved.yaml"):
        assert (good / path).is_file(), path
    assert (good / "checkpoints/last.ckpt").is_file()

    # the best checkpoint is a Lightning checkpoint: nnlab-eval gives metrics.json's numbers
    proc = nnlab([f"run={good}", "split=val"], outputs, tmp_path, module="nnlab.evaluate")
    assert proc.returncode == 0, proc.stderr[-3000:]
    evaluated = json.loads((good / "eval_metrics.json").read_text())
    assert evaluated["val/mse"] == pytest.approx(metrics["val/mse"], rel=1e-5)

    # ... alone, as a sequential run's: it holds the run's config
    alone = tmp_path / "alone"
    alone.mkdir()
    shutil.copy(next((good / "checkpoints").glob("epoch*.ckpt")), alone / "best.ckpt")
    proc = nnlab([f"ckpt={alone / 'best.ckpt'}", "split=val"], outputs, tmp_path, "nnlab.evaluate")
    assert proc.returncode == 0, proc.stderr[-3000:]
    evaluated = json.loads((alone / "best.eval_metrics.json").read_text())
    assert evaluated["val/mse"] == pytest.approx(metrics["val/mse"], rel=1e-5)

    # ... and nnlab-predict / nnlab-export read them as well (last.ckpt too)
    proc = nnlab(
        [f"run={good}", "input=0.1,0.5,0.9,0.3"], outputs, tmp_path, module="nnlab.predict"
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc = nnlab([f"run={good}", "ckpt=last"], outputs, tmp_path, module="nnlab.export")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (good / "export/model.torchscript.pt").is_file()

    report = tmp_path / "report"
    proc = nnlab([f"sweep={sweep}", f"out={report}"], outputs, tmp_path, module="nnlab.report")
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = (report / "leaderboard.csv").read_text().splitlines()
    assert len(rows) == 5 and sum(",failed," in r for r in rows) >= 1


def last_epoch(sweep: Path, trial: int) -> int:
    """The last epoch a packed group recorded for `trial` (its resume state)."""
    try:
        saved = torch.load(sweep / ".packed/group0.ckpt", weights_only=False)
        return saved["trials"][trial]["epoch"]
    except Exception:  # not written yet
        return -1


@pytest.mark.slow
def test_the_group_resume_file_is_written_at_most_every_save_every_s(tmp_path):
    """With a long interval the group's resume file first appears after the last epoch; a
    watcher polling it while the sweep trains never sees an earlier epoch in it."""
    sweep = tmp_path / "outputs/multiruns/interval"
    env = {**os.environ, "NNLAB_OUTPUT_DIR": str(tmp_path / "outputs")}
    command = [sys.executable, "-m", "nnlab.train", "-m", "hydra/launcher=packed"]
    command += ["experiment=sine_mlp", "seed=1,2", "trainer.max_epochs=60", "callbacks=none"]
    command += ["logger=none", "print_config=false", f"hydra.sweep.dir={sweep}"]
    proc = subprocess.Popen(
        [*command, "hydra.launcher.save_every_s=1000"],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    seen = set()
    while proc.poll() is None:
        seen.add(last_epoch(sweep, 0))
        time.sleep(0.005)
    assert proc.returncode == 0, proc.stderr.read()[-3000:]
    seen.add(last_epoch(sweep, 0))
    assert seen <= {-1, 59} and 59 in seen


@pytest.mark.slow
@pytest.mark.parametrize(
    "averaging",
    [(), ("averaging=swa", "averaging.start_epoch=1", "averaging.lr=0.003")],
    ids=["plain", "swa"],  # SWA: the averaged weights, their count and SWALR's state come back
)
def test_killed_packed_sweep_resumes_where_it_stopped(tmp_path, averaging):
    args = [
        "-m",
        "hydra/launcher=packed",
        "experiment=sine_mlp",
        "seed=1,2",
        "trainer.max_epochs=40",
        "callbacks=none",
        "logger=none",
        "hydra.launcher.save_every_s=0",  # the resume file after every epoch
        *averaging,
    ]
    # uninterrupted, for the numbers the resumed sweep must end with
    reference = nnlab(args, tmp_path / "reference", tmp_path)
    assert reference.returncode == 0, reference.stderr[-3000:]
    expected = [
        json.loads((r / "metrics.json").read_text())
        for r in trials_of(the_sweep(tmp_path / "reference"))
    ]

    sweep = tmp_path / "outputs/multiruns/killed"
    env = {**os.environ, "NNLAB_OUTPUT_DIR": str(tmp_path / "outputs")}
    command = [sys.executable, "-m", "nnlab.train", *args, f"hydra.sweep.dir={sweep}"]
    proc = subprocess.Popen(
        command, env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 300
    while last_epoch(sweep, 1) < 2 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the sweep ended before it could be killed"
    stopped_at = last_epoch(sweep, 0)
    assert 2 <= stopped_at < 39
    assert read_status(sweep / "0")["status"] == "running"
    assert not (sweep / "0/metrics.json").exists()

    resumed = subprocess.run(
        command + ["print_config=false"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    for run, want in zip(trials_of(sweep), expected, strict=True):
        status = read_status(run)
        assert status["status"] == "completed" and status["resumed"] == 1
        got = json.loads((run / "metrics.json").read_text())
        assert got["epochs"] == 40 and got["global_step"] == want["global_step"]
        assert got["best_epoch"] == want["best_epoch"]
        for key in ("val/mse", "test/mse"):
            assert got[key] == pytest.approx(want[key], rel=REL, abs=ABS), key
        assert "resumed" in (run / "train.log").read_text()

    # run once more: the completed trials are kept, not trained again
    again = subprocess.run(
        command + ["print_config=false"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert again.returncode == 0 and again.stdout.count("completed before; kept") == 2


SEARCH = """# @package _global_
defaults:
  - override /hydra/sweeper: optuna
  - override /hydra/sweeper/sampler: tpe
optimized_metric: val/mse
hydra:
  mode: MULTIRUN
  sweeper:
    direction: minimize
    study_name: packed_lr
    storage: null
    n_trials: 6
    n_jobs: 3
    sampler:
      seed: 1
    params:
      task.optimizer.lr: tag(log, interval(1e-4, 3e-2))
"""


@pytest.mark.slow
def test_optuna_batches_of_n_jobs_trials_are_packed(tmp_path):
    """hydra.sweeper.n_jobs trials per Optuna batch reach the launcher together; a search over
    the learning rate keeps the shapes, so each batch trains as one model."""
    conf = tmp_path / "conf/hparams_search"
    conf.mkdir(parents=True)
    (conf / "packed_lr.yaml").write_text(SEARCH)
    outputs = tmp_path / "outputs"
    proc = nnlab(
        [
            f"hydra.searchpath=[file://{tmp_path / 'conf'}]",
            "experiment=sine_mlp",
            "hparams_search=packed_lr",
            "hydra/launcher=packed",
            "debug=limit",
        ],
        outputs,
        tmp_path,
    )
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    assert "Training 3 trials as one stacked model: #0, #1, #2" in log
    assert "Training 3 trials as one stacked model: #3, #4, #5" in log
    runs = trials_of(the_sweep(outputs))
    assert len(runs) == 6 and all((r / "metrics.json").is_file() for r in runs)
    assert "Best value" in log


@pytest.mark.parametrize(
    "setting,message",
    [
        (  # the schema's check (the launcher's annotations), before any trial
            "recurrent=fast",
            "hydra.launcher.recurrent: got 'fast'; expected one of 'auto', 'batched' or "
            "'per_trial'; set hydra.launcher.recurrent=... to such a value",
        ),
        (
            "save_every_s=-1",
            "hydra.launcher.save_every_s: got -1; expected a number >= 0; set "
            "hydra.launcher.save_every_s=... to such a value",
        ),
    ],
)
def test_a_bad_launcher_setting_is_refused(tmp_path, setting, message):
    proc = nnlab(
        ["-m", "hydra/launcher=packed", f"hydra.launcher.{setting}", "experiment=sine_lstm"]
        + ["seed=1,2", "trainer.max_epochs=1"],
        tmp_path / "out",
        tmp_path,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-1] == f"error: {message}"
    assert not list((tmp_path / "out").glob("multiruns/*/*/0"))  # no trial started


def test_each_trial_is_composed_and_checked_once(tmp_path, monkeypatch, capfd):
    """nnlab's up-front check composes, resolves and checks every trial before the sweep starts;
    Hydra's sweeper (its validation of the batch) and the packed launcher take those configs
    (schema.CHECKED_JOBS) instead of composing, resolving and checking each again."""
    from conftest import train_in_process

    import nnlab.packed.launcher as packed_launcher
    from nnlab import schema
    from nnlab.compat import hydra as hydra_compat

    composed, checked = [], []
    compose, check = hydra_compat.compose_job, packed_launcher.check

    def counted_compose(*args, **kwargs):
        composed.append(tuple(args[2]))
        return compose(*args, **kwargs)

    def counted_check(cfg):
        checked.append(cfg)
        return check(cfg)

    monkeypatch.setattr(hydra_compat, "compose_job", counted_compose)
    monkeypatch.setattr(packed_launcher, "check", counted_check)
    argv = ["-m", "hydra/launcher=packed", "experiment=sine_mlp", "trainer.max_epochs=1"]
    argv += ["seed=1,2", "task.optimizer.lr=1e-3,1e-2", "logger=none"]
    code, out = train_in_process(argv, tmp_path, monkeypatch, capfd)
    assert code == 0, out[-3000:]
    assert "Training 4 trials as one stacked model: #0, #1, #2, #3" in out
    assert len(composed) == len(set(composed)) == 4  # each trial's overrides, once
    assert checked == [] and schema.CHECKED_JOBS == {}  # all taken


def test_a_resume_file_gives_each_trial_its_rows_and_other_files_are_skipped(tmp_path, caplog):
    """load_states: a trial's rows of its group's stacked tensors (row `index`), the newest
    epoch of a trial found in two files; a damaged file or one of an older format is skipped
    with a warning (those trials start again)."""
    from nnlab.packed.group import STATE_DIR, STATE_FORMAT, load_states

    folder = tmp_path / STATE_DIR
    folder.mkdir()
    stacked = {"flat": torch.arange(6.0).view(2, 3), "buffers": {"b": torch.tensor([[1.0], [2.0]])}}
    trials = {5: {"index": 1, "epoch": 2}, 7: {"index": 0, "epoch": 2}}
    torch.save(
        {"format": STATE_FORMAT, "trials": trials, "stacked": stacked}, folder / "group5.ckpt"
    )
    older = {"format": STATE_FORMAT, "trials": {7: {"index": 1, "epoch": 1}}, "stacked": stacked}
    torch.save(older, folder / "group7.ckpt")
    torch.save({"trials": {9: {"epoch": 3}}}, folder / "group9.ckpt")  # no format: older nnlab
    (folder / "group11.ckpt").write_bytes(b"not a checkpoint")
    with caplog.at_level(logging.WARNING):
        states = load_states(tmp_path)
    assert sorted(states) == [5, 7]
    assert torch.equal(states[5]["rows"]["flat"], torch.tensor([3.0, 4.0, 5.0]))
    assert states[5]["rows"]["buffers"]["b"].item() == 2.0
    assert states[7]["epoch"] == 2 and torch.equal(states[7]["rows"]["flat"], torch.arange(3.0))
    assert "group9.ckpt: written by an older nnlab" in caplog.text
    assert "damaged packed state" in caplog.text and "group11.ckpt" in caplog.text
