"""The engine keys of a task's config: `task.loop` (lightning | fused | cuda_graph | auto) and
`task.micro_batches`, checked, also from the keys they replace in older checkpoints and saved
configs (`fused_loop`, `cuda_graph`, `graph_batches`). The task keeps them in its hyperparameters;
the run's assembly reads them (tasks/loops.py: `training_loop`)."""

from __future__ import annotations

from typing import Any, Literal

from nnlab.errors import ConfigError
from nnlab.schema import PositiveInt

LOOPS = ("lightning", "fused", "cuda_graph", "auto")
RENAMED = ("fused_loop", "cuda_graph", "graph_batches")
# What a task's config may say about how it is trained (nnlab.schema checks them as the task's
# keys): these two, and the keys they replace in older checkpoints and saved configs.
ENGINE_KEYS = {
    "loop": Literal["lightning", "fused", "cuda_graph", "auto"],
    "micro_batches": PositiveInt,
    "fused_loop": bool,
    "cuda_graph": bool | Literal["auto"],
    "graph_batches": PositiveInt,
}


def loop_keys(loop: str, micro_batches: int, renamed: dict[str, Any]) -> tuple[str, int]:
    """`task.loop` and `task.micro_batches`, also from the keys they replace, checked."""
    unknown = set(renamed) - set(RENAMED)
    if unknown:
        raise ConfigError(f"task.{sorted(unknown)[0]}", "is not a task key")
    if "fused_loop" in renamed or "cuda_graph" in renamed:
        graph = renamed.get("cuda_graph", False)
        if graph is True:
            loop = "cuda_graph"
        elif graph == "auto":
            loop = "auto"
        else:
            loop = "fused" if renamed.get("fused_loop") else "lightning"
    # (values are checked by the schema: the task's annotations, nnlab/schema.py)
    return loop, renamed.get("graph_batches", micro_batches)


def engine_keys(given: dict[str, Any]) -> dict[str, Any]:
    """{"loop": ..., "micro_batches": ...} from the engine keys a task was given (defaults:
    auto, 32); any other key is refused, naming it."""
    given = dict(given)
    loop = given.pop("loop", "auto")
    micro_batches = given.pop("micro_batches", 32)
    loop, micro_batches = loop_keys(loop, micro_batches, given)
    return {"loop": loop, "micro_batches": micro_batches}
