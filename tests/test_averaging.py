"""Weight averaging (`averaging=ema | swa`, nnlab/engine/averaging.py), one rule in every engine:
the rule by hand, against Lightning's own WeightAveraging callbacks, the fused loop against
Lightning's loop, the averaged weights in checkpoints and what nnlab-eval / nnlab-predict load,
and the schema's refusals. Packed trials against the same trials alone: tests/test_packed.py."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import EMAWeightAveraging, WeightAveraging
from omegaconf import open_dict

from nnlab.engine.averaging import CURRENT, EMA, SWA, blend
from nnlab.errors import ConfigError
from nnlab.runs import Run
from nnlab.schema import check_node
from nnlab.train import train as train_run


def train(cfg, *callbacks):
    with open_dict(cfg):
        del cfg["hydra"]
    return train_run(cfg, Run(cfg.paths.output_dir), callbacks)


def test_the_rule_by_hand_and_stacked_trials_each_as_alone():
    a, b, c = torch.tensor([1.0, 2.0]), torch.tensor([3.0, -2.0]), torch.tensor([0.5, 0.0])
    assert torch.equal(blend(a, b, 0, 0.9), b)  # the first update copies
    assert torch.allclose(blend(a, b, 1, 0.9), 0.9 * a + 0.1 * b)
    assert torch.allclose(blend(a, c, 2), (2 * a + c) / 3)  # SWA: the mean of 3
    # stacked (trials, n), per-trial decay and count: each row as that trial alone
    avg, cur = torch.stack([a, b]), torch.stack([c, a])
    decay, count = torch.tensor([[0.9], [0.5]]), torch.tensor([[3.0], [0.0]])
    rows = blend(avg, cur, count, decay, 1 - decay)
    assert torch.equal(rows[0], blend(a, c, 3, torch.tensor(0.9)))
    assert torch.equal(rows[1], a)
    swa = blend(avg, cur, count)
    assert torch.equal(swa[0], blend(a, c, torch.tensor(3.0))) and torch.equal(swa[1], a)


class Tiny(L.LightningModule):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.layer = torch.nn.Linear(3, 1)

    def training_step(self, batch, batch_idx):
        return (self.layer(batch[0]) - batch[1]).pow(2).mean()

    def validation_step(self, batch, batch_idx):
        self.log("val/loss", (self.layer(batch[0]) - batch[1]).pow(2).mean())

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def fitted(callback, tmp_path, epochs=3, accumulate=1) -> torch.Tensor:
    torch.manual_seed(1)
    data = torch.utils.data.TensorDataset(torch.randn(24, 3), torch.randn(24, 1))
    loader = torch.utils.data.DataLoader(data, batch_size=4)
    model = Tiny()
    trainer = L.Trainer(
        max_epochs=epochs,
        callbacks=[callback],
        accumulate_grad_batches=accumulate,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(model, loader, loader)
    return torch.cat([p.detach().flatten() for p in model.parameters()])


class LightningSWA(WeightAveraging):
    def __init__(self, start_epoch):
        super().__init__(use_buffers=False)
        self.start_epoch = start_epoch

    def should_update(self, step_idx=None, epoch_idx=None):
        return epoch_idx is not None and epoch_idx >= self.start_epoch


@pytest.mark.parametrize("accumulate", [1, 3])
def test_the_callback_averages_as_lightnings_weight_averaging(tmp_path, accumulate):
    """In Lightning's loop, EMA equals Lightning's EMAWeightAveraging (use_buffers=False) and
    SWA its WeightAveraging updated after epochs, on the weights the network ends with."""
    ours = fitted(EMA(decay=0.7), tmp_path, accumulate=accumulate)
    theirs = fitted(
        EMAWeightAveraging(decay=0.7, use_buffers=False), tmp_path, accumulate=accumulate
    )
    assert torch.equal(ours, theirs)
    raw = fitted(L.Callback(), tmp_path, accumulate=accumulate)
    assert not torch.allclose(ours, raw)
    assert torch.allclose(fitted(SWA(start_epoch=1), tmp_path), fitted(LightningSWA(1), tmp_path))


class Steps(L.Callback):
    """The trained weights after every optimizer step (Lightning's loop: one per batch)."""

    def __init__(self):
        self.weights: list[dict[str, torch.Tensor]] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.weights.append({n: p.detach().clone() for n, p in pl_module.named_parameters()})


SMALL = (
    "experiment=sine_mlp",
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=3",
    "averaging=ema",
    "averaging.decay=0.5",
    "logger=none",
)


def test_checkpoints_and_the_commands_hold_the_averaged_weights(make_cfg, tmp_path):
    """Three steps, decay 0.5: the best checkpoint's weights are the EMA computed by hand from
    the weights after each step (the trained ones under current_model_state); nnlab-eval and
    nnlab-predict (cli.load_task) read the averaged weights."""
    steps = Steps()
    metrics = train(make_cfg(*SMALL, "task.loop=lightning"), steps)
    assert len(steps.weights) == 3
    expected = dict(steps.weights[0])
    for w in steps.weights[1:]:
        expected = {n: 0.5 * expected[n] + 0.5 * w[n] for n in expected}
    checkpoint = torch.load(metrics["best_checkpoint"], map_location="cpu", weights_only=False)
    for name, value in expected.items():
        assert torch.allclose(checkpoint["state_dict"][name], value, atol=1e-7), name
        assert torch.equal(checkpoint[CURRENT][name], steps.weights[-1][name]), name
    trained = steps.weights[-1]
    assert any(not torch.allclose(checkpoint["state_dict"][n], w) for n, w in trained.items())

    from nnlab.tasks.regression import RegressionTask  # what cli.load_task does

    task = RegressionTask.load_from_checkpoint(metrics["best_checkpoint"], map_location="cpu")
    first = next(w for w in expected.values() if w.dim() == 2)  # the MLP's first layer
    x = torch.randn(5, first.shape[1])
    averaged = torch.func.functional_call(task.net, {k[4:]: v for k, v in expected.items()}, (x,))
    assert torch.allclose(task(x), averaged, atol=1e-6)
    trained = {k[4:]: v for k, v in trained.items()}
    assert not torch.allclose(task(x), torch.func.functional_call(task.net, trained, (x,)))


def test_eval_and_predict_read_the_averaged_weights(cli, tmp_path):
    """nnlab-eval reports what the run's own test of its best (averaged) checkpoint reported,
    and nnlab-predict's forecast comes from the averaged weights: not the trained ones."""
    run = cli(*SMALL).run_dir()
    metrics = json.loads((run / "metrics.json").read_text())
    cli(f"run={run}", module="nnlab.evaluate")
    evaluated = json.loads((run / "eval_metrics.json").read_text())
    assert evaluated["test/mse"] == pytest.approx(metrics["test/mse"], rel=1e-6)
    checkpoint = torch.load(metrics["best_checkpoint"], map_location="cpu", weights_only=False)
    trained = dict(checkpoint, state_dict=checkpoint[CURRENT])  # the same run, not averaged
    torch.save(trained, run / "checkpoints" / "trained.ckpt")
    forecasts = []
    for ckpt in ("best", str(run / "checkpoints" / "trained.ckpt")):
        out = tmp_path / f"predicted-{len(forecasts)}"
        cli(f"run={run}", f"ckpt={ckpt}", "steps=3", f"out={out}", module="nnlab.predict")
        forecasts.append((out / "predictions.csv").read_text())
    assert forecasts[0] != forecasts[1]


@pytest.mark.parametrize(
    "averaging",
    [
        ("averaging=ema", "averaging.decay=0.9"),
        (
            "averaging=swa",
            "averaging.start_epoch=1",
            "averaging.lr=0.003",
            "averaging.anneal_epochs=1",
        ),
    ],
    ids=["ema", "swa"],
)
def test_the_fused_loop_averages_as_lightnings_loop(make_cfg, averaging):
    """sine_mlp, 3 epochs of 22 batches, windows of 2 batches: Lightning's loop and the fused
    loop (groups of 4 micro-batches, which do not line up with the windows) validate, choose
    and test the same averaged weights; without averaging the results differ."""
    recipe = (
        "experiment=sine_mlp",
        "trainer.max_epochs=3",
        "trainer.accumulate_grad_batches=2",
        "logger=none",
    )
    lightning = train(make_cfg(*recipe, *averaging, "task.loop=lightning"))
    fused = train(make_cfg(*recipe, *averaging, "task.loop=fused", "task.micro_batches=4"))
    assert fused["global_step"] == lightning["global_step"] == 3 * 11
    assert fused["best_epoch"] == lightning["best_epoch"]
    for key in ("test/mse", "val/loss"):
        assert fused[key] == pytest.approx(lightning[key], rel=1e-5, abs=1e-7), key
    plain = train(make_cfg(*recipe, "task.loop=fused", "task.micro_batches=4"))
    assert plain["val/loss"] != pytest.approx(fused["val/loss"], rel=1e-3)


@pytest.mark.parametrize(
    "averaging",
    [
        ("averaging=ema", "averaging.decay=0.9"),
        ("averaging=swa", "averaging.lr=0.003", "averaging.anneal_epochs=2"),
    ],
    ids=["ema", "swa"],
)
def test_a_run_resumed_with_averaging_ends_where_an_unbroken_one_does(make_cfg, averaging):
    """The checkpoint holds the averaged weights as the network's and the trained ones beside
    them: a run continued from it trains on from the trained weights, the same average and (SWA)
    the same learning rate schedule."""
    recipe = (
        "experiment=sine_mlp",
        "trainer.max_epochs=3",
        "checkpoint.save_top_k=-1",
        "data.shuffle=true",
        "data.shuffle_seed=7",
        "data.seed=5",
        *averaging,
        "logger=none",
    )
    whole = train(make_cfg(*recipe))
    first = sorted(Path(whole["best_checkpoint"]).parent.glob("epoch000-*.ckpt"))[0]
    resumed = train(make_cfg(*recipe, "seed=99", f"ckpt_path={first}"))
    assert resumed["global_step"] == whole["global_step"]
    assert resumed["test/mse"] == pytest.approx(whole["test/mse"], rel=1e-6)


@pytest.mark.parametrize("decay", [0.0, 1.0, 1.5, -0.1])
def test_a_decay_outside_zero_to_one_is_refused(decay):
    with pytest.raises(ConfigError, match="averaging.decay"):
        check_node({"_target_": "nnlab.engine.averaging.EMA", "decay": decay}, "averaging")
    check_node({"_target_": "nnlab.engine.averaging.EMA", "decay": 0.5}, "averaging")


def test_bad_swa_settings_are_refused():
    for key, value in (("start_epoch", -1), ("lr", 0.0), ("anneal_strategy", "cosine")):
        with pytest.raises(ConfigError, match=f"averaging.{key}"):
            check_node({"_target_": "nnlab.engine.averaging.SWA", key: value}, "averaging")


@pytest.mark.slow
def test_a_bad_decay_on_the_command_line_is_one_error_line(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "nnlab.train",
            "experiment=sine_mlp",
            "averaging=ema",
            "averaging.decay=1",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
        env={**__import__("os").environ, "NNLAB_OUTPUT_DIR": str(tmp_path)},
    )
    assert proc.returncode == 2
    (line,) = [x for x in proc.stderr.splitlines() if x.startswith("error:")]
    assert "averaging.decay" in line
