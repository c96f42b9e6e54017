"""The Python heap of a command's process: what was imported stays out of the garbage collector.

torch, Lightning, torchmetrics (which imports torchvision) and Hydra leave ~500k long-lived
objects. Every full collection walks them all again (a sine sweep makes 8, ~1 s in all) and
the interpreter walks them once more on its way out (~1 s). `gc.freeze()` moves them to the
permanent generation, which the collector never examines. Commands freeze once their modules
are imported, and again at exit, so that exiting does not walk what the run made either.
"""

from __future__ import annotations

import atexit
import gc

_frozen = False


def freeze_imports() -> None:
    """Freeze the objects alive now (a command's modules) and everything alive at exit; once
    per process, so in-process callers (tests, notebooks) do not keep freezing their garbage."""
    global _frozen
    if _frozen:
        return
    _frozen = True
    gc.freeze()
    atexit.register(gc.freeze)
