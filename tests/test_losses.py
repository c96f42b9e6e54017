"""The right loss for each problem: regression mse | mae | huber, multi-class, binary,
multi-label (k-hot, sigmoid + BCE, micro/macro F1); many-to-many scored over real steps only;
a task that does not fit the data is refused before training, naming the key."""

from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F

from nnlab.data.tones import TonesDataModule
from nnlab.errors import ConfigError
from nnlab.schema import check_node
from nnlab.tasks.classification import ClassificationTask
from nnlab.tasks.multilabel import MultiLabelTask
from nnlab.tasks.regression import RegressionTask


def recurrent(output_size: int, readout: str = "last", input_size: int = 2) -> dict:
    return {
        "_target_": "nnlab.models.recurrent.RecurrentNet",
        "input_size": input_size,
        "output_size": output_size,
        "cell": "gru",
        "hidden_size": 4,
        "readout": readout,
    }


@pytest.mark.parametrize(
    ("loss", "fn"),
    [
        ("mse", F.mse_loss),
        ("mae", F.l1_loss),
        ("huber", lambda a, b: F.huber_loss(a, b, delta=0.5)),
    ],
)
def test_regression_losses(loss, fn):
    torch.manual_seed(0)
    task = RegressionTask(net=recurrent(3), loss=loss, huber_delta=0.5)
    x, y = torch.randn(5, 6, 2), torch.randn(5, 3) * 3
    value, correct = task.training_loss((x, y))
    assert correct is None and torch.allclose(value, fn(task(x), y))


def test_an_unknown_regression_loss_is_refused():
    task = {"_target_": "nnlab.tasks.regression.RegressionTask", "net": recurrent(1)}
    with pytest.raises(ConfigError, match="task.loss: got 'hinge'; expected one of"):
        check_node({**task, "loss": "hinge"}, "task")  # the schema, before anything is built


def test_many_to_many_regression_scores_real_steps_only():
    torch.manual_seed(0)
    task = RegressionTask(net=recurrent(1, readout="all"))
    x, lengths, y = torch.randn(3, 5, 2), torch.tensor([5, 2, 4]), torch.randn(3, 5)
    loss, _ = task.training_loss((x, lengths, y))
    y2 = y.clone()
    y2[1, 2:] = 1e6  # targets at padded steps: never scored
    y2[2, 4:] = -1e6
    assert torch.allclose(loss, task.training_loss((x, lengths, y2))[0])
    pred = task(x, lengths).squeeze(-1)
    real = torch.arange(5)[None, :] < lengths[:, None]
    assert torch.allclose(loss, F.mse_loss(pred[real], y[real]))


def test_many_to_many_classification_scores_real_steps_only():
    torch.manual_seed(0)
    task = ClassificationTask(net=recurrent(3, readout="all"), num_classes=3)
    x, lengths = torch.randn(2, 4, 2), torch.tensor([4, 1])
    y = torch.tensor([[0, 1, 2, 0], [2, 0, 0, 0]])
    loss, correct = task.training_loss((x, lengths, y))
    y2 = y.clone()
    y2[1, 1:] = 1
    assert torch.allclose(loss, task.training_loss((x, lengths, y2))[0])
    logits = task(x, lengths)
    expected = F.cross_entropy(torch.cat([logits[0], logits[1, :1]]), torch.tensor([0, 1, 2, 0, 2]))
    assert torch.allclose(loss, expected) and 0 <= int(correct) <= 5


def test_binary_and_multiclass_losses():
    torch.manual_seed(0)
    x = torch.randn(4, 3, 2)
    binary = ClassificationTask(net=recurrent(1), num_classes=2, binary=True)
    y = torch.tensor([0, 1, 1, 0])
    assert torch.allclose(
        binary.training_loss((x, y))[0],
        F.binary_cross_entropy_with_logits(binary(x).squeeze(-1), y.float()),
    )
    multi = ClassificationTask(net=recurrent(3), num_classes=3)
    y = torch.tensor([0, 2, 1, 2])
    assert torch.allclose(multi.training_loss((x, y))[0], F.cross_entropy(multi(x), y))


def test_multilabel_loss_and_metrics():
    torch.manual_seed(0)
    task = MultiLabelTask(net=recurrent(4, input_size=1), num_labels=4)
    x, y = torch.randn(6, 5, 1), (torch.rand(6, 4) > 0.5).float()
    loss, correct = task.training_loss((x, y))
    assert torch.allclose(loss, F.binary_cross_entropy_with_logits(task(x), y))
    assert int(correct) == int(((task(x) > 0) == y.bool()).all(-1).sum())  # exact matches
    task.val_metrics.update(torch.sigmoid(task(x)), y.long())
    assert {"val/f1_micro", "val/f1_macro", "val/acc"} <= set(task.val_metrics.compute())


def test_the_tones_labels_are_k_hot_and_seeded():
    a, b = (TonesDataModule(num_samples=50, batch_size=8, seed=1) for _ in range(2))
    a.setup()
    b.setup()
    x, y = a.datasets["train"].tensors
    assert x.shape == (35, 32, 1) and y.shape == (35, 4) and set(y.unique().tolist()) <= {0, 1}
    assert torch.equal(x, b.datasets["train"].tensors[0])
    assert (y.sum(1) > 1).any() and (y.sum(1) == 0).any()  # several labels, and none


@pytest.mark.parametrize(
    ("task", "data", "message"),
    [
        (lambda: RegressionTask(net=recurrent(4, input_size=1)), "tones", "regression on"),
        (
            lambda: ClassificationTask(net=recurrent(4, input_size=1), num_classes=4),
            "tones",
            "use task=multilabel",
        ),
        (lambda: MultiLabelTask(net=recurrent(1, input_size=1)), "sine", "are real-valued"),
        (lambda: ClassificationTask(net=recurrent(1, input_size=1)), "sine", "task=regression"),
        (
            lambda: RegressionTask(net=recurrent(1, input_size=1)),
            "boxes",
            "whose target_kind is 'boxes', which no nnlab task learns; declare one of classes,",
        ),
    ],
)
def test_a_task_that_does_not_fit_the_data_is_refused(task, data, message):
    from nnlab.data.series import SineDataModule

    class BoxesDataModule(SineDataModule):  # a user's own data module, a kind of its own
        target_kind = "boxes"

    kinds = {"tones": lambda: TonesDataModule(num_samples=50), "boxes": BoxesDataModule}
    dm = kinds.get(data, lambda: SineDataModule(num_points=100))()
    with pytest.raises(ConfigError, match=f"^task: .*{re.escape(message)}"):
        task().check_data(dm)


def test_the_cli_refuses_a_mismatched_task_up_front(cli):
    result = cli("experiment=tones_multilabel_gru", "task=regression", check=False)
    assert result.returncode == 2
    assert "task: regression on TonesDataModule" in result.stderr.splitlines()[-1]
    assert not list(result.run_dir().glob("checkpoints/*.ckpt"))


def test_the_multilabel_preset_trains(cli):
    metrics = cli(
        "experiment=tones_multilabel_gru", "trainer.max_epochs=1", "logger=none"
    ).metrics()
    assert 0 <= metrics["test/f1_micro"] <= 1 and 0 <= metrics["test/f1_macro"] <= 1


def test_a_huber_regression_trains(cli):
    metrics = cli(
        "experiment=sine_lstm", "task.loss=huber", "trainer.max_epochs=1", "logger=none"
    ).metrics()
    assert metrics["test/mse"] > 0
