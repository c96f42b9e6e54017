"""Write docs/reference/configuration.md from the declared schema (nnlab/schema.py): every key of
every config group option (data, model, task, trainer, callbacks, logger, cluster, averaging) with
its type, default, choices and meaning, nnlab-train's own keys, the multirun launchers' and the
sweeper's settings, and the arguments of nnlab-eval, -predict, -export and -report.

    python scripts/gen_config_reference.py          # rewrite the file
    python scripts/gen_config_reference.py --check  # exit 1 when the file is stale

Types, choices and bounds come from the constructors' annotations (what the check enforces);
defaults from the group's YAML (as written, interpolations included), else the signature;
meanings from the YAML's comments (the line's own, or the comment lines just above it)."""

from __future__ import annotations

import inspect
import re
import sys
from pathlib import Path
from typing import Annotated, Any

from omegaconf import OmegaConf

from nnlab import CONF_DIR
from nnlab.schema import (
    DECLARED_BY,
    NETWORK_KEYS,
    Checkpointing,
    RunSettings,
    declared,
    locate,
    type_text,
)

OUT = Path(__file__).resolve().parents[1] / "docs" / "reference" / "configuration.md"
GROUPS = (
    "data",
    "model",
    "task",
    "task/scheduler",
    "trainer",
    "callbacks",
    "logger",
    "cluster",
    "averaging",
)
# a multirun's launchers (hydra/launcher=...) and nnlab's sweeper with its samplers
LAUNCHERS = ("joblib", "local", "slurm", "packed")
SAMPLERS = ("tpe", "random", "grid", "cmaes", "nsgaii", "qmc")
COMMANDS = ("eval", "predict", "export", "report")
KEY_LINE = re.compile(r"^(\s*)([A-Za-z_][\w]*):(.*)$")


def comments(path: Path) -> dict[tuple[str, ...], str]:
    """{key path: its comment} of a YAML file: the line's own comment, else the comment lines
    right above it (indentation gives nesting)."""
    found: dict[tuple[str, ...], str] = {}
    above: list[str] = []
    stack: list[tuple[int, str]] = []
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if stripped.startswith("#"):
            above.append(stripped.lstrip("#").strip())
            continue
        match = KEY_LINE.match(line)
        if not match:
            above = []
            continue
        indent, key, rest = len(match.group(1)), match.group(2), match.group(3)
        while stack and stack[-1][0] >= indent:
            stack.pop()
        stack.append((indent, key))
        inline = rest.split(" #", 1)[1].strip() if " #" in rest else ""
        text = inline or " ".join(above)
        if text:
            found[tuple(k for _, k in stack)] = text
        above = []
    return found


def load(group: str, option: str) -> tuple[dict[str, Any], dict[tuple[str, ...], str]]:
    """A group option's keys (its same-group defaults merged beneath, as Hydra does) and the
    comments of every file it is made of."""
    path = CONF_DIR / group / f"{option}.yaml"
    raw = OmegaConf.to_container(OmegaConf.load(path), resolve=False) or {}
    merged: dict[str, Any] = {}
    notes: dict[tuple[str, ...], str] = {}
    for entry in raw.pop("defaults", []) or []:
        if isinstance(entry, str) and entry != "_self_" and not entry.startswith("/"):
            base, base_notes = load(group, entry)
            merged.update(base)
            notes.update(base_notes)
    merged.update(raw)
    notes.update(comments(path))
    return merged, notes


def cell(value: Any) -> str:
    if value is None:
        text = "null"
    elif isinstance(value, bool):
        text = str(value).lower()
    elif isinstance(value, str):
        text = value or '""'
    else:
        text = (
            str(OmegaConf.to_yaml(value)).strip() if isinstance(value, dict | list) else str(value)
        )
        text = text.replace("\n", " ")
    return f"`{text}`".replace("|", "\\|")


def description(annotation: Any) -> str:
    """The meaning an annotation declares (`Annotated[..., Field(description=...)]`)."""
    for meta in getattr(annotation, "__metadata__", ()):
        if getattr(meta, "description", None):
            return str(meta.description)
    return ""


def node_table(
    key: str,
    node: dict[str, Any],
    notes: dict[tuple[str, ...], str],
    prefix: tuple,
    omit: tuple[str, ...] = (),
) -> list[str]:
    target = node["_target_"]
    spec = declared(target)
    notes = {**{(*prefix, n): description(a) for n, (a, _) in spec.fields.items()}, **notes}
    notes = {k: v for k, v in notes.items() if v}
    lines = [
        f"`{key}` builds `{target}`" + (" (takes further keys)" if spec.open else "") + ".",
        "",
    ]
    lines += ["| key | type | default | meaning |", "|---|---|---|---|"]
    names = [k for k in node if not k.startswith("_") and k not in ("defaults", *omit)]
    names += [
        k for k in spec.fields if k not in node and k not in ("net", "params", "optimizer", *omit)
    ]
    for name in names:
        fields = {**spec.fields}
        if key == "model":  # the keys every network takes besides its constructor's
            fields |= {k: (a, None) for k, a in NETWORK_KEYS.items()}
        annotation, default = fields.get(name, (Any, inspect.Parameter.empty))
        value = node.get(name, default)
        shown = "required" if value is inspect.Parameter.empty else cell(value)
        meaning = notes.get((*prefix, name), "")
        if name in spec.applies:
            selector, variants = spec.applies[name]
            meaning = f"{meaning} (only with {selector}: {', '.join(variants)})".strip()
        if name not in node:
            meaning = f"{meaning} (not in this preset; the constructor's default)".strip()
        kind = type_text(annotation) if name in fields else "any (passed on)"
        lines.append(
            f"| `{key}.{name}` | {kind.replace('|', chr(92) + '|')} | {shown} | "
            f"{meaning.replace('|', chr(92) + '|')} |"
        )
    return [*lines, ""]


def render() -> str:
    lines = [
        "# Configuration reference",
        "",
        "<!-- generated by scripts/gen_config_reference.py from nnlab/schema.py; do not edit -->",
        "",
        "Every key nnlab-train takes, checked before anything runs (`nnlab/schema.py`): a key",
        "that is not listed, a value of another type or out of its bounds ends the command with",
        "one `error:` line naming the key. `check=true` checks a command (every trial of `-m`)",
        "and prints what it would train.",
        "",
        "## nnlab-train's own keys",
        "",
        "| key | type | default | meaning |",
        "|---|---|---|---|",
    ]
    entry = OmegaConf.to_container(OmegaConf.load(CONF_DIR / "train.yaml"), resolve=False)
    notes = comments(CONF_DIR / "train.yaml")

    def row(key: str, field: Any, default: Any) -> str:
        annotation = (
            Annotated[(field.annotation, *field.metadata)] if field.metadata else (field.annotation)
        )
        meaning = notes.get(tuple(key.split(".")), "") or field.description or ""
        return (
            f"| `{key}` | {type_text(annotation).replace('|', chr(92) + '|')} | {cell(default)} | "
            f"{meaning.replace('|', chr(92) + '|')} |"
        )

    for name, field in RunSettings.model_fields.items():
        if name in GROUPS or name in ("paths",):
            continue
        if name == "checkpoint":
            for sub, subfield in Checkpointing.model_fields.items():
                default = entry.get(name, {}).get(sub, subfield.default)
                lines.append(row(f"{name}.{sub}", subfield, default))
            continue
        lines.append(row(name, field, entry.get(name, field.default)))
    lines.append("")
    for group in GROUPS:
        key = group.replace("/", ".")
        lines += [f"## {key}", ""]
        for path in sorted((CONF_DIR / group).glob("*.yaml")):
            node, notes = load(group, path.stem)
            lines += [f"### {group}={path.stem}", ""]
            if "_target_" in node:
                lines += node_table(key, node, notes, ())
                continue
            entries = {k: v for k, v in node.items() if isinstance(v, dict) and "_target_" in v}
            if not entries:
                lines += ["Builds nothing (it switches the group off or only sets keys).", ""]
            for name, entry in entries.items():
                lines += node_table(f"{key}.{name}", entry, notes, (name,))
    lines += hydra_sections()
    lines += command_sections()
    return "\n".join(lines).rstrip() + "\n"


def hydra_nodes() -> dict[str, dict[str, Any]]:
    """hydra.launcher of each launcher option and hydra.sweeper of each sampler option, as
    Hydra composes them (their defaults come from the plugins' config store), unresolved."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    found = {}
    options = [("launcher", f"hydra/launcher={name}") for name in LAUNCHERS]
    options += [("sweeper", f"hydra/sweeper/sampler={name}") for name in SAMPLERS]
    for node, override in options:
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = compose("train", [override, "hydra/sweeper=nnlab"], return_hydra_config=True)
        found[override] = OmegaConf.to_container(cfg.hydra[node], resolve=False)
    GlobalHydra.instance().clear()
    return found


def hydra_sections() -> list[str]:
    lines = [
        "## hydra.launcher",
        "",
        "How a multirun (`-m`) runs its trials; checked before the first trial starts.",
        "",
    ]
    nodes = hydra_nodes()
    for name in LAUNCHERS:
        node = nodes[f"hydra/launcher={name}"]
        path = CONF_DIR / "hydra" / "launcher" / f"{name}.yaml"
        notes = comments(path) if path.is_file() else {}
        if node["_target_"] in DECLARED_BY:  # the plugin's own comments on its settings
            source = Path(inspect.getfile(locate(DECLARED_BY[node["_target_"]])))
            notes = {**comments(source), **notes}
        lines += [f"### hydra/launcher={name}", ""]
        lines += node_table("hydra.launcher", node, notes, ())
    lines += [
        "## hydra.sweeper",
        "",
        "`hydra/sweeper=nnlab` (the hparams_search presets choose it): a search with Optuna;",
        "its sampler is `hydra/sweeper/sampler=...`. The search space's ends are checked",
        "against the keys' bounds before the first trial.",
        "",
    ]
    sweeper = nodes["hydra/sweeper/sampler=tpe"]
    lines += node_table("hydra.sweeper", sweeper, {}, (), omit=("sampler",))
    for name in SAMPLERS:
        sampler = nodes[f"hydra/sweeper/sampler={name}"]["sampler"]
        lines += [f"### hydra/sweeper/sampler={name}", ""]
        lines += node_table("hydra.sweeper.sampler", sampler, {}, ())
    return lines


def command_sections() -> list[str]:
    """Each command's arguments: types from its function's annotations (what is checked),
    defaults and meanings from conf/<command>.yaml (what --help prints)."""
    lines = [
        "## Command arguments",
        "",
        "`nnlab-eval`, `nnlab-predict`, `nnlab-export` and `nnlab-report` take `key=value`",
        "arguments (and dotted keys of the run's config, `data.batch_size=256`), checked before",
        "anything runs.",
        "",
    ]
    for name in COMMANDS:
        module = "evaluate" if name == "eval" else name
        spec = declared(f"nnlab.{module}.main")
        path = CONF_DIR / f"{name}.yaml"
        values = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
        notes = comments(path)
        lines += [f"### nnlab-{name}", "", "| argument | type | default | meaning |"]
        lines.append("|---|---|---|---|")
        for key, value in values.items():
            kind = type_text(spec.fields[key][0]).replace("|", chr(92) + "|")
            meaning = notes.get((key,), "").replace("|", chr(92) + "|")
            lines.append(f"| `{key}` | {kind} | {cell(value)} | {meaning} |")
        lines.append("")
    return lines


def main(argv: list[str]) -> int:
    text = render()
    if "--check" in argv:
        if not OUT.is_file() or OUT.read_text() != text:
            print(f"{OUT} is stale: run python scripts/gen_config_reference.py", file=sys.stderr)
            return 1
        return 0
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(text)
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
