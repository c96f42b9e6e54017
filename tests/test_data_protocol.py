"""The data module protocol (nnlab/data/base.py): every data set implements it, `encode` makes
of raw user inputs exactly what training reads, and bool multi-hot rows become floats in one
place (`batch_transform`, Lightning's `on_after_batch_transfer`)."""

from __future__ import annotations

import json

import lightning as L
import pytest
import torch
from conftest import run_cli
from mnist_files import tiny_digits
from test_imdb import write_tree

from nnlab.config import build
from nnlab.data.base import DataModule, Encoded
from nnlab.data.imdb import IMDBDataModule
from nnlab.errors import UserError
from nnlab.tasks.classification import ClassificationTask

EXPERIMENT = {
    "sine": "sine_mlp",
    "csv": "sine_mlp",
    "mnist": "mnist_lstm",
    "fashion_mnist": "fashion_mnist_lstm",
    "imdb": "imdb_mlp",
}
TINY = {
    "sine": [],
    "csv": ["data.path={csv}", "data.column=v"],
    "mnist": ["data.val_size=20", "data.batch_size=8"],
    "fashion_mnist": ["data.val_size=20", "data.batch_size=8"],
    "imdb": ["data.num_words=30", "data.max_len=16", "data.val_size=0.25", "data.batch_size=8"],
}
SETS = [
    ("sine", []),
    ("csv", []),
    ("mnist", ["data.view=rows"]),
    ("mnist", ["data.view=image"]),
    ("fashion_mnist", ["data.view=pixels"]),
    ("imdb", ["data.view=multihot"]),
    ("imdb", ["data.view=sequence"]),
]


@pytest.fixture
def build_data(make_cfg, data_dir, tmp_path):
    """A data module from the real config group `data=<name>`, on tiny data in real formats."""
    write_tree(data_dir)
    csv = tmp_path / "series.csv"
    csv.write_text("t,v\n" + "".join(f"{i},{0.1 * (i % 13)}\n" for i in range(200)))

    def make(name: str, *overrides: str) -> DataModule:
        args = [a.format(csv=csv) for a in TINY[name]]
        cfg = make_cfg(
            f"experiment={EXPERIMENT[name]}",
            f"data={name}",
            f"paths.data_dir={data_dir}",
            *args,
            *overrides,
        )
        dm = build(cfg.data, "data")
        dm.prepare_data()
        dm.setup("fit")
        return dm

    return make


def inputs_of(batch) -> tuple[torch.Tensor, ...]:
    return tuple(batch[:-1])


@pytest.mark.parametrize(("name", "overrides"), SETS)
def test_every_data_module_implements_the_protocol(build_data, tmp_path, name, overrides):
    dm = build_data(name, *overrides)
    assert isinstance(dm, DataModule)
    # the loaders are the base class's, one for all data sets
    for method in ("train_dataloader", "val_dataloader", "test_dataloader", "_loader"):
        assert getattr(type(dm), method) is getattr(DataModule, method)
    assert type(dm).on_after_batch_transfer is DataModule.on_after_batch_transfer
    # example_input is shaped and typed like a transformed batch's inputs
    example = dm.example_input(3)
    example = example if isinstance(example, tuple) else (example,)
    batch = dm.batch_transform(next(iter(dm.train_dataloader())))
    assert len(batch[0]) == dm.batch_size
    for ex, real in zip(example, inputs_of(batch), strict=True):
        assert ex.shape[0] == 3 and ex.shape[1:] == real.shape[1:] and ex.dtype == real.dtype
    # the kind of target is declared (the tasks check it); classification data name their
    # classes, forecasting data their horizon
    assert dm.target_kind == ("classes" if dm.num_classes is not None else "values")
    if dm.num_classes is not None:
        assert len(dm.classes) == dm.num_classes and dm.horizon is None
        assert batch[-1].max() < dm.num_classes
    else:
        assert dm.horizon == batch[-1].shape[1] == 1
    # files predictions need: the IMDB vocabulary, the series' columns and scaling
    saved = dm.save_artifacts(tmp_path / "run")
    artifacts = {"imdb": ["vocab.json"], "sine": ["series.json"], "csv": ["series.json"]}
    assert [p.name for p in saved] == artifacts.get(name, [])
    assert all(p.is_file() for p in saved)


def test_mnist_encode_is_what_training_reads(build_data, tmp_path):
    """The test split is `encode` of the raw test images, in every view (normalised too); an
    IDX file and PNGs of the same images encode the same (nnlab-predict reads .npy too)."""
    from PIL import Image

    raw, _ = tiny_digits(40, seed=1)
    for view in ("rows", "permuted", "image"):
        dm = build_data("mnist", f"data.view={view}", "data.normalize=true")
        encoded = dm.encode(raw)
        assert torch.equal(encoded.inputs[0], dm.datasets["test"].tensors[0])
        assert torch.allclose(dm.to_image(encoded.inputs[0]), raw.float() / 255, atol=1e-6)
    folder = tmp_path / "pngs"
    folder.mkdir()
    for i, image in enumerate(raw[:3]):
        Image.fromarray(image.numpy()).save(folder / f"{i}.png")
    from_png = dm.encode(str(folder))
    assert from_png.names == ["0.png", "1.png", "2.png"]
    assert torch.equal(from_png.inputs[0], dm.datasets["test"].tensors[0][:3])
    idx = dm.data_dir / "MNIST" / "raw" / "t10k-images-idx3-ubyte"
    assert torch.equal(dm.encode(str(idx)).inputs[0], dm.datasets["test"].tensors[0])


def test_series_encode_is_what_training_reads(build_data):
    dm = build_data("csv", "data.standardize=true", "data.window=5")
    x, _ = dm.datasets["test"].tensors
    encoded = dm.encode(None)  # the test split, with the window before it
    assert torch.equal(encoded.inputs[0][: len(x)], x)
    assert encoded.names[0] == "5"  # the time step (in the given values) each window predicts
    # the user's CSV file (data.column) encodes to exactly the training windows
    from_file = dm.encode(str(dm.path)).inputs[0]
    assert torch.equal(from_file[dm.starts["test"] - dm.window :][: len(x)], x)
    values = encoded.raw[:, 0]  # the table (rows, columns) in the data's units: one column
    again = dm.encode(",".join(str(v) for v in values.tolist()))
    assert torch.allclose(again.inputs[0], encoded.inputs[0])
    assert torch.allclose(dm.decode(x[:, -1:])[:, 0], values[4 : 4 + len(x)].float(), atol=1e-5)
    with pytest.raises(UserError, match="give at least 5 values"):
        dm.encode("1,2,3")


@pytest.mark.parametrize("view", ["multihot", "sequence"])
def test_imdb_encode_from_saved_artifacts_is_what_training_reads(build_data, tmp_path, view):
    """Reviews encoded through vocab.json alone (no data needed, as nnlab-predict does) are the
    training tensors of the same reviews."""
    trained = build_data("imdb", f"data.view={view}")
    (path,) = trained.save_artifacts(tmp_path / "run")
    assert path == tmp_path / "run" / "vocab.json"
    assert json.loads(path.read_text())["words"] == trained.vocab
    fresh = IMDBDataModule(
        data_dir=str(tmp_path / "no-data-here"), view=view, num_words=30, max_len=16
    )
    fresh.load_artifacts(tmp_path / "run")
    texts = [trained.review_text("test", i) for i in range(6)]
    encoded = fresh.encode(texts)
    assert isinstance(encoded, Encoded) and encoded.raw == texts and len(encoded.names) == 6
    stored = trained.datasets["test"].tensors
    for got, want in zip(encoded.inputs, stored[:-1], strict=True):
        assert got.dtype == want.dtype and torch.equal(got, want[:6])
    with pytest.raises(UserError, match="vocab.json is missing"):
        fresh.load_artifacts(tmp_path)


def test_the_multihot_cast_happens_once_in_batch_transform(build_data, monkeypatch):
    """Stored rows are bools; the net sees floats, cast by the data module's batch_transform,
    called once per batch through Lightning's on_after_batch_transfer; the task does not cast."""
    dm = build_data("imdb", "data.view=multihot")
    assert dm.datasets["train"].tensors[0].dtype == torch.bool
    calls = []
    transform = IMDBDataModule.batch_transform

    def counted(self, batch):
        calls.append(batch[0].dtype)
        return transform(self, batch)

    monkeypatch.setattr(IMDBDataModule, "batch_transform", counted)
    task = ClassificationTask(
        net={"_target_": "nnlab.models.mlp.MLP", "input_size": 30, "output_size": 1},
        num_classes=2,
        binary=True,
    )
    seen = []
    task.net.register_forward_pre_hook(lambda module, args: seen.append(args[0].dtype))
    trainer = L.Trainer(
        accelerator="cpu",
        max_epochs=1,
        limit_train_batches=2,
        limit_val_batches=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    trainer.fit(task, datamodule=dm)
    assert calls == [torch.bool] * 3  # 2 training batches + 1 validation batch, once each
    assert seen and set(seen) == {torch.float32}
    with pytest.raises(RuntimeError):  # Task.forward leaves bool rows alone now
        task(dm.datasets["test"].tensors[0][:2])


def test_the_run_saves_the_vocabulary_and_predict_encodes_through_it(tmp_path, monkeypatch):
    """vocab.json comes from the run (save_artifacts at start), with no callback asking for it;
    nnlab-predict encodes new reviews through it, without the data set."""
    import nnlab.predict

    write_tree(tmp_path / "data")
    run = run_cli(
        "experiment=imdb_mlp",
        "callbacks=none",
        "logger=none",
        "trainer.max_epochs=1",
        "data.num_words=30",
        "data.val_size=0.25",
        "data.batch_size=8",
        outputs=tmp_path / "outputs",
        cwd=tmp_path,
        env={"NNLAB_DATA_DIR": str(tmp_path / "data")},
    ).run_dir()
    assert (run / "vocab.json").is_file()
    monkeypatch.setenv("NNLAB_DATA_DIR", str(tmp_path / "elsewhere"))  # no data needed now
    out = nnlab.predict.main.call(
        [f"run={run}", "text=great wonderful film", f"out={tmp_path / 'p'}"]
    )
    rows = (out / "predictions.csv").read_text().splitlines()
    assert rows[0] == "review,sentiment,probability,p_positive" and len(rows) == 2


def test_data_specific_callbacks_refuse_other_data(build_data):
    """The review and forecast figures need text and series data: a clear error, not a silent
    skip, when a config pairs them with other data."""
    from types import SimpleNamespace

    from nnlab.callbacks.forecast import ForecastPlot
    from nnlab.callbacks.text import ReviewSamples
    from nnlab.errors import ConfigError

    digits = SimpleNamespace(datamodule=build_data("mnist"))
    with pytest.raises(ConfigError, match="callbacks.forecast_plot: .* data=sine or data=csv"):
        ForecastPlot().setup(digits, None, "fit")
    with pytest.raises(ConfigError, match="callbacks.review_samples: .* MNISTDataModule"):
        ReviewSamples().setup(digits, None, "fit")
    ForecastPlot().setup(SimpleNamespace(datamodule=build_data("sine")), None, "fit")
