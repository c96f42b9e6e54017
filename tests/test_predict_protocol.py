"""nnlab-predict on every sequence data set through the data protocol (encode / decode): a
multivariate CSV run, a UEA run (.ts, .npy, CSV of one case) and a multi-label tones run, each
trained briefly on generated data and predicted from as a user would, in a subprocess."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli
from test_uea import TOY, write_ts

from nnlab.data.series import read_csv_columns, write_weather_csv

FEATURES = ["humidity", "pressure", "wind"]
TARGETS = ["temp", "humidity"]  # temp is no feature: predicted from the others


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("predict_protocol")


def train(root: Path, name: str, *args: str, env: dict | None = None) -> Path:
    return run_cli(
        *args,
        "trainer.max_epochs=1",
        "logger=none",
        outputs=root / name,
        cwd=root,
        env=env,
    ).run_dir()


def predict(root: Path, run: Path, *args: str, check: bool = True):
    result = run_cli(
        f"run={run}", *args, module="nnlab.predict", outputs=root / "p", cwd=root, check=check
    )
    if not check:
        return result, None
    out = Path(result.stdout.split("Wrote ")[-1].strip())
    with out.open(newline="") as f:
        return result, list(csv.DictReader(f))


@pytest.fixture(scope="module")
def weather_run(root):
    path = write_weather_csv(root / "weather.csv", 300, seed=0)
    run = train(
        root,
        "weather",
        "~experiment",
        "data=csv",
        f"data.path={path}",
        "data.time_column=time",
        f"data.features=[{','.join(FEATURES)}]",
        f"data.targets=[{','.join(TARGETS)}]",
        "data.window=8",
        "data.horizon=2",
        "model=recurrent",
        "task=regression",
    )
    return run, path


def test_a_multivariate_csv_run_predicts_each_target_from_the_feature_columns(root, weather_run):
    run, path = weather_run
    table, header = read_csv_columns(path, ["temp", *FEATURES], "time")
    given = root / "features_only.csv"  # the feature columns only, in time order
    with given.open("w", newline="") as f:
        out = csv.writer(f)
        out.writerow(FEATURES)
        out.writerows(table[:20, 1:].tolist())
    result, rows = predict(root, run, f"input={given}")
    one_step = [r for r in rows if r["kind"] == "one_step"]
    assert len(one_step) == (20 - 8 + 1) * 2  # every window, both targets
    assert {r["column"] for r in one_step} == set(TARGETS)
    humidity = [r for r in one_step if r["column"] == "humidity"]
    assert float(humidity[0]["target"]) == pytest.approx(table[8, 1].item())  # given: a feature
    assert all(r["target"] == "" for r in one_step if r["column"] == "temp")  # not given
    temps = [float(r["prediction"]) for r in one_step if r["column"] == "temp"]
    assert 0 < np.mean(temps) < 30  # degrees: the scaling is undone
    assert not [r for r in rows if r["kind"] == "forecast"]
    assert "No recursive forecast" in result.stdout
    assert (Path(result.stdout.split("Wrote ")[-1].strip()).parent / "forecast.png").is_file()


def test_a_feature_column_missing_from_the_input_is_named(root, weather_run):
    run, path = weather_run
    given = root / "no_wind.csv"
    given.write_text("humidity,pressure\n" + "70,1013\n" * 10)
    result, _ = predict(root, run, f"input={given}", check=False)
    assert result.returncode == 2
    assert "input: no column 'wind'" in result.stderr


@pytest.fixture(scope="module")
def uea_run(root):
    data = root / "uea_data"
    write_ts(data / "UEA" / "Toy" / "Toy_TRAIN.ts", 60, seed=0)
    write_ts(data / "UEA" / "Toy" / "Toy_TEST.ts", 30, seed=1)
    run = train(
        root,
        "uea",
        "experiment=uea_japanese_vowels_lstm",
        *TOY,
        "model.hidden_size=8",
        "model.num_layers=1",
        env={"NNLAB_DATA_DIR": str(data)},
    )
    return run, data / "UEA" / "Toy" / "Toy_TEST.ts"


def test_a_uea_run_classifies_a_ts_file_an_npy_array_and_a_csv_case(root, uea_run):
    from nnlab.data.uea import read_ts

    run, ts = uea_run
    cases = read_ts(ts).cases
    _, rows = predict(root, run, f"input={ts}")
    assert len(rows) == len(cases) and {r["class"] for r in rows} <= {"up", "down", "flat"}
    unlabelled = root / "new.ts"  # cases to classify carry no labels
    head, body = ts.read_text().split("@data\n")
    head = head.replace("@classLabel true up down flat", "@classLabel false")
    cases_only = [line.rsplit(":", 1)[0] for line in body.splitlines()]
    unlabelled.write_text(head + "@data\n" + "\n".join(cases_only) + "\n")
    _, again = predict(root, run, f"input={unlabelled}")
    assert [r["class"] for r in again] == [r["class"] for r in rows]
    np.save(root / "three.npy", np.stack([c[:5].numpy() for c in cases[:3]]))
    _, from_npy = predict(root, run, f"input={root / 'three.npy'}")
    assert len(from_npy) == 3
    one = root / "one_case.csv"
    one.write_text("c0,c1,c2\n" + "\n".join(",".join(map(str, r)) for r in cases[0].tolist()))
    _, from_csv = predict(root, run, f"input={one}")
    assert [r["class"] for r in from_csv] == [rows[0]["class"]]
    assert float(from_csv[0]["probability"]) == pytest.approx(float(rows[0]["probability"]), 1e-4)
    bad = root / "two_channels.csv"
    bad.write_text("1,2\n3,4\n")
    result, _ = predict(root, run, f"input={bad}", check=False)
    assert result.returncode == 2 and "(steps, 3 channels)" in result.stderr


def test_a_tones_run_names_the_labels_present(root):
    run = train(root, "tones", "experiment=tones_multilabel_gru", "data.num_samples=200")
    rng = np.random.default_rng(0)
    t = np.arange(32) / 32
    x = np.stack([np.sin(2 * np.pi * 2 * t), rng.normal(0, 0.3, 32)])
    np.save(root / "tones.npy", x)
    _, rows = predict(root, run, f"input={root / 'tones.npy'}")
    assert len(rows) == 2 and set(rows[0]) == {
        "input",
        "labels",
        *(f"p_tone{k}" for k in range(1, 5)),
    }
    given = root / "tones.csv"
    given.write_text("\n".join(",".join(map(str, r)) for r in x.tolist()))
    _, again = predict(root, run, f"input={given}")
    assert [r["p_tone2"] for r in again] == [r["p_tone2"] for r in rows]
    result, _ = predict(root, run, "input=0.1,0.2,0.3", check=False)
    assert result.returncode == 2 and "32 values per sequence (data.steps)" in result.stderr
