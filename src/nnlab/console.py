"""What a run prints for people: the config tree at start (rich), saved beside the run, and its
log lines with coloured level names on a terminal."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import rich
import rich.syntax
import rich.text
import rich.tree
from omegaconf import DictConfig

FIRST = ("data", "model", "task", "trainer", "callbacks", "logger", "paths")


def print_config_tree(
    cfg: DictConfig, save_to: Path | None = None, echo: bool = True, order: Sequence[str] = FIRST
) -> None:
    """Each top-level section as a branch of YAML, the sections named in `order` first; printed
    (YAML-highlighted) when `echo`, saved to `save_to` always (plain text: a file shows no
    colours, and highlighting is slow: docs/performance.md)."""
    from nnlab.runs import yaml_text

    keys = [k for k in order if k in cfg] + [k for k in cfg if k not in order]
    sections = [
        (
            key,
            yaml_text(cfg[key], resolve=True)
            if isinstance(cfg[key], DictConfig)
            else str(cfg[key]),
        )
        for key in keys
    ]

    def tree(highlight: bool) -> rich.tree.Tree:
        root = rich.tree.Tree("CONFIG", style="bold", guide_style="dim")
        for key, text in sections:
            if highlight:
                body = rich.syntax.Syntax(text, "yaml", theme="ansi_dark")
            else:
                body = rich.text.Text(text)
            root.add(f"[bold]{key}[/bold]").add(body)
        return root

    if echo:
        rich.print(tree(highlight=True))
    if save_to is not None:
        with open(save_to, "w", encoding="utf-8") as f:
            rich.print(tree(highlight=False), file=f)


# ANSI colours of the level names (green INFO, yellow WARNING, red ERROR, ...)
LEVEL_COLOURS = {
    "DEBUG": "36",
    "INFO": "32",
    "WARNING": "33",
    "ERROR": "31",
    "CRITICAL": "1;31",
}


class ColourFormatter(logging.Formatter):
    """The console's log lines (conf/train.yaml: hydra.job_logging) with the level name coloured
    when `stream` (stdout by default) is a terminal; plain text when it is not (a pipe, a file,
    a SLURM log) or when NO_COLOR is set (https://no-color.org). Other handlers' records (the
    run's train.log) are not touched: the colour is put on a copy of the record."""

    def __init__(self, fmt=None, datefmt=None, style="%", stream=None):
        super().__init__(fmt, datefmt, style)
        self.stream = stream
        self._colour: bool | None = None

    def colour(self) -> bool:
        if self._colour is None:
            stream = self.stream if self.stream is not None else sys.stdout
            isatty = getattr(stream, "isatty", None)
            self._colour = not os.environ.get("NO_COLOR") and bool(isatty and isatty())
        return self._colour

    def format(self, record: logging.LogRecord) -> str:
        code = LEVEL_COLOURS.get(record.levelname)
        if code is None or not self.colour():
            return super().format(record)
        record = logging.makeLogRecord(record.__dict__)
        record.levelname = f"\x1b[{code}m{record.levelname}\x1b[0m"
        return super().format(record)
