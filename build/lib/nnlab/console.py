"""What a run prints for people: the config tree at start (rich), saved beside the run."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import rich
import rich.syntax
import rich.tree
from omegaconf import DictConfig, OmegaConf

FIRST = ("data", "model", "task", "trainer", "callbacks", "logger", "paths")


def print_config_tree(
    cfg: DictConfig, save_to: Path | None = None, echo: bool = True, order: Sequence[str] = FIRST
) -> None:
    """Each top-level section as a branch of YAML, the sections named in `order` first; printed
    when `echo`, saved to `save_to` always."""
    tree = rich.tree.Tree("CONFIG", style="bold", guide_style="dim")
    keys = [k for k in order if k in cfg] + [k for k in cfg if k not in order]
    for key in keys:
        value = cfg[key]
        text = (
            OmegaConf.to_yaml(value, resolve=True) if isinstance(value, DictConfig) else str(value)
        )
        tree.add(f"[bold]{key}[/bold]").add(rich.syntax.Syntax(text, "yaml", theme="ansi_dark"))
    if echo:
        rich.print(tree)
    if save_to is not None:
        with open(save_to, "w", encoding="utf-8") as f:
            rich.print(tree, file=f)
