"""nnlab/heap.py: a command freezes the objects its imports made (gc.freeze) when it starts,
again when a training has imported torch and Lightning, and everything alive at exit, so that
neither the run's full collections nor the interpreter's exit walk torch's and Lightning's
objects."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

PROBE = """
import atexit, gc, sys
import nnlab.heap
from {module} import main
assert gc.get_freeze_count() == 0, "frozen before the command ran"
atexit.register(lambda: print("at exit", gc.get_freeze_count(), flush=True))
sys.argv = ["{command}", *{args!r}]
try:
    main()
    print("exit", 0)
except SystemExit as exc:
    print("exit", exc.code)
frozen = gc.get_freeze_count()
print("frozen", frozen)
nnlab.heap.freeze_imports()  # freezes the modules imported since the command's last call
before = gc.get_freeze_count()
nnlab.heap.freeze_imports()  # nothing imported since: nothing more is frozen
print("again", gc.get_freeze_count() - before)
"""


TRAIN = ["experiment=sine_mlp", "trainer.max_epochs=1", "logger=none", "callbacks=none"]


@pytest.mark.parametrize(
    "module,command,args,least",
    [
        # --help imports Hydra, OmegaConf and rich only: tens of thousands of objects
        ("nnlab.train", "nnlab-train", ["--help"], 10_000),
        ("nnlab.report", "nnlab-report", ["--help"], 10_000),
        # a training imports torch and Lightning too: hundreds of thousands, frozen as well
        ("nnlab.train", "nnlab-train", [*TRAIN, "print_config=false"], 100_000),
    ],
    ids=["train-help", "report-help", "train"],
)
def test_a_command_freezes_its_imports_and_again_at_exit(tmp_path, module, command, args, least):
    env = {**os.environ, "NNLAB_OUTPUT_DIR": str(tmp_path / "outputs")}
    proc = subprocess.run(
        [sys.executable, "-c", PROBE.format(module=module, command=command, args=args)],
        env=env,
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = dict(line.split(" ", 1) for line in proc.stdout.splitlines() if " " in line)
    frozen = int(lines["frozen"])
    assert lines["exit"] == "0"
    assert frozen > least
    assert int(lines["again"]) == 0
    assert int(lines["at"].split()[-1]) >= frozen  # frozen again at exit (atexit runs LIFO)


IMPORT_PROBE = """
import gc, sys
full = []
gc.callbacks.append(lambda phase, info: phase == "stop" and full.append(info["generation"]))
from nnlab.schema import locate
assert "torch" not in sys.modules
locate("nnlab.data.series.SineDataModule")  # the up-front check imports torch and Lightning
print("lightning", "lightning" in sys.modules, "enabled", gc.isenabled())
print("full", full.count(2), "frozen", gc.get_freeze_count())
"""


def test_the_checks_imports_run_without_full_collections_and_are_frozen():
    """torch's and Lightning's imports made ~8 full collections (each walking everything
    imported so far, ~0.6 s of CPU in all): the up-front check imports them with the collector
    off (nnlab.heap.importing), then freezes their objects; the collector is on again after."""
    proc = subprocess.run(
        [sys.executable, "-c", IMPORT_PROBE], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    words = proc.stdout.split()
    values = dict(zip(words[::2], words[1::2], strict=True))
    assert values["lightning"] == "True" and values["enabled"] == "True"
    assert values["full"] == "0"
    assert int(values["frozen"]) > 100_000
