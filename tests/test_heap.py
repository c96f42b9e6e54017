"""nnlab/heap.py: a command freezes the objects its imports made (gc.freeze) once, when it
starts, and everything alive again at exit, so that neither the run's full collections nor the
interpreter's exit walk torch's and Lightning's objects."""

from __future__ import annotations

import subprocess
import sys

import pytest

PROBE = """
import atexit, gc, sys
import nnlab.heap
from {module} import main
assert gc.get_freeze_count() == 0, "frozen before the command ran"
atexit.register(lambda: print("at exit", gc.get_freeze_count(), flush=True))
sys.argv = ["{command}", "--help"]
try:
    main()
except SystemExit as exc:
    print("exit", exc.code)
frozen = gc.get_freeze_count()
print("frozen", frozen)
nnlab.heap.freeze_imports()  # once per process: a second call freezes nothing more
print("again", gc.get_freeze_count())
"""


@pytest.mark.parametrize(
    "module,command", [("nnlab.train", "nnlab-train"), ("nnlab.report", "nnlab-report")]
)
def test_a_command_freezes_its_imports_once_and_again_at_exit(tmp_path, module, command):
    proc = subprocess.run(
        [sys.executable, "-c", PROBE.format(module=module, command=command)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = dict(line.split(" ", 1) for line in proc.stdout.splitlines() if " " in line)
    frozen = int(lines["frozen"])
    assert lines["exit"] == "0"
    assert frozen > 100_000  # torch, Lightning, Hydra: hundreds of thousands of objects
    assert int(lines["again"]) == frozen
    assert int(lines["at"].split()[-1]) >= frozen  # frozen again at exit (atexit runs LIFO)
