"""Bad input ends with one clear message naming the key or file, a non-zero exit status, and no
run directory that looks finished. Each case runs nnlab-train's real entry point (in this
process, to keep the suite fast); the data-set specific cases live beside their loaders' tests."""

import json
import shutil
import sys
import tarfile
from pathlib import Path

import pytest
from conftest import run_cli

import nnlab.train
from nnlab.runs import read_status


@pytest.fixture(scope="module")
def mlp_checkpoint(tmp_path_factory):
    root = tmp_path_factory.mktemp("mlp")
    run = run_cli(
        "experiment=sine_mlp", "debug=limit", "trainer.accelerator=cpu", outputs=root, cwd=root
    ).run_dir()
    return run / "checkpoints" / "last.ckpt"


def data_sets(tmp: Path) -> dict[str, Path | str]:
    """Tiny MNIST and aclImdb copies, intact and damaged, and an archive's file URL."""
    from mnist_files import write_mnist
    from test_imdb import write_tree

    write_mnist(tmp / "mnist")
    images = write_mnist(tmp / "truncated") / "train-images-idx3-ubyte"
    images.write_bytes(images.read_bytes()[:-100])
    write_tree(tmp / "imdb_no_test")
    shutil.rmtree(tmp / "imdb_no_test" / "aclImdb" / "test")
    archive = tmp / "aclImdb_v1.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(write_tree(tmp / "imdb_src"), arcname="aclImdb")
    corrupt = write_mnist(tmp / "corrupt_gz")
    (corrupt / "train-images-idx3-ubyte").unlink()
    (corrupt / "train-images-idx3-ubyte.gz").write_bytes(b"\x1f\x8b\x08 not really gzip")
    (tmp / "imdb_bad_archive").mkdir()
    (tmp / "imdb_bad_archive" / "aclImdb_v1.tar.gz").write_bytes(b"\x1f\x8b\x08 garbage")
    return {
        "corrupt_gz_mnist": tmp / "corrupt_gz",
        "imdb_bad_archive": tmp / "imdb_bad_archive",
        "mnist": tmp / "mnist",
        "truncated_mnist": tmp / "truncated",
        "imdb_no_test": tmp / "imdb_no_test",
        "imdb_url": archive.as_uri(),
    }


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


CASES = [
    # (id, arguments, expected exit status, message)
    ("unknown experiment", ["experiment=nope"], 2, "Could not find 'experiment/nope'"),
    ("unknown model", ["model=nope"], 2, "Could not find 'model/nope'"),
    ("unknown data", ["data=nope"], 2, "Could not find 'data/nope'"),
    ("unknown trainer", ["trainer=nope"], 2, "Could not find 'trainer/nope'"),
    ("unknown key", ["data.windw=3"], 2, "Could not override 'data.windw'"),
    (
        "a validation metric watched without validation",
        ["trainer.limit_val_batches=0"],
        2,
        "monitor: watches val/mse, a validation metric, and trainer.limit_val_batches=0",
    ),
    (
        "a plateau's validation metric without validation",
        [
            "trainer.limit_val_batches=0",
            "monitor=train/loss",
            "optimized_metric=null",
            "+task.scheduler={{_target_:torch.optim.lr_scheduler.ReduceLROnPlateau,_partial_:true}}",
            "task.scheduler_monitor=val/loss",
        ],
        2,
        "task.scheduler_monitor: watches val/loss",
    ),
    (
        "epochs not a number",
        ["trainer.max_epochs=abc"],
        2,
        "trainer.max_epochs: got 'abc'; expected a whole number",
    ),
    (
        "batch size zero",
        ["data.batch_size=0"],
        2,
        "data.batch_size: got 0; expected a number >= 1",
    ),
    (
        "batch size text",
        ["data.batch_size=big"],
        2,
        "data.batch_size: got 'big'; expected a whole number",
    ),
    (
        "learning rate zero",
        ["task.optimizer.lr=0"],
        2,
        "task.optimizer.lr: got 0; expected a number > 0",
    ),
    (
        "learning rate negative",
        ["task.optimizer.lr=-0.1"],
        2,
        "task.optimizer.lr: got -0.1; expected a number > 0",
    ),
    (
        "weight decay negative",
        ["task.optimizer.weight_decay=-1"],
        2,
        "task.optimizer.weight_decay: got -1; expected a number >= 0",
    ),
    ("window zero", ["data.window=0"], 2, "data.window: got 0; expected a number >= 1"),
    ("horizon negative", ["data.horizon=-2"], 2, "data.horizon: got -2; expected a number >= 1"),
    ("points zero", ["data.num_points=0"], 2, "data.num_points: got 0; expected a number >= 1"),
    ("noise negative", ["data.noise=-1"], 2, "data.noise: got -1; expected a number >= 0"),
    (
        "splits",
        ["data.splits=[0.5,0.5,0.5]"],
        2,
        "data.splits: fractions must be >= 0 and sum to 1",
    ),
    (
        "window longer than the series",
        ["data.window=400"],
        2,
        "data.window: window 400 + horizon 1 = 401",
    ),
    (
        "batch larger than the data",
        ["data.batch_size=5000"],
        2,
        "data.batch_size: batch size 5000 is larger",
    ),
    (
        "hidden size zero",
        ["model.hidden_size=0"],
        2,
        "model.hidden_size: got 0; expected a number >= 1",
    ),
    ("layers zero", ["model.num_layers=0"], 2, "model.num_layers: got 0; expected a number >= 1"),
    (
        "mlp hidden zero",
        ["experiment=sine_mlp", "model.hidden_sizes=[8,0]"],
        2,
        "model.hidden_sizes[1]: got 0; expected a number >= 1",
    ),
    (
        "unknown cell",
        ["model.cell=lstmm"],
        2,
        "model.cell: got 'lstmm'; expected one of 'rnn', 'lstm'",
    ),
    (
        "unknown activation",
        ["experiment=sine_mlp", "model.activation=swish2"],
        2,
        "model.activation: got 'swish2'; expected one of",
    ),
    (
        "dropout out of range",
        ["model.dropout=1.5"],
        2,
        "model.dropout: got 1.5; expected a number < 1",
    ),
    (
        "input size disagrees",
        ["experiment=sine_mlp", "model.input_size=5"],
        2,
        "the network cannot read this data",
    ),
    (
        "output size disagrees",
        ["model.output_size=3"],
        2,
        "model.output_size: the network gives 3 outputs",
    ),
    ("precision", ["trainer.precision=17"], 2, "trainer.precision: got 17; expected one of"),
    (
        "accelerator",
        ["trainer.accelerator=quantum"],
        2,
        "trainer.accelerator: got 'quantum'; expected one of",
    ),
    ("devices zero", ["trainer.devices=0"], 2, "trainer.devices: got 0; expected a count"),
    (
        "limit batches",
        ["trainer.limit_train_batches=1.5"],
        2,
        "trainer.limit_train_batches: got 1.5; expected",
    ),
    (
        "monitor mode",
        ["monitor_mode=up"],
        2,
        "monitor_mode: got 'up'; expected one of 'min' or 'max'",
    ),
    (
        "csv missing",
        ["data=csv", "data.path=/no/such/file.csv"],
        2,
        "data.path: CSV file not found: /no/such/file.csv",
    ),
    ("csv path not given", ["data=csv"], 2, "data.path"),
    (
        "csv column absent",
        ["data=csv", "data.path={csv}", "data.column=price"],
        2,
        "data.column: no column 'price'",
    ),
    ("csv empty", ["data=csv", "data.path={empty_csv}"], 2, "is empty"),
    (
        "csv not numeric",
        ["data=csv", "data.path={text_csv}", "data.column=v"],
        2,
        "is not a number",
    ),
    (
        "csv missing values",
        ["data=csv", "data.path={nan_csv}", "data.column=v"],
        2,
        "fill or drop missing values",
    ),
    ("resume not a run", ["resume={tmp}"], 2, "resume: "),
    (
        "checkpoint of another family",
        ["ckpt_path={mlp_ckpt}"],
        2,
        "holds a nnlab.models.mlp.MLP network",
    ),
    (
        "checkpoint missing",
        ["ckpt_path=/no/such.ckpt"],
        2,
        "ckpt_path: checkpoint /no/such.ckpt not found",
    ),
    ("checkpoint damaged", ["ckpt_path={bad_ckpt}"], 2, "is damaged"),
    (
        "output directory not writable",
        ["paths.log_dir=/proc/nnlab"],
        2,
        "paths.log_dir: cannot write",
    ),
    (
        "nan loss",
        ["experiment=sine_mlp", "task.optimizer.lr=1e30", "trainer.max_epochs=30"],
        2,
        "training loss became",
    ),
    # the data sets' own files (tiny generated copies in the real formats)
    (
        "mnist files missing",
        ["experiment=mnist_lstm", "data.download=false", "paths.data_dir={tmp}/none"],
        2,
        "train-images-idx3-ubyte",
    ),
    (
        "idx file truncated",
        ["experiment=mnist_lstm", "data.download=false", "paths.data_dir={truncated_mnist}"],
        2,
        "truncated",
    ),
    (
        "aclImdb split missing",
        ["experiment=imdb_mlp", "data.download=false", "paths.data_dir={imdb_no_test}"],
        2,
        "test",
    ),
    (
        "imdb checksum mismatch",
        [
            "experiment=imdb_mlp",
            "paths.data_dir={tmp}/imdb_dl",
            "data.url={imdb_url}",
            "data.sha256=abc123",
        ],
        2,
        "data.sha256: the download from",
    ),
    (
        "cnn input size the layers cannot take",
        [
            "experiment=mnist_alexnet_small",
            "model.variant=full",
            "model.input_size=224",
            "paths.data_dir={mnist}",
        ],
        2,
        "is not a whole number",
    ),
    (
        "num_classes disagrees",
        ["experiment=mnist_lstm", "task.num_classes=5", "paths.data_dir={mnist}"],
        2,
        "task.num_classes: 5, but the data has 10 classes",
    ),
    # Hydra's own errors: one line, exit 2, like ours
    ("unknown debug preset", ["debug=nope"], 2, "Could not find 'debug/nope'"),
    ("unknown logger", ["logger=nope"], 2, "Could not find 'logger/nope'"),
    ("unknown callbacks preset", ["callbacks=nope"], 2, "Could not find 'callbacks/nope'"),
    (
        "classifier figures on a regression",
        ["callbacks=[default,classification_figures]"],
        2,
        "callbacks.classification_figures: draws a classifier's confusion matrix, but this run's "
        "task is RegressionTask",
    ),
    ("unknown task", ["task=nope"], 2, "Could not find 'task/nope'"),
    ("key not in the trainer", ["trainer.no_such_key=1"], 2, "trainer.no_such_key"),
    ("override syntax", ["data.window=[1"], 2, "data.window"),
    # trainer keys checked before anything is built
    ("spawned ddp", ["trainer=ddp_cpu", "trainer.strategy=ddp_spawn"], 2, "trainer.strategy"),
    ("forked ddp", ["+trainer.strategy=ddp_fork"], 2, "trainer.strategy"),
    ("log every zero steps", ["trainer.log_every_n_steps=0"], 2, "trainer.log_every_n_steps"),
    (
        "negative checkpoint interval",
        ["checkpoint.every_n_minutes=-1"],
        2,
        "checkpoint.every_n_minutes",
    ),  # fmt: skip
    (
        "validate every zero epochs",
        ["trainer.check_val_every_n_epoch=0"],
        2,
        "trainer.check_val_every_n_epoch",
    ),  # fmt: skip
    (
        "accumulate zero",
        ["trainer.accumulate_grad_batches=0"],
        2,
        "trainer.accumulate_grad_batches",
    ),  # fmt: skip
    ("clip negative", ["trainer.gradient_clip_val=-1"], 2, "trainer.gradient_clip_val"),
    ("deterministic", ["trainer.deterministic=maybe"], 2, "trainer.deterministic"),
    ("min epochs negative", ["trainer.min_epochs=-1"], 2, "trainer.min_epochs"),
    ("max steps text", ["trainer.max_steps=many"], 2, "trainer.max_steps"),
    ("nodes zero", ["trainer.num_nodes=0"], 2, "trainer.num_nodes"),
    ("limit val negative", ["trainer.limit_val_batches=-3"], 2, "trainer.limit_val_batches"),
    ("seed text", ["seed=abc"], 2, "seed: got 'abc'; expected a whole number"),
    ("workers negative", ["data.num_workers=-1"], 2, "data.num_workers"),
    ("compile option", ["task.compile=fast"], 2, "task.compile"),
    # metrics that do not exist
    (
        "optimized metric misspelled",
        ["trainer.max_epochs=1", "optimized_metric=val/mss"],
        2,
        "optimized_metric: 'val/mss' is not a metric of this run; it has",
    ),
    ("monitor misspelled", ["trainer.max_epochs=1", "monitor=val/mss"], 2, "monitor: "),
    *[
        (
            f"plateau monitor misspelled ({loop} loop)",
            [
                "trainer.max_epochs=1",
                f"task.loop={loop}",
                "+task.scheduler={{_target_:torch.optim.lr_scheduler.ReduceLROnPlateau,_partial_:true}}",
                "task.scheduler_monitor=val/mss",
            ],
            2,
            "task.scheduler_monitor: ReduceLROnPlateau",
        )
        for loop in ("fused", "lightning")
    ],
    # files where directories belong, and the other way round
    ("data dir is a file", ["experiment=mnist_lstm", "paths.data_dir={csv}"], 2, "a.csv"),
    ("output dir is a file", ["paths.log_dir={csv}"], 2, "paths.log_dir"),
    ("csv path is a folder", ["data=csv", "data.path={tmp}"], 2, "data.path"),
    ("checkpoint is a folder", ["ckpt_path={tmp}"], 2, "ckpt_path"),
    ("resume missing folder", ["resume={tmp}/nowhere"], 2, "is not a directory"),
    # damaged compressed data
    (
        "mnist gz corrupt",
        ["experiment=mnist_lstm", "data.download=false", "paths.data_dir={corrupt_gz_mnist}"],
        2,
        "train-images-idx3-ubyte.gz",
    ),
    (
        "imdb archive corrupt",
        [
            "experiment=imdb_mlp",
            "data.download=false",
            "data.sha256=null",
            "paths.data_dir={imdb_bad_archive}",
        ],  # fmt: skip
        2,
        "aclImdb_v1.tar.gz",
    ),
    (
        "imdb archive checksum",
        ["experiment=imdb_mlp", "data.download=false", "paths.data_dir={imdb_bad_archive}"],
        2,
        "sha256",
    ),
    (
        "imdb nothing there, no download",
        ["experiment=imdb_mlp", "data.download=false", "paths.data_dir={tmp}/empty"],
        2,
        "aclImdb",
    ),
    (
        "mnist data_dir not given a folder",
        ["experiment=mnist_lstm", "data.download=false", "paths.data_dir={tmp}/no/such"],
        2,
        "data.download",
    ),
]


@pytest.mark.parametrize("args,status,message", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input(args, status, message, tmp_path, capfd, monkeypatch, mlp_checkpoint):
    outputs = tmp_path / "outputs"
    monkeypatch.setenv("NNLAB_OUTPUT_DIR", str(outputs))
    monkeypatch.chdir(tmp_path)
    bad_ckpt = write(tmp_path / "bad.ckpt", "PK\x03\x04 not really")
    names = {
        **data_sets(tmp_path),
        "tmp": tmp_path,
        "csv": write(tmp_path / "a.csv", "a,b\n1,2\n"),
        "empty_csv": write(tmp_path / "e.csv", ""),
        "text_csv": write(tmp_path / "t.csv", "v\n1\nhello\n"),
        "nan_csv": write(tmp_path / "n.csv", "v\n1\nnan\n"),
        "mlp_ckpt": mlp_checkpoint,
        "bad_ckpt": bad_ckpt,
    }
    argv = [a.format(**names) for a in args]
    monkeypatch.setattr(
        sys, "argv", ["nnlab-train", "trainer.accelerator=cpu", *argv, "print_config=false"]
    )
    with pytest.raises(SystemExit) as exit_info:
        nnlab.train.main()
    out, err = capfd.readouterr()
    output = out + err
    assert exit_info.value.code == status, output[-3000:]
    assert message in output, output[-3000:]
    assert "Traceback" not in output
    for run in outputs.glob("runs/*/*"):  # nothing that looks like a finished run
        assert not (run / "metrics.json").exists()
        assert read_status(run).get("status") == "failed", json.dumps(read_status(run))


def test_there_are_more_than_eighty_cases():
    assert len(CASES) > 80
