"""The Python heap of a command's process: what was imported stays out of the garbage collector.

torch, Lightning, torchmetrics (which imports torchvision) and Hydra leave hundreds of
thousands of long-lived objects. Every full collection walks them all again and the
interpreter walks them once more on its way out (what that costs: docs/benchmarks.md).
`gc.freeze()` moves them to the
permanent generation, which the collector never examines. Commands freeze once their modules
are imported, again after importing torch and Lightning (nnlab-train imports them only when it
trains, so that `--help` and a refused key answer at once), and at exit, so that exiting does not
walk what the run made either. The imports of torch and Lightning run with the collector off
(`importing`): they triggered full collections of their own while the heap grew.
"""

from __future__ import annotations

import atexit
import contextlib
import gc
import sys
from collections.abc import Iterator

_modules_when_frozen = 0  # len(sys.modules) at the last freeze; 0: never frozen


@contextlib.contextmanager
def importing() -> Iterator[None]:
    """Import with the collector off, then freeze what the imports made (`freeze_imports`): the
    objects of modules live as long as the process, yet importing torch and Lightning triggered
    full collections walking more and more of them (what that cost: docs/performance.md)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()
    freeze_imports()


def freeze_imports() -> None:
    """Freeze the objects alive now (the modules imported so far) and everything alive at exit.
    A call with no module imported since the last one freezes nothing, so in-process callers
    (tests, notebooks) do not keep freezing their garbage."""
    global _modules_when_frozen
    if len(sys.modules) == _modules_when_frozen:
        return
    if not _modules_when_frozen:
        atexit.register(gc.freeze)
    _modules_when_frozen = len(sys.modules)
    gc.freeze()
