"""A finished run as a user sees it: the `tensorboard` binary serves it, and its own HTTP data
API (what the dashboard's pages call) returns the scalars, images, text and HPARAMS."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

TENSORBOARD = shutil.which(
    "tensorboard", path=f"{Path(sys.executable).parent}:{os.environ['PATH']}"
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Board:
    def __init__(self, url: str):
        self.url = url

    def get(self, path: str, **query) -> bytes:
        address = f"{self.url}{path}" + (f"?{urllib.parse.urlencode(query)}" if query else "")
        with urllib.request.urlopen(address, timeout=30) as response:
            return response.read()

    def json(self, path: str, **query):
        return json.loads(self.get(path, **query))

    def post(self, path: str, body: dict):
        request = urllib.request.Request(
            f"{self.url}{path}",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read())


@pytest.fixture
def board(cli):
    """TensorBoard on 127.0.0.1 (a free port) over a finished run; (board, run dir, metrics)."""
    if TENSORBOARD is None:
        pytest.skip("the tensorboard binary is not on PATH")
    result = cli(
        "experiment=sine_lstm", "debug=limit", "trainer.max_epochs=3", "tags=[baseline,lstm]"
    )
    run = result.run_dir()
    port = free_port()
    server = subprocess.Popen(
        [TENSORBOARD, "--logdir", str(run), "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    board = Board(f"http://127.0.0.1:{port}")
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                if "tensorboard" in board.json("/data/runs"):
                    break
            except OSError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                pytest.fail(
                    f"tensorboard did not serve the run:\n{server.stdout.read().decode()[-3000:]}"
                )
            time.sleep(0.5)
        yield board, run, result.metrics()
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


@pytest.mark.slow
def test_tensorboard_serves_scalars_images_text_and_hparams(board):
    board, run, metrics = board
    # Scalars: the per-epoch validation curve (3 epochs, then the best checkpoint's evaluation)
    tags = board.json("/data/plugin/scalars/tags")["tensorboard"]
    assert {"train/loss", "val/mse", "test/mse", "hp/test/mse"} <= set(tags)
    curve = board.json("/data/plugin/scalars/scalars", run="tensorboard", tag="val/mse")
    assert len(curve) == 3 + 1
    assert curve[-1][2] == pytest.approx(metrics["val/mse"], rel=1e-6)
    # Images: the forecast figure, as a PNG
    assert "test/forecast" in board.json("/data/plugin/images/tags")["tensorboard"]
    (image,) = board.json(
        "/data/plugin/images/images", run="tensorboard", tag="test/forecast", sample=0
    )
    png = board.get(f"/data/plugin/images/individualImage?{image['query']}")
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    # Text: the run summary with its tags and best checkpoint
    (text,) = board.json(
        "/data/plugin/text/text", run="tensorboard", tag="run/summary/text_summary"
    )
    assert (
        "baseline, lstm" in text["text"] and Path(metrics["best_checkpoint"]).name in text["text"]
    )
    # HPARAMS: the flattened config, parameter counts, git state and tags, with the final metrics
    experiment = board.post("/data/plugin/hparams/experiment", {"experimentName": ""})
    names = {h["name"] for h in experiment["hparamInfos"]}
    assert {
        "model.cell",
        "params.total",
        "git.commit",
        "git.dirty",
        "tags",
        "best_checkpoint",
    } <= names
    assert "hp/test/mse" in {m["name"]["tag"] for m in experiment["metricInfos"]}
    groups = board.post(
        "/data/plugin/hparams/session_groups",
        {
            "experimentName": "",
            "allowedStatuses": [
                "STATUS_UNKNOWN",
                "STATUS_SUCCESS",
                "STATUS_FAILURE",
                "STATUS_RUNNING",
            ],
            "colParams": [{"metric": {"tag": "hp/test/mse"}}],
            "startIndex": 0,
            "sliceSize": 10,
        },
    )
    (group,) = groups["sessionGroups"]
    assert group["hparams"]["tags"] == "baseline, lstm" and group["hparams"]["model.cell"] == "lstm"
    assert group["hparams"]["best_checkpoint"] == metrics["best_checkpoint"]
    values = {m["name"]["tag"]: m["value"] for m in group["metricValues"]}
    assert values["hp/test/mse"] == pytest.approx(metrics["test/mse"], rel=1e-6)
    assert values["hp/best_epoch"] == metrics["best_epoch"]
