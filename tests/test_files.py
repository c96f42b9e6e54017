"""Files as users have them (nnlab/files.py): the CSV readers (training's data=csv and
nnlab-predict's input=) read UTF-8 with or without a BOM, gzip and a declared encoding; every
other file class that cannot be read ends in one line naming the file (and line) and the fix."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import pytest
from conftest import compose_config, run_cli

from nnlab.data.series import CSVSeriesDataModule, read_csv_columns
from nnlab.errors import ConfigError, DataError
from nnlab.files import read_json, read_text
from nnlab.schema import check

ROWS = "".join(f"{i},{20 + i % 7}.5\n" for i in range(60))
TEXT = "time,close\n" + ROWS


def test_utf8_with_a_byte_order_mark(tmp_path):
    path = tmp_path / "bom.csv"
    path.write_bytes(b"\xef\xbb\xbf" + TEXT.encode())
    values, header = read_csv_columns(path, ["close"])
    assert header == ["time", "close"] and values.shape == (60, 1)


def test_gzip_files(tmp_path):
    path = tmp_path / "prices.csv.gz"
    path.write_bytes(gzip.compress(b"\xef\xbb\xbf" + TEXT.encode()))
    assert read_csv_columns(path, ["close"])[0].shape == (60, 1)
    broken = tmp_path / "broken.csv.gz"
    broken.write_bytes(path.read_bytes()[:30])
    with pytest.raises(
        DataError, match=r"broken.csv.gz is a damaged gzip file .*compress it again"
    ):
        read_csv_columns(broken, ["close"])


def test_a_declared_encoding_and_an_undeclared_one(tmp_path):
    path = tmp_path / "latin1.csv"
    path.write_bytes(("time,température\n" + ROWS).encode("latin-1"))
    with pytest.raises(DataError) as err:
        read_csv_columns(path, ["température"])
    assert str(err.value).startswith(f"data.path: {path} line 1: byte 0xe9 is not UTF-8 text")
    assert "data.encoding=latin-1" in str(err.value)
    assert read_csv_columns(path, ["température"], encoding="latin-1")[0].shape == (60, 1)
    late = tmp_path / "late.csv"
    late.write_bytes(TEXT.encode() + "99,é\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"late.csv line 62: byte 0xe9"):
        read_csv_columns(late, ["close"])


def test_the_encoding_setting_is_checked_and_used(tmp_path):
    path = tmp_path / "latin1.csv"
    path.write_bytes(("time,température\n" + ROWS).encode("latin-1"))
    base = ["data=csv", f"data.path={path}", "data.column='température'"]
    with pytest.raises(ConfigError, match=r"^data.encoding: got 'latin-9x'; expected an encoding"):
        check(compose_config([*base, "data.encoding=latin-9x"], tmp_path / "run"))
    check(compose_config([*base, "data.encoding=latin-1"], tmp_path / "run"))
    dm = CSVSeriesDataModule(path=str(path), column="température", encoding="latin-1")
    dm.setup()
    assert dm.table.shape == (60, 1)
    # nnlab-predict's input= goes through the same reader, with the run's encoding
    assert dm.read_table(str(path)).shape == (60, 1)


@pytest.mark.parametrize(
    "name,content,message",
    [
        ("empty.csv", b"", "is empty"),
        ("blank.csv", b"\n\n", "is empty"),
        ("numbers.csv", b"1.5,2\n3,4\n", "line 1: the header row (1.5, 2) holds numbers"),
        ("text.csv", b"v\n1\nhello\n", "line 3: 'hello' in column 'v' is not a number"),
        ("header_only.csv", b"v\n", "has no values below its header"),
    ],
)
def test_unreadable_csv_files(name, content, message, tmp_path):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(DataError) as err:
        read_csv_columns(path, ["v"] if name != "numbers.csv" else None)
    assert message in str(err.value) and str(path) in str(err.value)


def test_a_folder_a_missing_file_and_no_permission(tmp_path, monkeypatch):
    with pytest.raises(DataError, match=r"^data.path: .* is a folder; name a file in it"):
        read_csv_columns(tmp_path, ["v"])
    with pytest.raises(DataError, match=r"^data.path: CSV file not found"):
        read_csv_columns(tmp_path / "none.csv", ["v"])
    locked = tmp_path / "locked.csv"
    locked.write_text(TEXT)
    locked.chmod(0)
    try:
        if os.access(locked, os.R_OK):  # root reads it anyway: the OS's refusal, simulated

            def refuse(self):
                raise PermissionError(13, "Permission denied", str(self))

            monkeypatch.setattr(Path, "read_bytes", refuse)
        with pytest.raises(DataError, match=r"locked.csv: no permission to read it"):
            read_text(locked, "data.path")
    finally:
        locked.chmod(0o600)


def test_a_misspelled_column_lists_the_columns(tmp_path):
    path = tmp_path / "p.csv"
    path.write_text(TEXT)
    with pytest.raises(ConfigError) as err:
        read_csv_columns(path, ["closee"], keys={"closee": "data.column"})
    assert str(err.value) == (
        f"data.column: no column 'closee' in {path}; its columns are: time, close; "
        "did you mean 'close'?"
    )


def test_damaged_json_names_the_line(tmp_path):
    path = tmp_path / "metrics.json"
    path.write_text('{\n  "val/loss": 0.5,\n  "test/loss": ')
    with pytest.raises(DataError) as err:
        read_json(path, what="metrics file")
    assert str(err.value).startswith(f"{path} line 3 column 16: not valid JSON")
    assert "the metrics file is damaged" in str(err.value)


def test_a_spreadsheet_csv_trains(tmp_path):
    """The issue's case through the real command: a BOM (a spreadsheet's 'CSV UTF-8'), gzip,
    and the column the BOM used to hide."""
    path = tmp_path / "prices.csv.gz"
    path.write_bytes(gzip.compress(b"\xef\xbb\xbf" + ("close,volume\n" + ROWS).encode()))
    result = run_cli(
        "experiment=sine_mlp", "data=csv", f"data.path={path}", "data.column=close",
        "data.window=4", "data.batch_size=8", "trainer.max_epochs=1", "trainer.accelerator=cpu",
        "logger=none", "print_config=false",
        outputs=tmp_path / "out", cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.output[-3000:]
    assert "test/loss" in result.metrics()


def test_a_path_given_as_a_folder_through_the_command(tmp_path):
    result = run_cli(
        "data=csv", f"data.path={tmp_path}", "trainer.accelerator=cpu",
        outputs=tmp_path / "out", cwd=tmp_path, check=False,
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith(f"error: data.path: {tmp_path}")
    assert Path(tmp_path / "out").exists() is False or not list((tmp_path / "out").rglob("*.ckpt"))


def test_a_checkpoint_that_is_not_there_lists_those_that_are(tmp_path):
    from nnlab.errors import UserError
    from nnlab.runs import Run

    (tmp_path / "checkpoints").mkdir()
    for name in ("last.ckpt", "epoch3-step40.ckpt"):
        (tmp_path / "checkpoints" / name).write_bytes(b"x")
    with pytest.raises(UserError) as err:
        Run(tmp_path).checkpoint("epoch9.ckpt")
    assert "which holds: epoch3-step40.ckpt, last.ckpt); use best, last, one of those" in str(
        err.value
    )
