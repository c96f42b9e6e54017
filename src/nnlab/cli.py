"""The commands' shared command-line code: `key=value` arguments composed by Hydra (every
command), the run's config, its checkpoint and the task rebuilt from it (nnlab-eval, -predict,
-export), and what nnlab-train checks before Hydra starts (resume, re-run, output folder)."""

from __future__ import annotations

import functools
import os
import sys
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf

from nnlab import CONF_DIR
from nnlab.checkpoint_io import check_checkpoint
from nnlab.config import build
from nnlab.errors import UserError, exit_on_user_error
from nnlab.heap import freeze_imports
from nnlab.runs import RESOLVED_CONFIG, Run
from nnlab.schema import upgrade_saved

warnings.filterwarnings("ignore", message=r".*torch\.jit\..* is deprecated", category=FutureWarning)
warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")


def parse_args(
    argv: list[str],
    config_name: str,
    run_overrides: bool = True,
    entry: Path | None = None,
    prog: str | None = None,
) -> tuple[dict[str, Any], list[str]]:
    """`key=value` words, as nnlab-train takes them: the command's own keys, with their defaults
    and documentation in its entry config `conf/<config_name>.yaml` (what `--help` prints), and
    dotted keys of the run's config (`data.batch_size=64`) as overrides of it."""
    entry = entry or CONF_DIR / f"{config_name}.yaml"
    values = OmegaConf.to_container(OmegaConf.load(entry), resolve=True)
    if any(arg in ("-h", "--help") for arg in argv):
        keys = " ".join(f"[{k}=...]" for k in values)
        extra = " [KEY.SUBKEY=VALUE ...]" if run_overrides else ""
        print(f"usage: {prog or 'nnlab-' + config_name} {keys}{extra}\n")
        print(entry.read_text().strip())
        sys.exit(0)
    overrides = []
    for arg in argv:
        key, sep, value = arg.partition("=")
        if not sep:
            raise UserError(f"{arg}: arguments are key=value; see --help")
        if key in values:
            values[key] = Typed(value)  # as typed: `typed_arguments` gives it its type
        elif "." in key and run_overrides:
            overrides.append(arg)
        else:
            also = " and dotted keys of the run's config" if run_overrides else ""
            raise UserError(
                f"{key}: unknown argument; this command takes {', '.join(values)}{also} "
                "(see --help)"
            )
    return values, overrides


class Typed(str):
    """A command-line value as typed, before `typed_arguments` reads it."""


def typed_arguments(fn: Callable, values: dict[str, Any], prog: str) -> dict[str, Any]:
    """A command's arguments checked against its function's annotations (the command's
    declaration: types, choices, bounds; defaults and meanings in conf/<command>.yaml) by the
    schema's check, before anything runs. A value typed on the command line is read as Hydra's
    grammar reads nnlab-train's (3, 0.5, true, null, [1,2]); a string stays as typed, and so
    does a value where the annotation wants a string (text=123)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from nnlab.schema import adapter, declared, validate_mapping

    spec = declared(f"{fn.__module__}.{fn.__qualname__}")
    fields = {k: v for k, v in spec.fields.items() if k in values}
    parser = OverridesParser.create()
    out = dict(values)
    for key, value in values.items():
        if not isinstance(value, Typed):
            continue
        out[key] = str(value)
        try:
            (override,) = parser.parse_overrides([f"{key}={value}"])
            parsed = None if override.is_sweep_override() else override.value()
        except Exception:  # noqa: BLE001 - not Hydra's grammar (a quote, a comma list): text
            continue
        if override.is_sweep_override() or isinstance(parsed, str):
            continue
        try:
            adapter(fields[key][0]).validate_python(parsed)
            out[key] = parsed
        except Exception:  # noqa: BLE001 - not of its type as read: as typed, if that is
            try:
                adapter(fields[key][0]).validate_python(str(value))
            except Exception:  # noqa: BLE001 - neither: the check names what it expects
                out[key] = parsed
    validate_mapping(fields, out, "", prog)
    return out


def command(config_name: str, run_overrides: bool = True) -> Callable:
    """A console entry point: its arguments composed with `conf/<config_name>.yaml`, one clear
    line and exit 2 on a UserError, exit 0 on success (the function's result is not an exit
    status)."""

    def wrap(fn: Callable[..., Any]) -> Callable[[], None]:
        def call(argv: list[str]) -> Any:
            """The command's result (a path, a dict), for callers in Python."""
            options, overrides = parse_args(argv, config_name, run_overrides)
            options = typed_arguments(fn, options, f"nnlab-{config_name}")
            return fn(overrides=overrides, **options) if run_overrides else fn(**options)

        @functools.wraps(fn)
        def main(argv: list[str] | None = None) -> None:
            freeze_imports()
            with exit_on_user_error():
                call(sys.argv[1:] if argv is None else argv)

        main.call = call
        return main

    return wrap


def run_config(run: Run, overrides: list[str]) -> DictConfig:
    cfg = run.config()
    if overrides:
        cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(overrides))
    return cfg


def checkpoint_config(path: Path, overrides: list[str]) -> DictConfig:
    """The config a checkpoint was trained with (a run saves it in each of its checkpoints:
    nnlab/callbacks/run_config.py), the command's dotted overrides on top (data.data_dir=...
    where the data moved), old keys upgraded, checked by the schema."""
    from nnlab.callbacks.run_config import CONFIG_KEY
    from nnlab.checkpoint_io import checkpoint_problem
    from nnlab.schema import check

    if not path.is_file():
        raise UserError(f"ckpt: checkpoint {path} not found; pass a .ckpt file, or run=<run dir>")
    if problem := checkpoint_problem(path):
        raise UserError(f"ckpt: {path} is damaged ({problem}); use another checkpoint")
    import torch

    saved = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
    if not isinstance(saved, dict) or CONFIG_KEY not in saved:
        raise UserError(
            f"ckpt: {path} holds no run config (checkpoints written before nnlab kept it, or by "
            "a packed sweep's group); pass run=<the run directory it belongs to>"
        )
    cfg = OmegaConf.create(saved[CONFIG_KEY])
    cfg.paths.output_dir = str(path.parent.absolute())
    if overrides:
        cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(overrides))
    upgrade_saved(cfg, f"{path}'s config")
    check(cfg)
    return cfg


def load_task(run: Run | None, cfg: DictConfig, ckpt: str | None):
    """The run's task with the checkpoint's weights; refuses a checkpoint of another network.
    Without a run, `ckpt` is the checkpoint's path (its config from `checkpoint_config`)."""
    path = run.checkpoint(ckpt) if run is not None else Path(str(ckpt)).expanduser()
    check_checkpoint(path, cfg.model, owner=str(run.root) if run else "its saved config")
    task_class = get_class(cfg.task._target_)
    try:
        task = task_class.load_from_checkpoint(path, map_location="cpu", weights_only=False)
    except (RuntimeError, KeyError, TypeError) as exc:
        raise UserError(
            f"ckpt: {path} does not fit {cfg.task._target_}: {exc}".splitlines()[0]
        ) from exc
    return task.eval(), path


def load_datamodule(cfg: DictConfig, stage: str = "test"):
    datamodule = build(cfg.data, "data")
    datamodule.prepare_data()
    datamodule.setup(stage)
    return datamodule


def output_dir(run: Run, out: str | None, kind: str) -> Path:
    """`out` if given, else <run>/<kind>/ (created)."""
    path = Path(out).expanduser() if out else run.root / kind
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):  # writable? (torch's own writers say it badly)
            pass
    except OSError as exc:
        raise UserError(
            f"out: cannot write into {path}: {exc.strerror}; choose another out="
        ) from exc
    return path


# -- nnlab-train, before Hydra starts ----------------------------------------------------------
GROUPS = ("experiment", "data", "model", "task", "trainer", "callbacks", "logger", "paths", "debug")


def check_resume_overrides(overrides: list[str]) -> None:
    """A resumed run keeps its config: a group override (model=..., data=...) is refused."""
    for override in overrides:
        if override.split("=", 1)[0].lstrip("+~") in GROUPS:
            raise UserError(
                f"resume: `{override}` would change what the run is; a resumed run keeps its "
                "config (override single keys such as trainer.max_epochs=20, or start a new run)"
            )


def resumed_config(run: Run, overrides: list[str]) -> DictConfig:
    """The run's saved config, the command line's key=value overrides on top, set to continue
    from its last checkpoint."""
    check_resume_overrides(overrides)
    dotlist = []
    for override in overrides:
        key = override.split("=", 1)[0].lstrip("+~")
        if key in ("resume", "print_config", "check"):
            continue
        dotlist.append(override.lstrip("+"))
    saved = upgrade_saved(run.config(), f"{run.root}'s saved config")
    cfg = OmegaConf.merge(saved, OmegaConf.from_dotlist(dotlist))
    cfg.resume = str(run.root)
    cfg.ckpt_path = str(run.resume_checkpoint())
    return cfg


def rerun_overrides(argv: list[str]) -> list[str]:
    """Re-running a saved config (`-cp <run>/.hydra -cn config`): that config.yaml has no
    `hydra:` block of ours, so give it our run directory layout and the old run's name."""
    config_path = None
    for i, arg in enumerate(argv):
        if arg in ("-cp", "--config-path") and i + 1 < len(argv):
            config_path = argv[i + 1]
        elif arg.startswith("--config-path="):
            config_path = arg.split("=", 1)[1]
    if not config_path:
        return []
    saved = Path(config_path).expanduser()
    if not (saved.name == ".hydra" and Run.is_run_dir(saved.parent)):
        return []
    ours = OmegaConf.to_container(OmegaConf.load(CONF_DIR / "train.yaml").hydra)  # unresolved
    extra = [f"hydra.run.dir='{ours['run']['dir']}'", f"hydra.sweep.dir='{ours['sweep']['dir']}'"]
    # our callbacks: the whole command checked before anything runs (check=true too), the
    # saved config's old keys upgraded; a sweep's outcome
    for name, node in ours.get("callbacks", {}).items():
        extra.append(f"++hydra.callbacks.{name}._target_={node['_target_']}")
    if not any(arg.startswith("name=") for arg in argv):
        extra.append(f"name={OmegaConf.load(saved.parent / RESOLVED_CONFIG).get('name', 'rerun')}")
    return extra


def unparsable_argument(argv: list[str]) -> str | None:
    """The first command-line override that Hydra's grammar cannot read, if any."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    for arg in argv:
        if arg.startswith("-") or "=" not in arg:
            continue
        try:
            parser.parse_overrides([arg])
        except Exception:  # noqa: BLE001 - Hydra raises its own parse errors
            return arg
    return None


def check_writable(argv: list[str]) -> None:
    """Run directories go under paths.log_dir: refuse one that cannot be written, before Hydra
    tries (and fails with a stack trace)."""
    given = [
        a.split("=", 1)[1] for a in argv if a.startswith(("paths.log_dir=", "+paths.log_dir="))
    ]
    target = Path(
        given[-1] if given else os.environ.get("NNLAB_OUTPUT_DIR") or "outputs"
    ).expanduser()
    # Nothing is left here: a refused (or check=true) command leaves no empty folder. The
    # folders that do not exist yet are made for the probe and removed after it (Hydra makes
    # them again when a run starts); one another process made meanwhile is left to it.
    made: list[Path] = []
    missing = []
    folder = target.absolute()
    while not folder.exists() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    try:
        for folder in reversed(missing):
            try:
                folder.mkdir()
                made.append(folder)
            except FileExistsError:
                pass
        with tempfile.TemporaryFile(dir=target):  # writable? (removed at once)
            pass
    except OSError as exc:
        raise UserError(
            f"paths.log_dir: cannot write run directories under {target} ({exc.strerror}); point "
            "NNLAB_OUTPUT_DIR or paths.log_dir=... at a writable directory"
        ) from None
    finally:
        for folder in reversed(made):
            try:
                folder.rmdir()
            except OSError:  # another command's run directory is in it now
                pass
