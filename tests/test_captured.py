"""The training loops (tasks/loops.py) and the CUDA-graph step (tasks/captured.py).

On the CPU the step cannot be captured, but everything around it is checked: the fused loop
(`task.loop=fused`, the CPU's `auto`: micro-batches split from grouped batches, Lightning's step
counter, schedulers, clipping, epoch metrics, checkpoints, batch-counting trainer keys) runs with
eager steps and must train exactly like Lightning's automatic loop. The capture itself is
checked on a GPU when one exists.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import lightning as L
import pytest
import torch
from omegaconf import open_dict

from nnlab.engine.capabilities import graph_optimizer, why_not
from nnlab.engine.step import ModuleParameters, OptimizerStep
from nnlab.errors import ConfigError
from nnlab.runs import Run
from nnlab.schema import check_node
from nnlab.tasks import loops
from nnlab.tasks.captured import CapturedStep, plain_lrs
from nnlab.tasks.classification import ClassificationTask
from nnlab.train import train as train_run


def train(cfg):
    """nnlab's train() in this process, as hydra_main calls it (the config without `hydra`)."""
    with open_dict(cfg):
        del cfg["hydra"]
    return train_run(cfg, Run(cfg.paths.output_dir))


needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

ADAM = {"_target_": "torch.optim.Adam", "_partial_": True, "lr": 1e-3}
SGD = {"_target_": "torch.optim.SGD", "_partial_": True, "lr": 1e-2}
COSINE = {"_target_": "torch.optim.lr_scheduler.CosineAnnealingLR", "_partial_": True, "T_max": 3}
PLATEAU = {"_target_": "torch.optim.lr_scheduler.ReduceLROnPlateau", "_partial_": True}


@pytest.mark.parametrize(
    "optimizer, scheduler, reason",
    [
        (ADAM, COSINE, None),
        ({**ADAM, "_target_": "torch.optim.RMSprop"}, None, None),
        (SGD, None, None),
        (SGD, COSINE, "torch.optim.SGD cannot step inside a CUDA graph with a scheduler"),
        ({**ADAM, "_target_": "torch.optim.Adagrad"}, None, "torch.optim.Adagrad cannot"),
    ],
)
def test_which_optimizers_can_step_inside_a_graph(optimizer, scheduler, reason):
    found = graph_optimizer(optimizer, scheduler)
    assert (found is None) if reason is None else reason in found


def test_on_the_cpu_the_step_stays_eager_and_says_why(make_cfg, caplog):
    cfg = make_cfg("experiment=sine_mlp", "trainer.max_epochs=1", "task.loop=cuda_graph")
    with caplog.at_level(logging.INFO, logger="nnlab.tasks.loops"):
        train(cfg)
    assert "CUDA graph: off, the fused loop's eager steps (training runs on cpu" in caplog.text
    assert "WARNING" in caplog.text  # asked for by name: a warning, not just a note


def test_the_default_loop_is_the_fused_one_on_the_cpu(make_cfg, caplog):
    cfg = make_cfg("experiment=sine_mlp", "trainer.max_epochs=1")
    assert cfg.task.loop == "auto"
    with caplog.at_level(logging.INFO, logger="nnlab.tasks.loops"):
        train(cfg)
    assert "Training loop: fused, 32 micro-batches per Lightning batch" in caplog.text
    assert "WARNING" not in caplog.text


MLP = {"_target_": "nnlab.models.mlp.MLP", "input_size": 4, "hidden_sizes": [8], "output_size": 3}


class FakeTrainer:
    """What the capability checks read from a trainer."""

    class strategy:  # noqa: N801 - a stand-in for trainer.strategy
        root_device = torch.device("cuda", 0)

    world_size, precision, accumulate_grad_batches = 1, "32-true", 1
    callbacks: list = []

    class datamodule:  # noqa: N801
        def example_input(n):  # noqa: N805 - called on the class
            return torch.zeros(n, 4)


def test_the_capability_check_names_what_keeps_a_run_in_lightnings_loop():
    task, trainer = ClassificationTask(net=MLP, num_classes=3), FakeTrainer()
    assert why_not("fused", task=task, trainer=trainer) is None
    assert why_not("captured", task=task, trainer=trainer) is None

    class TextData:
        def example_input(n):  # noqa: N805
            return torch.zeros(n, 5, dtype=torch.long), torch.full((n,), 5)

    trainer.datamodule = TextData
    assert "variable-length" in why_not("captured", task=task, trainer=trainer)
    assert why_not("fused", task=task, trainer=trainer) is None  # the fused loop runs them eagerly

    class GradientWatcher(L.Callback):
        def on_after_backward(self, trainer, pl_module):
            pass

    trainer.callbacks = [GradientWatcher()]
    assert "GradientWatcher overrides on_after_backward" in why_not(
        "fused", task=task, trainer=trainer
    )
    trainer.callbacks = []

    class OwnStep(ClassificationTask):
        def training_step(self, batch, batch_idx):
            return super().training_step(batch, batch_idx)

    own = OwnStep(net=MLP, num_classes=3)
    assert "OwnStep defines its own training_step" in why_not("fused", task=own, trainer=trainer)
    plateau = ClassificationTask(net=MLP, num_classes=3, scheduler=PLATEAU)
    assert why_not("fused", task=plateau, trainer=trainer) is None  # stepped at the epoch's end
    assert "ReduceLROnPlateau" in why_not("captured", task=plateau, trainer=trainer)
    per_step = ClassificationTask(
        net=MLP, num_classes=3, scheduler=PLATEAU, scheduler_interval="step"
    )
    assert "ReduceLROnPlateau stepped per step" in why_not("fused", task=per_step, trainer=trainer)
    trainer.world_size = 2
    assert "DDP" in why_not("fused", task=task, trainer=trainer)


@pytest.mark.parametrize(
    "given, expected",
    [
        ({}, ("auto", 32)),
        ({"cuda_graph": False, "fused_loop": False, "graph_batches": 8}, ("lightning", 8)),
        ({"cuda_graph": False, "fused_loop": True, "graph_batches": 3}, ("fused", 3)),
        ({"cuda_graph": "auto", "fused_loop": False}, ("auto", 32)),
        ({"cuda_graph": True}, ("cuda_graph", 32)),
    ],
)
def test_the_keys_the_loop_had_before_still_load(given, expected):
    assert loops.loop_keys("auto", 32, given) == expected
    task = ClassificationTask(net=MLP, num_classes=3, **given)
    assert (task.hparams.loop, task.hparams.micro_batches) == expected
    assert "fused_loop" not in task.hparams


def test_bad_loop_keys_name_the_key():
    """The schema checks the engine keys as the task's (engine/keys.py: ENGINE_KEYS)."""
    task = {"_target_": "nnlab.tasks.regression.RegressionTask", "net": {"_target_": "x.Y"}}
    with pytest.raises(ConfigError, match="task.loop: got 'fast'"):
        check_node({**task, "loop": "fast"}, "task")
    with pytest.raises(ConfigError, match="task.micro_batches: got 0"):
        check_node({**task, "micro_batches": 0}, "task")
    with pytest.raises(ConfigError, match="task.graph_batchez: unknown key"):
        check_node({**task, "graph_batchez": 3}, "task")
    check_node({**task, "loop": "fused", "micro_batches": 4, "fused_loop": True}, "task")


RECIPE = (
    "experiment=mnist_lstm",
    "trainer.accelerator=cpu",
    "trainer.max_epochs=2",
    "model.hidden_size=16",
    "data.val_size=20",
    "data.batch_size=16",
    "callbacks=none",
    "logger=none",
)


@pytest.mark.parametrize(
    "clipping, groups",
    [
        ((), (1, 3)),
        (("+trainer.gradient_clip_algorithm=value", "trainer.gradient_clip_val=0.01"), (2,)),
    ],
)
def test_the_fused_loop_trains_like_lightnings_own(
    make_cfg, data_dir, monkeypatch, clipping, groups
):
    """Cosine schedule, clipping (norm 1, or values at 0.01), 2 epochs: grouped micro-batches
    and the manual loop give the same steps, learning rates, losses and test metrics as
    Lightning's automatic loop."""
    monkeypatch.setenv("NNLAB_DATA_DIR", str(data_dir))
    eager = train(make_cfg(*RECIPE, *clipping, "task.loop=lightning"))
    for group in groups:
        graphed = train(
            make_cfg(*RECIPE, *clipping, "task.loop=fused", f"task.micro_batches={group}")
        )
        assert graphed["global_step"] == eager["global_step"]
        for key in ("test/acc", "test/loss", "val/loss"):
            assert graphed[key] == pytest.approx(eager[key], rel=1e-4, abs=1e-6), (group, key)


def test_a_plateau_schedule_in_the_fused_loop_steps_as_in_lightnings_loop(
    make_cfg, data_dir, monkeypatch
):
    """ReduceLROnPlateau (patience 0, factor 0.5) reads val/loss at each epoch's end in both loops:
    the same steps and metrics after 4 epochs of reduced rates."""
    monkeypatch.setenv("NNLAB_DATA_DIR", str(data_dir))
    plateau = (
        "trainer.max_epochs=4",
        "task.scheduler._target_=torch.optim.lr_scheduler.ReduceLROnPlateau",
        "~task.scheduler.T_max",  # (the preset's cosine schedule's)
        "+task.scheduler.patience=0",
        "+task.scheduler.factor=0.5",
        "+task.scheduler.threshold=0.5",
    )
    runs = {}
    for loop in ("lightning", "fused"):
        cfg = make_cfg(*RECIPE, *plateau, f"task.loop={loop}", "task.micro_batches=3")
        runs[loop] = train(cfg)
        checkpoint = torch.load(Run(cfg.paths.output_dir).checkpoint("last"), weights_only=False)
        runs[loop]["lr"] = checkpoint["optimizer_states"][0]["param_groups"][0]["lr"]
    # both reduced the rate (the last checkpoint is written before Lightning's loop steps its
    # epoch schedulers and after the fused loop's: equal metrics say they reduced alike)
    assert runs["fused"]["lr"] < 1e-3 and runs["lightning"]["lr"] < 1e-3
    assert runs["fused"]["global_step"] == runs["lightning"]["global_step"]
    for key in ("test/acc", "test/loss", "val/loss"):
        assert runs["fused"][key] == pytest.approx(runs["lightning"][key], rel=1e-4, abs=1e-6), key


@pytest.mark.parametrize(
    "counts, steps",
    [
        (("trainer.limit_train_batches=3",), 2 * 3),
        (("trainer.limit_train_batches=0.25",), 2 * 5),  # int(22 batches * 0.25)
        (("+trainer.max_steps=5",), 5),
        (("+trainer.overfit_batches=2",), 2 * 2),
        (("+trainer.fast_dev_run=true",), 1),
    ],
    ids=["limit", "fraction", "max_steps", "overfit", "fast_dev_run"],
)
@pytest.mark.slow
def test_batch_counts_mean_optimizer_steps_in_the_default_loop(make_cfg, caplog, counts, steps):
    """sine_mlp: 22 batches per epoch. The keys that count Lightning's batches count optimizer
    steps in the default (fused) loop too, and it trains like Lightning's loop."""
    recipe = ("experiment=sine_mlp", "trainer.max_epochs=2", *counts)
    with caplog.at_level(logging.INFO, logger="nnlab.tasks.loops"):
        fused = train(make_cfg(*recipe))
    assert "Training loop: fused, 1 micro-batch per Lightning batch (trainer." in caplog.text
    lightning = train(make_cfg(*recipe, "task.loop=lightning"))
    assert fused["global_step"] == lightning["global_step"] == steps
    assert fused["test/mse"] == pytest.approx(lightning["test/mse"], rel=1e-5)


def test_a_nan_loss_is_named_at_the_same_step_in_both_loops(make_cfg):
    from nnlab.callbacks.resilience import NonFiniteLossError

    messages = []
    for loop in ("fused", "lightning"):
        with pytest.raises(NonFiniteLossError) as error:
            train(make_cfg("experiment=sine_mlp", "task.optimizer.lr=1e30", f"task.loop={loop}"))
        messages.append(str(error.value).split(" (batch")[0])  # batches: Lightning's count
    assert messages[0] == messages[1] and "at epoch 0, step" in messages[0]


@pytest.mark.slow
def test_the_fused_loop_logs_epoch_metrics_and_saves_plain_checkpoints(
    make_cfg, data_dir, monkeypatch, caplog
):
    monkeypatch.setenv("NNLAB_DATA_DIR", str(data_dir))
    cfg = make_cfg(*RECIPE[:-2], "task.loop=fused", "task.micro_batches=4")
    with caplog.at_level(logging.INFO):
        metrics = train(cfg)
    assert "Training loop: fused, 4 micro-batches per Lightning batch" in caplog.text
    assert "step captured" not in caplog.text  # the CPU never records a graph
    assert metrics["global_step"] == 2 * 7  # optimizer steps: 2 epochs of 100 samples / 16
    checkpoint = torch.load(metrics["best_checkpoint"], map_location="cpu", weights_only=False)
    group = checkpoint["optimizer_states"][0]["param_groups"][0]
    assert isinstance(group["lr"], float) and not group["capturable"]
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    scalars = {
        tag
        for events in Path(cfg.paths.output_dir).rglob("events.out.tfevents.*")
        for tag in EventAccumulator(str(events)).Reload().Tags()["scalars"]
    }
    assert {"train/loss", "train/acc", "val/acc"} <= set(scalars)


def test_the_step_and_the_epoch_sums_match_plain_steps():
    """CapturedStep on the CPU: each micro-batch one optimizer step, loss and correct predictions
    summed on the device for the epoch."""
    torch.manual_seed(0)
    net = torch.nn.Linear(3, 2)
    reference = torch.nn.Linear(3, 2)
    reference.load_state_dict(net.state_dict())
    x, y = torch.randn(10, 3), torch.randint(0, 2, (10,))

    def loss_fn(batch):
        logits = net(batch[0])
        return torch.nn.functional.cross_entropy(logits, batch[1]), (
            logits.argmax(-1) == batch[1]
        ).sum()

    sums = loops.EpochSums(torch.device("cpu"))
    optimizer = torch.optim.Adam(net.parameters(), lr=0.1)
    parameters = ModuleParameters(net.parameters(), optimizer, clip_val=0.5)
    step = CapturedStep(OptimizerStep(parameters), loss_fn, sums, micro_batch_size=4)
    for micro in zip(x.split(4), y.split(4), strict=True):  # 4 + 4 + 2
        step(micro)
        sums.samples += len(micro[0])

    optimizer = torch.optim.Adam(reference.parameters(), lr=0.1)
    losses, correct = [], 0
    for xs, ys in zip(x.split(4), y.split(4), strict=True):
        optimizer.zero_grad()
        logits = reference(xs)
        loss = torch.nn.functional.cross_entropy(logits, ys)
        losses.append(loss.item() * len(xs))
        correct += (logits.argmax(-1) == ys).sum().item()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(reference.parameters(), 0.5)
        optimizer.step()
    for a, b in zip(net.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(a, b)
    metrics = sums.metrics()
    assert metrics["train/loss"].item() == pytest.approx(sum(losses) / 10, rel=1e-6)
    assert metrics["train/acc"].item() == pytest.approx(correct / 10)


def test_checkpoint_learning_rates_become_numbers():
    checkpoint = {
        "optimizer_states": [{"param_groups": [{"lr": torch.tensor(0.5), "capturable": True}]}],
        "lr_schedulers": [{"_last_lr": [torch.tensor(0.25)], "base_lrs": [0.5]}],
    }
    plain_lrs(checkpoint)
    assert checkpoint["optimizer_states"][0]["param_groups"][0] == {"lr": 0.5, "capturable": False}
    assert checkpoint["lr_schedulers"][0]["_last_lr"] == [0.25]


@needs_cuda
def test_the_graph_replays_the_eager_step_on_a_gpu(caplog):
    """Captured and eager training of the same LSTM from the same start reach the same weights
    (within float noise), including a short last micro-batch and a learning-rate change."""
    torch.manual_seed(0)
    device = torch.device("cuda")
    x = torch.randn(70, 28, 28, device=device)
    y = torch.randint(0, 10, (70,), device=device)

    def make():
        torch.manual_seed(1)
        lstm = torch.nn.LSTM(28, 32, batch_first=True).to(device)
        head = torch.nn.Linear(32, 10).to(device)
        return lstm, head

    def run(graphed: bool):
        lstm, head = make()
        params = [*lstm.parameters(), *head.parameters()]
        optimizer = torch.optim.Adam(params, lr=1e-2)
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)

        def loss_fn(batch):
            out, _ = lstm(batch[0])
            logits = head(out[:, -1])
            return torch.nn.functional.cross_entropy(logits, batch[1]), (
                logits.argmax(-1) == batch[1]
            ).sum()

        sums = loops.EpochSums(device)
        parameters = ModuleParameters(params, optimizer, clip_val=1.0)
        step = CapturedStep(OptimizerStep(parameters), loss_fn, sums, micro_batch_size=16)
        if not graphed:
            step.eager_reason = "reference"
        for _ in range(3):
            sums.reset()
            for micro in zip(x.split(16), y.split(16), strict=True):  # 4 x 16, then 6
                step(micro)
                sums.samples += len(micro[0])
            scheduler.step()
        torch.cuda.synchronize()
        return params, step, sums

    with caplog.at_level(logging.INFO, logger="nnlab.tasks.captured"):
        graphed, step, sums = run(True)
    assert step.graph is not None and "captured for micro-batches of 16" in caplog.text
    eager, _, reference = run(False)
    for a, b in zip(graphed, eager, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4)
    assert sums.metrics()["train/loss"].item() == pytest.approx(
        reference.metrics()["train/loss"].item(), rel=1e-3
    )


def test_device_losses_are_checked_in_batches_naming_the_first_bad_step(monkeypatch):
    """On a GPU the NaN check reads the losses every log_every_n_steps batches (no sync per
    step) and still names the first bad step; a checkpoint save checks first."""
    from nnlab.callbacks.resilience import NonFiniteLoss, NonFiniteLossError

    monkeypatch.setattr(NonFiniteLoss, "_deferred", staticmethod(lambda loss: True))

    class Trainer:
        current_epoch, global_step, log_every_n_steps = 0, 0, 4

    callback, trainer = NonFiniteLoss(), Trainer()
    losses = [1.0, float("nan"), 2.0, float("inf")]
    for i, value in enumerate(losses[:3]):
        trainer.global_step = i + 1
        callback.on_train_batch_end(trainer, None, {"loss": torch.tensor(value)}, None, i)
    with pytest.raises(NonFiniteLossError, match=r"became nan at epoch 0, step 2 \(batch 1\)"):
        callback.on_save_checkpoint(trainer, None, {})
    trainer.global_step = 9
    callback.on_train_batch_end(trainer, None, {"loss": torch.tensor(float("inf"))}, None, 8)
    with pytest.raises(NonFiniteLossError, match="became inf at epoch 0, step 9"):
        for i in range(3):  # the fourth pending loss triggers the read
            callback.on_train_batch_end(trainer, None, {"loss": torch.tensor(1.0)}, None, 9 + i)


@pytest.mark.slow
def test_torch_compile_option_keeps_checkpoints_interchangeable(make_cfg, caplog):
    cfg = make_cfg("experiment=sine_mlp", "trainer.max_epochs=2", "task.compile={backend:eager}")
    with caplog.at_level(logging.INFO, logger="nnlab.tasks.base"):
        metrics = train(cfg)
    assert "torch.compile: on" in caplog.text
    state = torch.load(metrics["best_checkpoint"], map_location="cpu", weights_only=False)
    assert not any("_orig_mod" in key for key in state["state_dict"])
    assert metrics["test/mse"] < 1.0


def test_a_fused_run_resumed_from_a_checkpoint_ends_where_an_unbroken_one_does(make_cfg):
    """Optimizer state, step counter and batch order come back: epoch 2 trained after a restart
    from the epoch-1 checkpoint gives the same weights as the run that never stopped."""
    recipe = (
        "experiment=sine_mlp",
        "trainer.max_epochs=2",
        "task.loop=fused",
        "task.micro_batches=3",
        "data.shuffle=true",
        "checkpoint.save_top_k=-1",
        "data.shuffle_seed=7",
        "data.seed=5",
    )
    whole = train(make_cfg(*recipe))
    first = sorted(Path(whole["best_checkpoint"]).parent.glob("epoch000-*.ckpt"))[0]
    # Another seed: only what the checkpoint restores can make the two runs agree.
    resumed = train(make_cfg(*recipe, "seed=99", f"ckpt_path={first}"))
    assert resumed["global_step"] == whole["global_step"]
    assert resumed["test/mse"] == pytest.approx(whole["test/mse"], rel=1e-6)


# 2 epochs of 11 micro-batches, 2 per Lightning batch
GROUPED = (
    "experiment=sine_mlp",
    "trainer.max_epochs=2",
    "data.batch_size=64",
    "task.loop=fused",
    "task.micro_batches=2",
)


def periodic_checkpoints(metrics: dict) -> list[str]:
    periodic = Path(metrics["best_checkpoint"]).parent / "periodic"
    return sorted(p.name for p in periodic.glob("*.ckpt"))


def test_periodic_checkpoints_keep_coming_when_batches_carry_several_steps(make_cfg):
    """11 micro-batches per epoch, 2 per Lightning batch: from the second epoch on the step count
    is odd and never lands on a multiple of 4; the checkpoint still comes once it passes one."""
    metrics = train(make_cfg(*GROUPED, "checkpoint.every_n_train_steps=4"))
    assert metrics["global_step"] == 22
    assert periodic_checkpoints(metrics) == ["step000021.ckpt"]  # passed 20


@pytest.mark.parametrize(("minutes", "saved"), [(1e-9, ["step000021.ckpt"]), (0, [])])
def test_periodic_checkpoints_by_training_time(make_cfg, minutes, saved):
    """`checkpoint.every_n_minutes`: a save whenever that much training time has passed since
    the last one (here: at every batch but an epoch's last, where last.ckpt follows at the
    epoch's end; the newest kept); 0 with no step interval: none."""
    overrides = (f"checkpoint.every_n_minutes={minutes}", "checkpoint.every_n_train_steps=0")
    metrics = train(make_cfg(*GROUPED, *overrides))
    assert periodic_checkpoints(metrics) == saved


WARMUP = (
    "+task.scheduler={_target_:torch.optim.lr_scheduler.LinearLR,_partial_:true,"
    "start_factor:0.1,total_iters:10}",
    "task.scheduler_interval=step",
)


@pytest.mark.parametrize("accumulate", [1, 3])
@pytest.mark.slow
def test_accumulation_and_a_per_step_warm_up_train_as_in_lightnings_loop(
    make_cfg, caplog, accumulate
):
    """sine_mlp, 22 batches an epoch: windows of 3 batches (the epoch's last one short), a
    learning rate warmed up over the first 10 optimizer steps; grouped micro-batches (whose
    groups do not line up with the windows) and one per Lightning batch, against Lightning's."""
    recipe = (
        "experiment=sine_mlp",
        "trainer.max_epochs=2",
        f"trainer.accumulate_grad_batches={accumulate}",
        *WARMUP,
    )
    lightning = train(make_cfg(*recipe, "task.loop=lightning"))
    assert lightning["global_step"] == 2 * math.ceil(22 / accumulate)
    for group in (4, 1):
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="nnlab.tasks.loops"):
            fused = train(make_cfg(*recipe, "task.loop=fused", f"task.micro_batches={group}"))
        assert f"Training loop: fused, {group} micro-batch" in caplog.text
        assert fused["global_step"] == lightning["global_step"], group
        for key in ("test/mse", "val/loss"):
            assert fused[key] == pytest.approx(lightning[key], rel=1e-5, abs=1e-7), (group, key)
