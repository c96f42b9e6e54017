"""The documentation cannot drift from the code: every fenced block of README.md and docs/ that a
reader would type or copy is run or checked here, page by page, in a scratch directory.

A block's kind is its fence's language; an HTML comment on the line right above the fence (not
rendered) says what the test does with it:

- ```bash: run, in order with the page's other blocks (`bash -eo pipefail`, the page's scratch
  directory as the working directory, run directories under it, nnlab's commands on PATH; they
  run in the test's process, `inprocess.shell`, a user's shell's steps as written).
  `<!-- docs-test: check: REASON -->` above it: not run (REASON says why: it trains for
  minutes, needs a data set or a cluster, ...) but checked: every `nnlab-train` line is composed
  with its overrides (the first value of a sweep's), the other commands' keys are parsed against
  their entry configs, `make` targets and `scripts/` files must exist.
- ```console: `$ command` lines run, the lines after each one expected in its output (`...`
  stands for anything).
- ```yaml whose first line (after a `# @package` header) is `# PATH`: a file of the repository (`conf/...`) must contain the
  snippet (a sub-tree of the file); any other PATH is written into the scratch directory for the
  page's next blocks (your own configs in a how-to).
- ```python whose first line is `# PATH.py`: written into the scratch directory (your own data
  module, model or task in a how-to; the page's commands import it with PYTHONPATH=.).
- `<!-- docs-test: skip: REASON -->`: neither run nor checked; REASON is required.

Other languages (text, python output, tables) are not commands and are left alone.
"""

from __future__ import annotations

import os
import re
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from conftest import compose_config
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import IntervalSweep
from inprocess import shell

from nnlab import CONF_DIR
from nnlab.cli import parse_args

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
BIN = Path(sys.executable).parent
COMMANDS = {"nnlab-eval": "eval", "nnlab-predict": "predict", "nnlab-export": "export"}
COMMANDS["nnlab-report"] = "report"
MARKER = re.compile(r"<!--\s*docs-test:\s*(run|check|skip)\s*(?::\s*(.*?))?\s*-->")
FENCE = re.compile(r"^```(\w*)")


@dataclass
class Block:
    page: Path
    line: int
    lang: str
    text: str
    mode: str  # run | check | skip
    reason: str

    def where(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def blocks(page: Path) -> list[Block]:
    found, lines = [], page.read_text().splitlines()
    i = 0
    while i < len(lines):
        match = FENCE.match(lines[i])
        if not match:
            i += 1
            continue
        start, lang = i, match.group(1)
        end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
        marker = MARKER.search(lines[start - 1]) if start else None
        mode, reason = (marker.group(1), marker.group(2) or "") if marker else ("run", "")
        text = "\n".join(lines[start + 1 : end])
        found.append(Block(page, start + 1, lang, text, mode, reason))
        i = end + 1
    return found


def logical_lines(script: str) -> list[str]:
    """Shell lines with their `\\` continuations joined; heredoc bodies left out."""
    out, current, heredoc = [], "", None
    for line in script.splitlines():
        if heredoc is not None:
            if line.strip() == heredoc:
                heredoc = None
            continue
        current += line[:-1] + " " if line.endswith("\\") else line
        if line.endswith("\\"):
            continue
        if match := re.search(r"<<-?'?(\w+)'?", current):
            heredoc = match.group(1)
        out.append(current.strip())
        current = ""
    return [line for line in out if line and not line.startswith("#")]


def first_values(overrides: list[str]) -> list[str]:
    """A sweep's overrides with each swept key at its first value: one trial's config."""
    parser = OverridesParser.create()
    out = []
    for text in overrides:
        override = parser.parse_overrides([text])[0]
        if isinstance(override.value(), IntervalSweep):  # a search's interval: its low end
            value = str(override.value().start)
            prefix = "+" if override.is_add() else ""
            out.append(f"{prefix}{override.get_key_element()}={value}")
        elif override.is_sweep_override():
            value = next(override.sweep_string_iterator())
            prefix = "+" if override.is_add() else ("~" if override.is_delete() else "")
            out.append(f"{prefix}{override.get_key_element()}={value}")
        else:
            out.append(text)
    return out


def check_line(line: str, where: str, tmp_path: Path) -> None:
    """The nnlab parts of one command line exist: its config keys and options, its command's
    arguments, its make target or script."""
    for part in re.split(r"\s*(?:&&|\|\||;|\|)\s*", line):
        try:
            words = shlex.split(part, comments=True)
        except ValueError as exc:
            raise AssertionError(f"{where}: cannot split {part!r}: {exc}") from None
        env = {}
        while words and re.match(r"^[A-Z_][A-Z0-9_]*=", words[0]):
            key, _, value = words.pop(0).partition("=")
            env[key] = value
        if not words:
            continue
        name, args = Path(words[0]).name, words[1:]
        if name == "nnlab-train":
            check_train(args, env, where, tmp_path)
        elif name in COMMANDS and not {"-h", "--help"} & set(args):
            parse_args(args, COMMANDS[name])  # an unknown key raises UserError
        elif name == "make":
            targets = re.findall(r"^([\w-]+):", (ROOT / "Makefile").read_text(), re.M)
            for target in (a for a in args if "=" not in a and not a.startswith("-")):
                assert target in targets, f"{where}: no make target {target!r}"
        elif words[0].startswith("scripts/") or (name == "python" and args[:1] != ["-c"]):
            script = words[0] if words[0].startswith("scripts/") else args[0]
            if script.startswith("scripts/"):
                assert (ROOT / script).is_file(), f"{where}: no {script}"


def check_train(args: list[str], env: dict, where: str, tmp_path: Path) -> None:
    if any(a in ("-h", "--help") for a in args) or any(a in ("-cp", "-cn") for a in args):
        return  # --help prints; a saved run's config needs the run
    search = [env["NNLAB_CONFIG_PATH"]] if "NNLAB_CONFIG_PATH" in env else []
    overrides, words = [], list(args)
    while words:
        word = words.pop(0)
        if word in ("-m", "--multirun"):
            continue
        if word.startswith("--config-dir"):
            search.append(word.split("=", 1)[1] if "=" in word else words.pop(0))
            continue
        key = word.split("=", 1)[0]
        if key == "resume":  # a resumed run keeps its saved config: its other keys are checked
            continue
        overrides.append(word)
    if search:
        dirs = ",".join(f"file://{(tmp_path / s).resolve()}" for s in search)
        overrides.append(f"hydra.searchpath=[{dirs}]")
    try:
        compose_config(first_values(overrides), tmp_path / "check")
    except Exception as exc:  # noqa: BLE001 - Hydra's and OmegaConf's errors: name the line
        message = " ".join(str(exc).split())[:500]
        raise AssertionError(f"{where}: nnlab-train {' '.join(args)}: {message}") from None
    finally:
        GlobalHydra.instance().clear()


def run_script(script: str, where: str, cwd: Path, timeout: float = 300) -> str:
    env = {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "NNLAB_OUTPUT_DIR": str(cwd / "outputs"),
        "PYTHONUNBUFFERED": "1",
    }
    env.pop("NNLAB_CONFIG_PATH", None)
    proc = shell(["bash", "-eo", "pipefail", "-c", script], cwd=cwd, env=env, timeout=timeout)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{where}: exit {proc.returncode}\n{script}\n{output[-4000:]}"
    return output


def check_yaml(block: Block, tmp_path: Path) -> None:
    # the first comment line that is not a Hydra header (`# @package _global_` comes first)
    first = next((ln for ln in block.text.splitlines() if not ln.startswith("# @")), "")
    assert first.startswith("# "), f"{block.where()}: a yaml block starts with `# PATH`"
    path = first[2:].split()[0]
    snippet = yaml.safe_load(block.text)
    if (ROOT / path).is_file():
        content = yaml.safe_load((ROOT / path).read_text())
        assert is_subtree(snippet, content), f"{block.where()}: not what {path} holds"
    else:
        target = tmp_path / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(block.text + "\n")


def is_subtree(part, whole) -> bool:
    if isinstance(part, dict):
        return isinstance(whole, dict) and all(
            k in whole and is_subtree(v, whole[k]) for k, v in part.items()
        )
    return part == whole


def check_console(block: Block, tmp_path: Path) -> None:
    """`$ command` lines run; the lines under one are expected, in order, in its output."""
    steps: list[tuple[str, list[str]]] = []
    for line in block.text.splitlines():
        if line.startswith("$ "):
            steps.append((line[2:], []))
        elif steps and line.strip():
            steps[-1][1].append(line.strip())
    assert steps, f"{block.where()}: a console block with no `$ command`"
    for command, expected in steps:
        env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
        env["NNLAB_OUTPUT_DIR"] = str(tmp_path / "outputs")
        proc = shell(["bash", "-c", command], cwd=tmp_path, env=env, timeout=300)
        output = proc.stdout + proc.stderr
        for line in expected:
            pattern = ".*".join(re.escape(piece) for piece in line.split("..."))
            assert re.search(pattern, output), (
                f"{block.where()}: `{command}` did not print\n{line}\nit printed:\n{output[-3000:]}"
            )


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(ROOT)) for p in PAGES])
@pytest.mark.slow
def test_the_page_s_commands_and_snippets(page, tmp_path):
    for block in blocks(page):
        if block.mode in ("skip", "check") and block.lang in ("bash", "console", "yaml"):
            assert block.reason, f"{block.where()}: say why it is not run (docs-test: ...: WHY)"
        if block.mode == "skip":
            continue
        if block.lang == "bash":
            if block.mode == "run":
                run_script(block.text, block.where(), tmp_path)
            for line in logical_lines(block.text):
                check_line(line, block.where(), tmp_path)
        elif block.lang == "console":
            check_console(block, tmp_path)
        elif block.lang == "yaml":
            check_yaml(block, tmp_path)
        elif block.lang == "python" and re.match(r"# \S+\.py$", block.text.split("\n")[0]):
            target = tmp_path / block.text.split("\n")[0][2:]
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(block.text + "\n")


def test_blocks_are_found_and_checks_can_fail(tmp_path):
    """The parser sees fenced blocks and their markers, and a wrong key or target fails."""
    page = tmp_path / "page.md"
    page.write_text(
        "<!-- docs-test: check: trains for an hour -->\n```bash\nnlab-train x=1\n```\n"
        "```yaml\n# conf/train.yaml\nseed: 12345\n```\n"
    )
    found = blocks(page)
    assert [(b.lang, b.mode, b.reason) for b in found] == [
        ("bash", "check", "trains for an hour"),
        ("yaml", "run", ""),
    ]
    check_line("nnlab-train -m experiment=sine_mlp seed=1,2,3", "here", tmp_path)
    with pytest.raises(AssertionError, match="nosuchkey"):
        check_line("nnlab-train experiment=sine_mlp nosuchkey=1", "here", tmp_path)
    with pytest.raises(AssertionError, match="no make target"):
        check_line("make nosuchtarget", "here", tmp_path)
    with pytest.raises(Exception, match="unknown argument"):
        check_line("nnlab-eval run=x nosuchkey=1", "here", tmp_path)
    assert logical_lines("a \\\n  b  # c\ncat > f <<'YAML'\nx: 1\nYAML\nd") == [
        "a    b  # c",
        "cat > f <<'YAML'",
        "d",
    ]
    assert CONF_DIR.is_dir()
