"""nnlab-predict and nnlab-eval/export on the image and text families (tiny generated data in
the real formats, one short training run each)."""

import csv
import json

import numpy as np
import pytest
import torch
from conftest import run_cli
from mnist_files import tiny_digits, write_mnist
from test_imdb import write_tree

import nnlab.predict
from nnlab.tasks.classification import ClassificationTask

TINY_MNIST = ["debug=limit", "trainer.accelerator=cpu", "trainer.max_epochs=1", "data.val_size=20"]
TINY_IMDB = [
    "debug=limit",
    "trainer.accelerator=cpu",
    "trainer.max_epochs=1",
    "data.num_words=40",
    "data.max_len=24",
    "data.val_size=0.25",
    "data.batch_size=8",
]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("families")
    write_mnist(root / "data")
    write_tree(root / "data")
    env = {"NNLAB_DATA_DIR": str(root / "data")}
    made = {}
    for experiment, args in (
        ("mnist_lstm", TINY_MNIST),
        ("mnist_lenet", TINY_MNIST),
        ("imdb_mlp", TINY_IMDB),
        ("imdb_lstm", TINY_IMDB),
    ):
        made[experiment] = run_cli(
            f"experiment={experiment}", *args, outputs=root / experiment, cwd=root, env=env
        ).run_dir()
    return root, made


def predict(monkeypatch, root, *args):
    monkeypatch.setenv("NNLAB_DATA_DIR", str(root / "data"))
    out = nnlab.predict.main.call(list(args))
    with open(out / "predictions.csv", newline="") as f:
        return list(csv.DictReader(f))


def best(run):
    return ClassificationTask.load_from_checkpoint(
        json.loads((run / "metrics.json").read_text())["best_checkpoint"]
    )


@pytest.mark.slow
@pytest.mark.parametrize("experiment", ["mnist_lstm", "mnist_lenet"])
def test_predict_digits_from_npy_idx_and_png(runs, experiment, tmp_path, monkeypatch):
    from PIL import Image

    root, made = runs
    run = made[experiment]
    images, _ = tiny_digits(5, seed=7)
    np.save(tmp_path / "digits.npy", images.numpy())
    rows = predict(monkeypatch, root, f"run={run}", f"input={tmp_path / 'digits.npy'}")
    assert len(rows) == 5 and set(rows[0]) >= {"input", "class", "probability", "p_0", "p_9"}
    probs = np.array([[float(r[f"p_{k}"]) for k in range(10)] for r in rows])
    assert np.allclose(probs.sum(axis=1), 1.0, atol=1e-4)
    if (
        experiment == "mnist_lenet"
    ):  # the image view is the images themselves: same numbers as the checkpoint
        expected = (
            torch.softmax(best(run)(images.float().unsqueeze(1) / 255), dim=-1).detach().numpy()
        )
        assert np.allclose(probs, expected, atol=1e-5)
    # the IDX file of the test set and a folder of PNGs give the same answers for the same images
    idx = root / "data" / "MNIST" / "raw" / "t10k-images-idx3-ubyte"
    assert len(predict(monkeypatch, root, f"run={run}", f"input={idx}")) == 40
    folder = tmp_path / "pngs"
    folder.mkdir()
    for i, image in enumerate(images):
        Image.fromarray(image.numpy()).save(folder / f"{i}.png")
    from_png = predict(monkeypatch, root, f"run={run}", f"input={folder}")
    assert [r["class"] for r in from_png] == [r["class"] for r in rows]


def test_predict_reviews_from_text_and_a_file(runs, tmp_path, monkeypatch):
    root, made = runs
    for experiment in ("imdb_mlp", "imdb_lstm"):
        run = made[experiment]
        assert (run / "vocab.json").is_file()
        rows = predict(monkeypatch, root, f"run={run}", "text=a wonderful film, great acting")
        assert len(rows) == 1 and rows[0]["sentiment"] in ("positive", "negative")
        p = float(rows[0]["p_positive"])
        assert 0.0 <= p <= 1.0
        reviews = tmp_path / f"{experiment}.txt"
        reviews.write_text("a wonderful film, great acting\n\nterrible boring plot\n")
        rows = predict(monkeypatch, root, f"run={run}", f"input={reviews}")
        assert len(rows) == 2 and float(rows[0]["p_positive"]) == pytest.approx(p, abs=1e-6)


@pytest.mark.parametrize(
    "experiment,args,message",
    [
        ("mnist_lstm", ["input={bad_npy}"], "holds an array of shape (3, 5)"),
        ("mnist_lstm", ["input={labels}"], "not an IDX file of images"),
        ("mnist_lstm", ["input={empty_dir}"], "holds no .png images"),
        ("imdb_mlp", ["text=   "], "the text is empty"),
        ("imdb_mlp", [], 'give a text file (one review per line) or text="..."'),
        ("imdb_lstm", ["ckpt={other}"], "holds a nnlab.models.recurrent.RecurrentNet network"),
    ],
)
def test_predict_bad_inputs(runs, tmp_path, capsys, monkeypatch, experiment, args, message):
    root, made = runs
    np.save(tmp_path / "bad.npy", np.zeros((3, 5)))
    (tmp_path / "empty").mkdir()
    names = {
        "bad_npy": tmp_path / "bad.npy",
        "empty_dir": tmp_path / "empty",
        "labels": root / "data" / "MNIST" / "raw" / "t10k-labels-idx1-ubyte",
        "other": made["mnist_lstm"] / "checkpoints" / "last.ckpt",
    }
    monkeypatch.setenv("NNLAB_DATA_DIR", str(root / "data"))
    with pytest.raises(SystemExit) as exit_info:
        nnlab.predict.main([f"run={made[experiment]}", *(a.format(**names) for a in args)])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("experiment", ["mnist_lenet", "mnist_lstm", "imdb_mlp", "imdb_lstm"])
def test_eval_and_export_on_other_families(runs, experiment, monkeypatch):
    import nnlab.evaluate
    import nnlab.export

    root, made = runs
    run = made[experiment]
    monkeypatch.setenv("NNLAB_DATA_DIR", str(root / "data"))
    nnlab.evaluate.main([f"run={run}"])
    recorded = json.loads((run / "metrics.json").read_text())
    evaluated = json.loads((run / "eval_metrics.json").read_text())
    assert (
        evaluated["test/acc"] == recorded["test/acc"]
        and evaluated["test/loss"] == recorded["test/loss"]
    )
    nnlab.export.main([f"run={run}", "format=torchscript"])
    assert json.loads((run / "export" / "export.json").read_text())["matches"]
    # every family, token ids with lengths (packed sequences) too; inputs named as the data's
    nnlab.export.main([f"run={run}", "format=onnx"])
    record = json.loads((run / "export" / "export.json").read_text())
    assert record["matches"]
    names = {"imdb_mlp": ["multihot"], "imdb_lstm": ["ids", "lengths"]}
    assert list(record["inputs"]) == names.get(experiment, ["input"])
