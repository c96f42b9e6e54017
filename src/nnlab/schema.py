"""One declared schema for every setting, checked before anything is built or trained.

Every config node with a `_target_` (data module, model, task, optimizer, scheduler, callbacks,
loggers, trainer, trainer plugins, a user's own class) is checked against its target's
constructor: the keys it takes (its signature, following `**kwargs` up the base classes) and
their type annotations (`Literal[...]` choices, `Annotated[int, Field(ge=1)]` bounds), validated
with pydantic v2. Booleans, whole numbers and strings are strict (`data.standardize=no` is a
string, not false). Third-party classes whose annotations say too little (Lightning's Trainer,
torch's optimizers) get bounds from `REFINED`. The settings that are no object's arguments
(seed, monitor, checkpoint, ...) are checked against `RunSettings`.

A class may declare, as class attributes:
- `schema_extra_keys`: {key: annotation} its `**kwargs` take (derived sizes, renamed keys);
- `schema_applies`: {key: (selector key, variants)}: a key that only some variants use (an LSTM
  has no `depth`); set on another variant it is refused, naming the variants it applies to;
- `schema_excluded_keys`: keys of a base class that it fixes itself (refused as unknown);
- `schema_check(node, key)`: a classmethod for nested structures (a Sequential's layer list).

Every refusal is a ConfigError naming the dotted key as typed (`model.layers[2].units`), the
value, what is expected and the fix; nnlab's commands print it as one `error:` line, exit 2.
"""

from __future__ import annotations

import collections.abc
import copy
import dataclasses
import difflib
import functools
import importlib
import inspect
import types
import typing
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import typing_extensions
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict
from omegaconf.errors import MissingMandatoryValue
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    TypeAdapter,
    ValidationError,
    create_model,
)

from nnlab.errors import ConfigError, exit_on_user_error, user_error_cause

# -- reusable declared types (constructors annotate their arguments with these) ----------------
PositiveInt = Annotated[int, Field(ge=1)]
NonNegativeInt = Annotated[int, Field(ge=0)]
PositiveFloat = Annotated[float, Field(gt=0)]
NonNegativeFloat = Annotated[float, Field(ge=0)]
Rate = Annotated[float, Field(ge=0, lt=1)]  # dropout: a fraction of units, 1 would drop all
Fraction = Annotated[float, Field(ge=0, le=1)]
Seed = Annotated[int, Field(ge=0, le=2**32 - 1)]  # what numpy / Lightning accept
InMemory = bool | Literal["auto"]
Folds = Annotated[int, Field(ge=2)]  # k-fold cross-validation: at least two parts


def _has_target(v: Any) -> Any:
    if isinstance(v, dict) and "_target_" not in v:
        raise ValueError(
            "a node naming its class: {_target_: torch.optim.SGD, _partial_: true, lr: 0.1}"
        )
    return v


def _codec(name: str) -> str:
    from nnlab.files import check_encoding

    return check_encoding(name)


# A text encoding Python knows (data.encoding=latin-1).
Encoding = Annotated[str, AfterValidator(_codec)]

# An object built from config (the task's optimizer and scheduler): a mapping with _target_.
TargetNode = Annotated[dict[str, Any], AfterValidator(_has_target)]


def _epochs(v: int | None) -> int | None:
    if v is not None and v != -1 and v < 1:
        raise ValueError("a whole number >= 1 (-1: no limit)")
    return v


def _limit(v: Any) -> Any:  # Lightning's limit_*_batches: a count of batches or a fraction
    if isinstance(v, float) and not 0.0 <= v <= 1.0:
        raise ValueError("a fraction in [0, 1] or a whole count of batches")
    return v


def _not_spawned(v: Any) -> Any:
    # Spawned/forked ranks hand only rank 0's weights back through a queue: the run's epochs,
    # metrics and checkpoints would not be this run's. Subprocess DDP (trainer=ddp_cpu) works.
    if isinstance(v, str) and any(w in v for w in ("spawn", "fork", "notebook")):
        raise ValueError(
            "a strategy whose ranks run this command (ddp, auto; use trainer=ddp_cpu or "
            "trainer=ddp), not a spawned/forked one"
        )
    return v


def _devices(v: Any) -> Any:
    if isinstance(v, int) and (v == 0 or v < -1):
        raise ValueError("a count >= 1 (-1: all), a list of ids, or 'auto'")
    return v


PRECISIONS = Literal[
    "64", "64-true", "32", "32-true", "16", "16-mixed", "bf16", "bf16-mixed", "bf16-true",
    "16-true", "transformer-engine", "transformer-engine-float16", 64, 32, 16,
]  # fmt: skip
LimitBatches = Annotated[NonNegativeInt | Fraction | None, AfterValidator(_limit)]

# Bounds and choices that third-party constructors do not annotate; by class (and its subclasses).
REFINED: dict[str, dict[str, Any]] = {
    "lightning.pytorch.trainer.trainer.Trainer": {
        "max_epochs": Annotated[int | None, AfterValidator(_epochs)],
        "min_epochs": NonNegativeInt | None,
        "max_steps": Annotated[int, Field(ge=-1)],
        "num_nodes": PositiveInt,
        "devices": Annotated[int | list[NonNegativeInt] | str, AfterValidator(_devices)],
        "accelerator": Literal["auto", "cpu", "gpu", "cuda", "mps", "tpu"],
        "precision": PRECISIONS,
        "log_every_n_steps": PositiveInt | None,
        "check_val_every_n_epoch": PositiveInt | None,
        "accumulate_grad_batches": PositiveInt,
        "gradient_clip_val": NonNegativeFloat | None,
        "limit_train_batches": LimitBatches,
        "limit_val_batches": LimitBatches,
        "limit_test_batches": LimitBatches,
        "limit_predict_batches": LimitBatches,
        "deterministic": bool | Literal["warn"] | None,
        "strategy": Annotated[Any, AfterValidator(_not_spawned)],
        "default_root_dir": str | None,
    },
    "torch.optim.optimizer.Optimizer": {
        "lr": PositiveFloat,
        "weight_decay": NonNegativeFloat,
        "momentum": NonNegativeFloat,
        "eps": PositiveFloat,
    },
}

# Hydra's launchers take `**kwargs`; their plugins declare the settings in a config dataclass.
_SUBMITIT = "hydra_plugins.hydra_submitit_launcher"
DECLARED_BY = {
    "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher": (
        "hydra_plugins.hydra_joblib_launcher.config.JobLibLauncherConf"
    ),
    f"{_SUBMITIT}.submitit_launcher.SlurmLauncher": f"{_SUBMITIT}.config.SlurmQueueConf",
    f"{_SUBMITIT}.submitit_launcher.LocalLauncher": f"{_SUBMITIT}.config.LocalQueueConf",
}


def _nonzero(v: int) -> int:
    if v == 0:
        raise ValueError("a count of workers >= 1 (-1: one per CPU)")
    return v


_QUEUE = {  # submitit's queue settings (SLURM's and the local executor's)
    "timeout_min": PositiveInt,
    "cpus_per_task": PositiveInt | None,
    "gpus_per_node": NonNegativeInt | None,
    "tasks_per_node": PositiveInt,
    "mem_gb": PositiveInt | None,
    "nodes": PositiveInt,
}
REFINED.update(
    {
        "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher": {
            "n_jobs": Annotated[int, AfterValidator(_nonzero)],
            "backend": Literal["loky", "multiprocessing", "threading"] | None,
            "prefer": Literal["processes", "threads"],
            "require": Literal["sharedmem"] | None,
            "verbose": NonNegativeInt,
            "timeout": PositiveFloat | None,
            "mmap_mode": Literal["r+", "r", "w+", "c"] | None,
        },
        f"{_SUBMITIT}.submitit_launcher.LocalLauncher": _QUEUE,
        f"{_SUBMITIT}.submitit_launcher.SlurmLauncher": {
            **_QUEUE,
            "cpus_per_gpu": PositiveInt | None,
            "gpus_per_task": PositiveInt | None,
            "signal_delay_s": NonNegativeInt,
            "max_num_timeout": NonNegativeInt,
            "array_parallelism": PositiveInt,
        },
    }
)


# Arguments a build site passes itself (never in the config): not "missing" when absent.
SUPPLIED = {"net", "params", "optimizer", "callbacks", "logger", "plugins"}


class Checkpointing(BaseModel):
    model_config = ConfigDict(extra="forbid")
    enabled: StrictBool = Field(True, description="false: save no checkpoint")
    save_top_k: Annotated[StrictInt, Field(ge=-1)] = Field(
        1, description="the best k checkpoints by `monitor` (-1: all)"
    )
    every_n_minutes: Annotated[StrictFloat, Field(ge=0)] = Field(
        5, description="periodic checkpoints every so many minutes of training (0: off)"
    )
    every_n_train_steps: Annotated[StrictInt, Field(ge=0)] = Field(
        0, description="periodic checkpoints every so many optimizer steps (0: off)"
    )


class RunSettings(BaseModel):
    """nnlab-train's own keys (conf/train.yaml), and the groups that are checked as objects."""

    model_config = ConfigDict(extra="forbid")
    name: StrictStr | None = Field(description="names the run directory (the experiment's name)")
    seed: Annotated[StrictInt, Field(ge=0, le=2**32 - 1)] | None = Field(
        12345, description="seeds Python, numpy and torch (and every rank/worker); null: none"
    )
    tags: list[StrictStr | StrictInt | StrictFloat] = Field(
        default_factory=list, description="labels for the run, shown by loggers and nnlab-report"
    )
    monitor: StrictStr = Field("val/loss", description="the metric checkpoints and stopping watch")
    monitor_mode: Literal["min", "max"] = Field("min", description="whether lower is better")
    optimized_metric: StrictStr | list[StrictStr] | None = Field(
        None,
        description="the metric nnlab-train returns to a sweeper (a list: several objectives)",
    )
    ckpt_path: StrictStr | None = Field(
        None, description="start from this checkpoint's weights, in a new run directory"
    )
    resume: StrictStr | None = Field(
        None, description="continue the run in this directory from its last checkpoint"
    )
    print_config: StrictBool = Field(True, description="print the composed config tree")
    check: StrictBool = Field(
        False, description="compose and check (every trial of -m), print the plan, train nothing"
    )
    train: StrictBool = Field(
        True, description="fit the model; false: only validate and test ckpt_path's weights"
    )
    test: StrictBool = Field(True, description="test the best checkpoint on the test split")
    test_on: Literal["best", "last"] = Field(
        "best",
        description="the weights validated and tested: the best checkpoint, or the last weights",
    )
    checkpoint: Checkpointing = Field(default_factory=Checkpointing)
    paths: dict[str, Any] = Field(default_factory=dict, description="where data and runs live")
    data: dict[str, Any] = Field(description="the data module (data group)")
    model: dict[str, Any] = Field(description="the network (model group)")
    task: dict[str, Any] = Field(description="the task, optimizer, scheduler (task group)")
    trainer: dict[str, Any] = Field(description="Lightning's Trainer (trainer group)")
    callbacks: dict[str, Any] | None = Field(None, description="callbacks group")
    logger: dict[str, Any] | None = Field(None, description="logger group")
    cluster: dict[str, Any] | None = Field(None, description="cluster group")
    averaging: dict[str, Any] | None = Field(None, description="averaging group (ema, swa)")


# -- annotations made strict -------------------------------------------------------------------
_STRICT = {bool: StrictBool, int: StrictInt, float: StrictFloat, str: StrictStr}
_CONTAINERS = {
    list: list,
    tuple: tuple,
    dict: dict,
    set: list,
    frozenset: list,
    collections.abc.Sequence: list,
    collections.abc.MutableSequence: list,
    collections.abc.Mapping: dict,
    collections.abc.MutableMapping: dict,
    collections.abc.Iterable: list,
}


def strict(tp: Any) -> Any:
    """`tp` with bool/int/float/str strict (no "no" for false, no "3" for 3) and what pydantic
    cannot check (a torch module, a tensor) as Any."""
    if tp is inspect.Parameter.empty or tp is Any or tp is None or tp is type(None):
        return Any if tp is inspect.Parameter.empty else tp
    if tp in _STRICT:
        return _STRICT[tp]
    origin = get_origin(tp)
    if origin is Annotated:
        base, *meta = get_args(tp)
        return Annotated[(strict(base), *meta)]
    if origin is Literal:
        return tp
    if origin in (Union, types.UnionType):
        members = tuple(strict(a) for a in get_args(tp))
        return Any if Any in members else Union[members]  # noqa: UP007 - a built tuple
    if origin in _CONTAINERS:
        args = get_args(tp)
        container = _CONTAINERS[origin]
        if not args:
            return container
        if container is tuple:
            if len(args) == 2 and args[1] is Ellipsis:
                return tuple[strict(args[0]), ...]
            return tuple[tuple(strict(a) for a in args)]
        return (
            container[tuple(strict(a) for a in args)]
            if container is dict
            else list[strict(args[0])]
        )
    if tp in _CONTAINERS:
        return _CONTAINERS[tp]
    if tp is Path:
        return StrictStr | Path
    if isinstance(tp, type) and (typing_extensions.is_typeddict(tp) or issubclass(tp, BaseModel)):
        return tp
    return Any


# -- a target's declared keys ------------------------------------------------------------------
class Declared(typing.NamedTuple):
    owner: str  # the class or function, for messages
    fields: dict[str, tuple[Any, Any]]  # key -> (annotation, default or ...)
    open: bool  # **kwargs reach code that takes anything
    applies: dict[str, tuple[str, tuple[str, ...]]]
    hook: Any  # schema_check classmethod or None


def _hints(fn: Any) -> dict[str, Any]:
    fn = inspect.unwrap(fn)
    try:
        return typing.get_type_hints(fn, include_extras=True)
    except Exception:  # noqa: BLE001 - one annotation does not resolve: the others still do
        hints = {}
        for name, annotation in getattr(fn, "__annotations__", {}).items():
            try:  # a name only imported for type checkers (optuna's np): that one is Any
                hints[name] = (
                    eval(annotation, getattr(fn, "__globals__", {}), {})  # noqa: S307
                    if isinstance(annotation, str)
                    else annotation
                )
            except Exception:  # noqa: BLE001, S112
                continue
        return hints


def _refined(obj: Any) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for klass in reversed(getattr(obj, "__mro__", ())):
        found.update(REFINED.get(f"{klass.__module__}.{klass.__qualname__}", {}))
    return found


def locate(target: str) -> Any:
    """The object a dotted path names; ImportError with the names there are when it does not."""
    from nnlab.heap import importing

    parts = target.split(".")
    for i in range(len(parts) - 1, 0, -1):
        try:
            with importing():  # the check imports torch and Lightning, often first
                obj = importlib.import_module(".".join(parts[:i]))
        except ImportError as exc:
            if exc.name is None or not ".".join(parts[:i]).startswith(exc.name):
                raise  # the module exists but one of its own imports failed
            continue
        for j, part in enumerate(parts[i:], start=i):
            if not hasattr(obj, part):
                names = [n for n in dir(obj) if not n.startswith("_")]
                close = difflib.get_close_matches(part, names, n=3)
                hint = (
                    f"; did you mean {' or '.join('.'.join([*parts[:j], c]) for c in close)}"
                    if close
                    else ""
                )
                raise ImportError(f"{'.'.join(parts[:j])} has no {part!r}{hint}")
            obj = getattr(obj, part)
        return obj
    raise ImportError(f"no module {parts[0]!r}")


@functools.cache
def declared(target: str) -> Declared:
    """The keys `target` takes, with annotations; follows `**kwargs` to the base classes. A
    class whose settings are declared elsewhere (DECLARED_BY, or its `schema_declared_by`: a
    config dataclass or a function's signature) takes those."""
    obj = locate(target)
    source = DECLARED_BY.get(target) or getattr(obj, "schema_declared_by", None)
    if source is not None:
        base = declared(source)
        fields = {k: v for k, v in base.fields.items() if k not in _HYDRA_KEYS}
        for name, annotation in _refined(obj).items():
            if name in fields:
                fields[name] = (annotation, fields[name][1])
        return Declared(f"{obj.__module__}.{obj.__qualname__}", fields, base.open, {}, None)
    fields: dict[str, tuple[Any, Any]] = {}
    applies: dict[str, tuple[str, tuple[str, ...]]] = {}
    is_open = following = False
    excluded = set(getattr(obj, "schema_excluded_keys", ()))
    if isinstance(obj, type):
        inits = [k.__dict__["__init__"] for k in obj.__mro__ if "__init__" in k.__dict__]
        owners = [k for k in obj.__mro__ if "__init__" in k.__dict__]
        for klass in obj.__mro__:
            applies = {**klass.__dict__.get("schema_applies", {}), **applies}
    else:
        inits, owners = [obj], [obj]
    for init, owner in zip(inits, owners, strict=True):
        if init is object.__init__:
            break
        try:
            signature = inspect.signature(init)
        except (TypeError, ValueError):  # a builtin without a signature: take its word
            is_open = True
            break
        hints = _hints(init)
        keyword = False
        for i, (name, p) in enumerate(signature.parameters.items()):
            if i == 0 and isinstance(obj, type) and name in ("self", "cls"):
                continue
            if p.kind == p.VAR_KEYWORD:
                keyword = True
            elif p.kind != p.VAR_POSITIONAL and name not in fields and name not in excluded:
                default = p.default
                if following and default is p.empty:
                    default = None  # the subclass may pass it itself
                fields[name] = (hints.get(name, p.annotation), default)
        extra = owner.__dict__.get("schema_extra_keys") if isinstance(owner, type) else None
        if extra is not None:  # the class says what its **kwargs take
            for name, annotation in extra.items():
                fields.setdefault(name, (annotation, None))
            break
        if not keyword:
            break
        if not isinstance(obj, type) or not owner.__module__.startswith("nnlab."):
            is_open = True  # a function's or another library's **kwargs: where they go is unknown
            break
        following = True  # nnlab's **kwargs go to the base class: its keys (it may supply them)
    else:  # **kwargs all the way up
        is_open = True
    for name, annotation in _refined(obj).items():
        if name in fields:
            fields[name] = (annotation, fields[name][1])
    hook = getattr(obj, "schema_check", None) if isinstance(obj, type) else None
    owner = f"{obj.__module__}.{getattr(obj, '__qualname__', obj)}"
    return Declared(owner, fields, is_open, applies, hook)


@functools.cache
def _model(target: str, partial: bool) -> type[BaseModel]:
    spec = declared(target)
    fields = {}
    for name, (annotation, default) in spec.fields.items():
        required = default is inspect.Parameter.empty
        if required and (partial or name in SUPPLIED):
            default, required = None, False
        fields[name] = (strict(annotation), ... if required else default)
    config = ConfigDict(
        extra="allow" if spec.open else "forbid",
        arbitrary_types_allowed=True,
        protected_namespaces=(),
    )
    return create_model(f"Check_{target.replace('.', '_')}", __config__=config, **fields)


# -- messages ------------------------------------------------------------------------------------
def _expected(error: dict) -> str:
    kind, ctx = error["type"], error.get("ctx") or {}
    if kind == "literal_error":
        return f"one of {ctx.get('expected', '')}"
    if kind in ("int_type", "int_parsing", "int_from_float"):
        return "a whole number"
    if kind in ("float_type", "float_parsing"):
        return "a number"
    if kind in ("bool_type", "bool_parsing"):
        return "true or false (YAML booleans only)"
    if kind in ("string_type",):
        return "a string"
    if kind in ("list_type", "tuple_type"):
        return "a list, e.g. [1,2]"
    if kind in ("dict_type", "model_type", "model_attributes_type"):
        return "a mapping of keys, e.g. {a: 1}"
    if kind == "none_required":
        return "null"
    bounds = {
        "greater_than": ">", "greater_than_equal": ">=", "less_than": "<", "less_than_equal": "<=",
    }  # fmt: skip
    if kind in bounds:
        limit = next(iter(ctx.values()))
        if isinstance(limit, float) and limit.is_integer():
            limit = int(limit)
        return f"a number {bounds[kind]} {limit}"
    if kind == "too_short":
        return f"at least {ctx.get('min_length')} item(s)"
    if kind == "too_long":
        return f"at most {ctx.get('max_length')} item(s)"
    if kind == "value_error":
        return str(ctx.get("error", error["msg"]))
    return error["msg"][0].lower() + error["msg"][1:]


def _path(value: Any, loc: tuple, keyed: bool = False) -> tuple[str, Any, bool]:
    """The dotted suffix of `loc` that walks through `value` (pydantic adds union member tags
    such as 'int' or 'literal[...]' to it), the value found there, and whether it was found."""
    text, found = "", True
    for i, part in enumerate(loc):
        if isinstance(value, dict) and part in value:
            text, value = f"{text}.{part}", value[part]
        elif isinstance(value, list | tuple) and isinstance(part, int) and part < len(value):
            text, value = f"{text}[{part}]", value[part]
        elif (
            isinstance(value, dict)
            and isinstance(part, str)
            and (not text or keyed and i == len(loc) - 1)
        ):
            text, value, found = f"{text}.{part}", None, False  # a missing or unknown key
        # else: a union member's tag
    return text, value, found


def _fields_of(annotation: Any) -> dict[str, Any] | None:
    """The keys of the mapping type inside `annotation` (a pydantic model or a TypedDict)."""
    origin = get_origin(annotation)
    if origin is Annotated or origin in (Union, types.UnionType):
        for arg in get_args(annotation):
            if (found := _fields_of(arg)) is not None:
                return found
        return None
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return {n: f.annotation for n, f in annotation.model_fields.items()}
    if isinstance(annotation, type) and typing_extensions.is_typeddict(annotation):
        return typing.get_type_hints(annotation)
    return None


def _element(annotation: Any, mapping: bool = False) -> Any:
    """The element type of the list type (or the value type of the dict type) inside
    `annotation`."""
    origin = get_origin(annotation)
    if origin is Annotated or origin in (Union, types.UnionType):
        for arg in get_args(annotation):
            if (found := _element(arg, mapping)) is not None:
                return found
        return None
    if mapping:
        if origin in _CONTAINERS and _CONTAINERS[origin] is dict and get_args(annotation):
            return get_args(annotation)[-1]
        return None
    if origin in (list, tuple) or origin in _CONTAINERS and _CONTAINERS[origin] is list:
        args = get_args(annotation)
        return args[0] if args else Any
    return None


def _names_at(fields: dict[str, Any], loc: tuple) -> list[str]:
    """The valid keys where an unknown key `loc[-1]` was found (a nested block's, not the
    node's)."""
    current: Any = fields
    for part in loc[:-1]:
        if isinstance(current, dict) and part in current:
            annotation = current[part]
            current = _fields_of(annotation) or annotation
        elif isinstance(part, int):
            element = _element(current)
            current = _fields_of(element) if element is not None else None
        elif (value := _element(current, mapping=True)) is not None:  # a key of a dict[str, X]
            current = _fields_of(value) or value
        # else: a union member's tag
        if current is None:
            return []
    return sorted(current) if isinstance(current, dict) else []


def refusal(
    key: str, node: dict, errors: list[dict], owner: str, fields: dict[str, Any]
) -> ConfigError:
    """One ConfigError for a node's validation errors: the first key at fault, all that was
    expected of it."""
    errors = sorted(errors, key=lambda e: e["type"] != "extra_forbidden")  # a typo explains
    first = errors[0]

    def path(error: dict) -> tuple[str, Any, bool]:  # the last place of a key's error is a key
        return _path(node, error["loc"], error["type"] in ("missing", "extra_forbidden"))

    suffix, value, _ = path(first)
    full = f"{key}{suffix}".lstrip(".")
    same = [e for e in errors if path(e)[0] == suffix]
    kinds = {e["type"] for e in same}
    if "extra_forbidden" in kinds:
        name = str(first["loc"][-1])
        names = _names_at(fields, first["loc"])
        where = owner if len(first["loc"]) == 1 else f"{full.rsplit('.', 1)[0]}"
        close = difflib.get_close_matches(name, names, n=3, cutoff=0.5)
        hint = f"did you mean {' or '.join(close)}? " if close else ""
        return ConfigError(
            full,
            f"unknown key (value {value!r}): {where} takes {', '.join(names) or 'no keys'}; "
            f"{hint}remove it (~{full}) or rename it",
        )
    if "missing" in kinds and isinstance(first["loc"][-1], int):  # a fixed-length list
        parent, items, _ = _path(node, first["loc"][:-1])
        full = f"{key}{parent}".lstrip(".")
        wanted = 1 + max(
            e["loc"][-1] for e in errors if e["type"] == "missing" and isinstance(e["loc"][-1], int)
        )
        return ConfigError(
            full, f"got {items!r}; expected {wanted} items; set {full}=[...] with {wanted}"
        )
    if "missing" in kinds:
        return ConfigError(full, f"must be set ({owner} needs it); add {full}=VALUE")
    expected = sorted({_expected(e) for e in same}, key=lambda s: (s == "null", s))
    return ConfigError(
        full,
        f"got {value!r}; expected {' or '.join(expected)}; set {full}=... to such a value",
    )


def validate_mapping(
    fields: dict[str, tuple[Any, Any]], node: dict, key: str, owner: str, open_: bool = False
) -> None:
    """Check `node` against `fields` ({name: (annotation, default or ...)}), as `check` does a
    target's arguments; for schema_check hooks (a layer's arguments)."""
    config = ConfigDict(extra="allow" if open_ else "forbid", arbitrary_types_allowed=True)
    model = create_model(
        "Check", __config__=config, **{n: (strict(a), d) for n, (a, d) in fields.items()}
    )
    try:
        model.model_validate(node)
    except ValidationError as exc:
        raise refusal(
            key, node, exc.errors(), owner, {n: a for n, (a, _) in fields.items()}
        ) from None


# -- the check -----------------------------------------------------------------------------------
_HYDRA_KEYS = {"_target_", "_partial_", "_recursive_", "_convert_", "_args_"}
# Keys every network (the run's `model` node) takes besides its constructor's; the task keeps
# them with the network's config and the run acts on them (nnlab/assemble.py).
NETWORK_KEYS: dict[str, Any] = {
    "weights": str | None,  # Keras' weights=: a checkpoint or state-dict file loaded first
}


def network_arguments(node: Any) -> dict[str, Any]:
    """A network's config node as its constructor takes it: without NETWORK_KEYS (the run acts
    on those); every place that builds the network from config goes through this."""
    return {k: v for k, v in node.items() if k not in NETWORK_KEYS}


def keys_besides_target(key: str) -> dict[str, Any]:
    """What the node at dotted `key` takes besides its target's keys (the run's network, `model`:
    NETWORK_KEYS); every check of a node's keys asks this."""
    return NETWORK_KEYS if key == "model" else {}


def check_node(node: dict, key: str) -> None:
    """One node with a `_target_` (after its nested target nodes, checked first)."""
    target = node.get("_target_")
    if not isinstance(target, str):
        raise ConfigError(f"{key}._target_", f"expected a dotted class path, got {target!r}")
    try:
        spec = declared(target)
    except Exception as exc:  # noqa: BLE001 - ImportError, AttributeError, ... from the import
        raise ConfigError(
            f"{key}._target_",
            f"cannot import {target!r}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
            "; name an importable class (module.Class) on the Python path",
        ) from None
    args = {k: v for k, v in node.items() if k not in _HYDRA_KEYS}
    if besides := keys_besides_target(key):  # the network keys: checked here, not the constructor's
        extra = {k: args.pop(k) for k in besides if k in args}
        fields = {k: (annotation, None) for k, annotation in besides.items()}
        validate_mapping(fields, extra, key, "a network")
    # a nested target node (the task's optimizer) is checked on its own: here only its _target_
    plain = {k: ({"_target_": v["_target_"]} if _is_target(v) else v) for k, v in args.items()}
    try:
        _model(target, bool(node.get("_partial_"))).model_validate(plain)
    except ValidationError as exc:
        fields = {n: a for n, (a, _) in spec.fields.items()}
        raise refusal(key, plain, exc.errors(), spec.owner, fields) from None
    for name, (selector, variants) in spec.applies.items():
        chosen = args.get(selector, spec.fields.get(selector, (None, None))[1])
        if args.get(name) is not None and chosen not in variants:
            raise ConfigError(
                f"{key}.{name}",
                f"{args[name]!r} is not used by {key}.{selector}={chosen!r}: {name} applies to "
                f"{selector} {', '.join(variants)} only; remove it (~{key}.{name} or "
                f"{key}.{name}=null) or choose one of those",
            )
    if spec.hook is not None:
        spec.hook(args, key)


def check_args(target: Any, key: str, **kwargs: Any) -> None:
    """`check_node` of a node building `target` (a class or its dotted path) with `kwargs`."""
    path = target if isinstance(target, str) else f"{target.__module__}.{target.__qualname__}"
    check_node({"_target_": path, **kwargs}, key)


def _is_target(value: Any) -> bool:
    return isinstance(value, dict) and "_target_" in value


def _walk(value: Any, key: str) -> None:
    """Every target node under `value` (deepest first), each checked."""
    if isinstance(value, dict):
        for name, child in value.items():
            _walk(child, f"{key}.{name}" if key else str(name))
        if "_target_" in value:
            check_node(value, key)
    elif isinstance(value, list):
        for i, child in enumerate(value):
            _walk(child, f"{key}[{i}]")


def resolved(cfg: DictConfig) -> dict[str, Any]:
    """The config without Hydra's node, interpolations resolved; one that cannot resolve (or a
    ??? value) is a ConfigError naming its key."""
    plain: dict[str, Any] = {}
    for name in cfg:
        if name == "hydra":
            continue
        plain[name] = _resolve(cfg, str(name))
    return plain


def _resolve(cfg: Any, key: str) -> Any:
    try:
        node = OmegaConf.select(cfg, key, throw_on_missing=True) if "." in key else cfg[key]
        if isinstance(node, DictConfig | ListConfig):
            return OmegaConf.to_container(node, resolve=True, throw_on_missing=True)
        return node
    except MissingMandatoryValue as exc:  # ??? left in the config (a value nobody gave)
        missing = exc.full_key or key
        raise ConfigError(
            missing, f"must be set (it is ??? in the config); add {missing}=VALUE to the command"
        ) from None
    except Exception as exc:  # noqa: BLE001 - which child failed? name the deepest key
        if (cause := user_error_cause(exc)) is not None:  # a resolver that read the data
            raise cause from None
        node = OmegaConf.select(cfg, key, throw_on_resolution_failure=False)
        if isinstance(node, DictConfig):
            for child in node:
                _resolve(cfg, f"{key}.{child}")
        elif isinstance(node, ListConfig):
            for i in range(len(node)):
                _resolve(node, str(i))
        raise ConfigError(key, f"cannot be resolved: {str(exc).splitlines()[0]}") from None


def check(cfg: DictConfig) -> None:
    """Everything a run is built from, checked before anything is built: the run's own keys
    against `RunSettings`, every `_target_` node against its target's signature."""
    try:
        check_plain(resolved(cfg))
    except ConfigError as exc:
        source = _interpolation(cfg, exc.key)
        if source is None:
            raise
        raise ConfigError(
            exc.key,
            f"{str(exc)[len(exc.key) + 2 :]} (it is {source} in the config: the value "
            "comes from there)",
        ) from None


def _interpolation(cfg: DictConfig, key: str) -> str | None:
    """The interpolation (`${data.input_size}`) a key's value comes from, if it does."""
    parent_key, _, name = key.rpartition(".")
    try:
        parent = OmegaConf.select(cfg, parent_key) if parent_key else cfg
        if isinstance(parent, DictConfig) and name in parent:
            if OmegaConf.is_interpolation(parent, name):
                return str(parent._get_node(name)._value())
    except Exception:  # noqa: BLE001 - a key OmegaConf cannot select (list indices): no hint
        return None
    return None


# -- unknown keys of nnlab's classes, found before their modules (and torch) are imported --------
# class attributes that leave the keys a class takes as its __init__'s parameters
_KEYS_UNCHANGED = {"schema_applies", "schema_old_defaults", "schema_check"}


def source_keys(target: str) -> frozenset[str] | None:
    """The keys an nnlab class takes, read from its module's source without importing it (an
    import of nnlab.models is an import of torch: a refused key answers in a fraction of the
    time, tests/test_startup.py). Only where the source says all: the class's own `__init__`
    without `**kwargs`, no decorator, no schema attribute that adds or removes keys. None
    otherwise, and for a module already imported (`declared` is as quick then)."""
    import sys

    module = target.rpartition(".")[0]
    return None if module in sys.modules else keys_in_source(target)


@functools.cache
def keys_in_source(target: str) -> frozenset[str] | None:
    """`source_keys`, imported or not (tests compare it with `declared`)."""
    import ast

    module, _, name = target.rpartition(".")
    if not module.startswith("nnlab."):
        return None
    root = Path(__file__).parent.joinpath(*module.split(".")[1:])
    path = root / "__init__.py" if root.is_dir() else root.with_suffix(".py")
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (OSError, SyntaxError, ValueError):
        return None
    classes = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == name]
    if len(classes) != 1 or classes[0].decorator_list:
        return None
    init = None
    for node in classes[0].body:
        targets = [node.target] if isinstance(node, ast.AnnAssign) else getattr(node, "targets", [])
        names = {t.id for t in targets if isinstance(t, ast.Name)}
        if isinstance(node, ast.FunctionDef):
            names.add(node.name)
        if any(n.startswith("schema_") and n not in _KEYS_UNCHANGED for n in names):
            return None
        if isinstance(node, ast.FunctionDef) and node.name == "__init__":
            init = node.args
    if init is None or init.kwarg is not None:
        return None
    params = [a.arg for a in (*init.posonlyargs, *init.args, *init.kwonlyargs)]
    return frozenset(params[1:])


def refuse_unknown_from_source(value: Any, key: str = "") -> None:
    """The unknown keys of every target node `source_keys` can judge, refused as `check_node`
    refuses them (the same message), before any target is imported."""
    if isinstance(value, list):
        for i, child in enumerate(value):
            refuse_unknown_from_source(child, f"{key}[{i}]")
        return
    if not isinstance(value, dict):
        return
    for name, child in value.items():
        refuse_unknown_from_source(child, f"{key}.{name}" if key else str(name))
    target = value.get("_target_")
    keys = source_keys(target) if isinstance(target, str) else None
    if keys is None:
        return
    args = {k: v for k, v in value.items() if k not in {*_HYDRA_KEYS, *keys_besides_target(key)}}
    if set(args) <= keys:
        return
    config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)
    model = create_model("Source", __config__=config, **{k: (Any, None) for k in keys})
    try:
        model.model_validate(args)
    except ValidationError as exc:
        errors = [e for e in exc.errors() if e["type"] == "extra_forbidden"]
        raise refusal(key, args, errors, target, dict.fromkeys(keys, Any)) from None


def check_plain(plain: dict[str, Any]) -> None:
    """`check` of a resolved config (plain dicts and lists, no `hydra` node)."""
    settings = {k: v for k, v in plain.items() if k in RunSettings.model_fields}
    unknown = sorted(set(plain) - set(RunSettings.model_fields) - GROUPS_WITHOUT_SCHEMA)
    for name in unknown:
        close = difflib.get_close_matches(name, list(RunSettings.model_fields), n=3, cutoff=0.5)
        hint = f"did you mean {' or '.join(close)}? " if close else ""
        raise ConfigError(
            name,
            f"unknown top-level key (value {plain[name]!r}); {hint}nnlab-train takes "
            f"{', '.join(RunSettings.model_fields)}; remove it (~{name})",
        )
    try:
        RunSettings.model_validate(settings)
    except ValidationError as exc:
        fields = {n: f.annotation for n, f in RunSettings.model_fields.items()}
        raise refusal("", settings, exc.errors(), "nnlab-train", fields) from None
    groups = ("data", "model", "task", "trainer", "callbacks", "logger", "cluster", "averaging")
    for group in groups:  # an unknown key of nnlab's classes: no import (of torch) to say so
        refuse_unknown_from_source(plain.get(group), group)
    for group in groups:
        _walk(plain.get(group), group)
    _watched_without_validation(plain)


def is_plateau(scheduler: Any) -> bool:
    """Whether a `task.scheduler` node builds a ReduceLROnPlateau (which watches a metric)."""
    target = scheduler.get("_target_", "") if isinstance(scheduler, dict | DictConfig) else ""
    return str(target).endswith("ReduceLROnPlateau")


def _watched_without_validation(plain: dict[str, Any]) -> None:
    """A validation metric (`val/...`) that a run watches although it never validates
    (trainer.limit_val_batches=0): the key that watches it, refused before anything runs (else
    a plateau schedule fails after the first epoch, the search's metric after the training)."""
    if (plain.get("trainer") or {}).get("limit_val_batches") != 0:
        return
    task, callbacks = plain.get("task") or {}, plain.get("callbacks") or {}
    watchers: dict[str, Any] = {}
    if (plain.get("checkpoint") or {}).get("enabled", True):
        watchers["monitor"] = plain.get("monitor")  # the best checkpoint's metric
    watchers["optimized_metric"] = plain.get("optimized_metric")
    if is_plateau(task.get("scheduler")):
        watchers["task.scheduler_monitor"] = task.get("scheduler_monitor")
    for name, callback in callbacks.items():
        if isinstance(callback, dict) and "monitor" in callback:
            watchers[f"callbacks.{name}.monitor"] = callback["monitor"]
    for key, value in watchers.items():
        for metric in value if isinstance(value, list) else [value]:
            if isinstance(metric, str) and metric.startswith("val/"):
                raise ConfigError(
                    key,
                    f"watches {metric}, a validation metric, and trainer.limit_val_batches=0 "
                    f"turns validation off; watch a training metric ({key}=train/loss) or "
                    "let validation run",
                )


# Groups composed into the run config that hold no run setting (presets' own bookkeeping).
GROUPS_WITHOUT_SCHEMA = {"experiment", "hparams_search", "debug", "local"}


def adapter(annotation: Any) -> TypeAdapter:
    return TypeAdapter(strict(annotation))


# -- a multirun's launcher and sweeper ---------------------------------------------------------
HYDRA_NODES = ("launcher", "sweeper")


def hydra_settings(config: DictConfig) -> dict[str, Any]:
    """hydra.launcher and hydra.sweeper, resolved ({"launcher": {...}, "sweeper": {...}})."""
    return {name: _resolve(config, f"hydra.{name}") for name in HYDRA_NODES}


def check_hydra_settings(settings: dict[str, Any]) -> None:
    """A multirun's launcher and sweeper settings against what their classes declare (their
    signatures, a plugin's config dataclass: DECLARED_BY, or `schema_declared_by`), as every
    other node's; the sampler under the sweeper too."""
    for name, node in settings.items():
        _walk(node, f"hydra.{name}")


# -- a whole command checked before Hydra runs anything (hydra.callbacks in conf/train.yaml) ----
def describe(plain: dict[str, Any]) -> str:
    """What a run will train, in a few words (for check=true's plan)."""

    def name(node: Any) -> str:
        target = node.get("_target_", "?") if isinstance(node, dict) else "?"
        return str(target).rsplit(".", 1)[-1]

    trainer = plain.get("trainer") or {}
    epochs = trainer.get("max_epochs")
    return (
        f"{name(plain.get('model'))} on {name(plain.get('data'))} as {name(plain.get('task'))}, "
        f"{epochs if epochs not in (None, -1) else 'unlimited'} epoch(s), seed {plain.get('seed')}"
    )


def _with_output_dir(cfg: DictConfig, output_dir: str) -> None:
    """Point HydraConfig (what ${hydra:runtime.output_dir} reads) at `output_dir`, as Hydra's
    run_job does before the task function; the check resolves paths.output_dir through it.
    HydraConfig reads `cfg` itself (Hydra's set_config would copy its hydra node for every
    trial, for a check that only reads it)."""
    import os

    from omegaconf import open_dict, read_write

    from nnlab.compat import hydra as hydra_compat

    with read_write(cfg.hydra.runtime), open_dict(cfg.hydra.runtime):
        cfg.hydra.runtime.output_dir = os.path.abspath(output_dir)
    hydra_compat.point_hydra_config(cfg)


@dataclasses.dataclass(frozen=True)
class CheckedJob:
    """A trial of a sweep as the up-front check composed it (`config`, for the launcher of the
    `master` config) and resolved it (`plain`: without the hydra node, checked), at
    `output_dir`."""

    master: DictConfig
    config: DictConfig
    plain: dict[str, Any]
    output_dir: str


# The trials of a packed sweep as the check left them, by overrides: the packed launcher takes
# them (nnlab/packed/launcher.py: share_compositions) instead of composing, resolving and
# checking each again. Other launchers compose their jobs themselves: nothing is kept for them.
CHECKED_JOBS: dict[tuple[str, ...], CheckedJob] = {}
PACKED_LAUNCHER = "hydra_plugins.nnlab_packed_launcher.packed_launcher.PackedLauncher"


def take_checked_job(master: DictConfig, overrides: Any) -> CheckedJob | None:
    """The check's composition of the trial with these overrides of `master` (once)."""
    job = CHECKED_JOBS.pop(tuple(overrides), None)
    return job if job is not None and job.master is master else None


def sweep_trials(config: DictConfig) -> list[list[str]] | None:
    """Every trial's overrides of a multirun with Hydra's basic sweeper (the launchers: basic,
    joblib, packed, submitit), as the sweeper will expand them; None for a search whose trials
    are chosen as it runs (Optuna). Uses Hydra's sweeper and parser as the sweeper does."""
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from nnlab.compat import hydra as hydra_compat

    if not str(config.hydra.sweeper.get("_target_", "")).endswith(".BasicSweeper"):
        return None
    params = config.hydra.sweeper.get("params") or {}
    arguments = [f"{k}={v}" for k, v in params.items()]
    arguments += list(OmegaConf.to_container(config.hydra.overrides.task, resolve=False))
    loader = GlobalHydra.instance().config_loader()
    parsed = OverridesParser.create(config_loader=loader).parse_overrides(arguments)
    return hydra_compat.split_sweep_arguments(parsed)


def search_probes(config: DictConfig) -> list[tuple[list[str], dict[str, str]]]:
    """A search's trials as the schema checks them, before the first is asked for: (overrides,
    {key: which point of its search-space entry it is at}). Its fixed arguments with each
    search-space entry at each of its ends (every choice, an interval's or range's low and high
    end) and the other entries at their first; the overrides in the order the sweeper gives a
    trial (nnlab/search/sweeper.py)."""
    from nnlab.search.space import ends, override_value, search_entries

    params = config.hydra.sweeper.get("params") or {}
    arguments = [f"{k}={v}" for k, v in params.items()]
    arguments += list(OmegaConf.to_container(config.hydra.overrides.task, resolve=False))
    entries = search_entries(arguments)
    fixed = [f"{k}={v}" for k, (_, v) in entries.items() if isinstance(v, str)]
    space = {k: (text, ends(v)) for k, (text, v) in entries.items() if not isinstance(v, str)}

    def point(key: str, what: str, value: Any) -> tuple[str, str]:
        shown = override_value(value)
        return f"{key}={shown}", f"the {what} {shown} of the search-space entry {space[key][0]}"

    first = {k: point(k, *points[0]) for k, (_, points) in space.items()}
    probes = []
    for key, (_, points) in space.items():
        for what, value in points:
            at = {k: point(k, what, value) if k == key else first[k] for k in space}
            probes.append(([o for o, _ in at.values()] + fixed, {k: p for k, (_, p) in at.items()}))
    return probes or [(fixed, {})]


def _trial_config(
    config: DictConfig, overrides: list[str], num: int, cache: dict | None = None
) -> DictConfig:
    """A trial's composed config, as the sweeper composes it (Hydra's load_sweep_config), once
    per shape of overrides as the packed launcher composes its jobs (compat/hydra.py:
    compose_job)."""
    from hydra.core.global_hydra import GlobalHydra

    from nnlab.compat import hydra as hydra_compat

    loader = GlobalHydra.instance().config_loader()
    cfg = hydra_compat.compose_job(loader, config, list(overrides), {} if cache is None else cache)
    OmegaConf.copy_cache(from_config=config, to_config=cfg)  # the sweep's ${now:} and uid
    with open_dict(cfg):
        cfg.hydra.job.num = num
        cfg.hydra.job.id = num
    return cfg


class UpFrontCheck(Callback):
    """A Hydra callback: the whole command is checked before Hydra creates a directory. A run's
    config on `on_run_start`; on `on_multirun_start` every trial of the sweep is composed and
    checked before the first one starts or a job is queued (any launcher); an invalid trial
    ends the command naming its overrides and key. `check=true`: print the plan, exit 0.
    (Hydra turns a callback's exceptions into warnings: a refusal ends the command here, one
    `error:` line and exit 2, as nnlab's commands do.)"""

    def _guard_sweep_dir(self, config: DictConfig) -> None:
        """A sweep directory another process sweeps into is refused, for every launcher; this
        process holds its lock until the sweep ends."""
        from nnlab.runs import Run

        lock = Run(Path(str(config.hydra.sweep.dir)).expanduser())
        lock.lock("hydra.sweep.dir")
        self._sweep_lock = lock

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        with exit_on_user_error():
            self._run(config)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        with exit_on_user_error():
            self._multirun(config)

    _sweep_lock: Any = None  # the sweep directory's lock, held while this process sweeps

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if self._sweep_lock is not None:
            self._sweep_lock.unlock()
            self._sweep_lock = None

    def _run(self, config: DictConfig) -> None:
        guard_run_dir(config)
        from nnlab.compat import hydra as hydra_compat

        saved = hydra_compat.hydra_config()
        run_dir = str(config.hydra.run.dir)  # resolved once: Hydra then uses the same ${now:}
        cfg = copy.deepcopy(config)
        OmegaConf.copy_cache(from_config=config, to_config=cfg)
        with open_dict(cfg):
            if OmegaConf.is_missing(cfg.hydra.job, "num"):
                cfg.hydra.job.num = 0  # what the sweep subdir reads, unset in a single run
        _with_output_dir(cfg, run_dir)
        upgrade_rerun(cfg, cfg.hydra, quiet=not cfg.get("check"))  # the run notes it itself
        try:
            plain = resolved(cfg)
            check_plain(plain)
        finally:
            hydra_compat.point_hydra_config(saved)
        if plain.get("check"):
            print(f"check: the config is valid; would train {describe(plain)}")
            print(f"  run directory: {run_dir}")
            raise SystemExit(0)

    def _multirun(self, config: DictConfig) -> None:
        from nnlab.compat import hydra as hydra_compat

        saved = hydra_compat.hydra_config()
        str(config.hydra.sweep.dir)  # resolved once: every trial and Hydra share ${now:}, uid
        trials = sweep_trials(config)
        plan, composed, probes = [], {}, []
        CHECKED_JOBS.clear()
        keep = (  # for the packed launcher; a rerun's upgraded config is not what Hydra saves
            str(config.hydra.launcher.get("_target_")) == PACKED_LAUNCHER
            and not config.get("check")
            and rerun_of(config.hydra) is None
        )
        try:
            check_hydra_settings(hydra_settings(config))
            if trials is None:  # a search: every end of its space now, as trials would get it
                probes = search_probes(config)
                for overrides, points in probes:
                    cfg = _trial_config(config, overrides, 0, composed)
                    _with_output_dir(cfg, str(cfg.hydra.sweep.dir))
                    try:
                        check(cfg)
                    except ConfigError as exc:
                        # the entry at fault: the key's own, else the ones a trial had here
                        at = points.get(exc.key) or "; ".join(points.values())
                        if not at:
                            raise
                        raise ConfigError(
                            exc.key,
                            f"{str(exc)[len(exc.key) + 2 :]} ({at} leaves this: keep the "
                            "search space within the bound; nothing was run)",
                        ) from None
                trials = []
            for num, overrides in enumerate(trials):
                cfg = _trial_config(config, overrides, num, composed)
                upgrade_rerun(cfg, config.hydra, quiet=not config.get("check"))
                output_dir = f"{cfg.hydra.sweep.dir}/{cfg.hydra.sweep.subdir}"
                _with_output_dir(cfg, output_dir)
                try:
                    plain = resolved(cfg)
                    check_plain(plain)
                except ConfigError as exc:
                    raise ConfigError(
                        exc.key,
                        f"{str(exc)[len(exc.key) + 2 :]} (in trial #{num}: "
                        f"{' '.join(overrides) or 'no overrides'}; nothing was run)",
                    ) from None
                refuse_finished_other(Path(output_dir), plain, num, overrides)
                plan.append(f"  #{num} {' '.join(overrides)} -> {output_dir}: {describe(plain)}")
                if keep:
                    output_dir = str(cfg.hydra.runtime.output_dir)
                    CHECKED_JOBS[tuple(overrides)] = CheckedJob(config, cfg, plain, output_dir)
        finally:
            hydra_compat.point_hydra_config(saved)
        if not config.get("check"):
            self._guard_sweep_dir(config)  # checked trials first: a refusal writes nothing
            return
        what = (
            f"{len(plan)} trial(s)"
            if plan
            else f"a search (its trials are chosen as it runs; its space checked at {len(probes)} "
            "point(s): every choice, every interval's and range's ends)"
        )
        print(f"check: every config is valid; the sweep would run {what}")
        print("\n".join(plan))
        raise SystemExit(0)


def refuse_finished_other(
    output_dir: Path, plain: dict[str, Any], num: int, overrides: list[str]
) -> None:
    """A trial whose directory holds a finished run of another config (a sweep re-run with
    other seeds into its old folder) is refused: the old results would pass for the new
    trial's. One of the same config is left to the launcher (kept, as before)."""
    from nnlab.runs import RESOLVED_CONFIG, Run, relocatable_config

    if not Run.is_run_dir(output_dir) or Run(output_dir).state()[0] != "completed":
        return
    saved = OmegaConf.to_container(OmegaConf.load(output_dir / RESOLVED_CONFIG))
    now = relocatable_config(OmegaConf.create(plain), output_dir)
    if difference := config_difference(saved, now):
        raise ConfigError(
            "hydra.sweep.dir",
            f"trial #{num} ({' '.join(overrides) or 'no overrides'}): {output_dir} holds a "
            f"finished run of another config ({difference}); a finished run is never trained "
            "into again: sweep into a new directory, or run the sweep's own settings",
        )


def guard_run_dir(config: DictConfig) -> None:
    """Before Hydra writes into a single run's directory (.hydra/, train.log): a directory
    another process holds is refused, and so is one that holds a finished run, unless it is
    resumed (resume=); a resume that would change the run's groups is refused here too, so a
    refusal leaves the run's files as they were. Other ranks of a distributed run skip this
    (rank 0 holds the directory)."""
    from nnlab.cli import check_resume_overrides
    from nnlab.runs import Run, is_global_zero

    resume = config.get("resume")
    if resume:
        check_resume_overrides(list(config.hydra.overrides.task))
    run_dir = Path(str(config.hydra.run.dir)).expanduser()
    if not is_global_zero() or not run_dir.is_dir():
        return
    run = Run(run_dir)
    run.probe_lock("hydra.run.dir")  # a RunInUse naming the holder when another process has it
    if not resume and Run.is_run_dir(run_dir) and run.state()[0] == "completed":
        raise ConfigError(
            "hydra.run.dir",
            f"{run_dir} holds a finished run, which is never trained into again; continue it "
            f"with resume={run_dir}, or choose another directory",
        )


def upgrade_saved(cfg: DictConfig, where: str = "saved config", quiet: bool = False) -> DictConfig:
    """A config saved by an earlier nnlab (a resumed run's) with keys its variant never used
    set to their old defaults (an LSTM's `depth: 3`): those read as null, each with a note, so
    the run passes today's check unchanged. Anything else stays for the check to judge."""
    import logging

    log = logging.getLogger("nnlab.schema")
    for key in ("model",):
        node = cfg.get(key)
        if not isinstance(node, DictConfig) or "_target_" not in node:
            continue
        try:
            klass = locate(str(node._target_))
        except ImportError:
            continue
        old = getattr(klass, "schema_old_defaults", {})
        for name, (selector, variants) in getattr(klass, "schema_applies", {}).items():
            value = node.get(name)
            if name in old and value == old[name] and node.get(selector) not in variants:
                node[name] = None
                (log.debug if quiet else log.info)(
                    "%s: %s.%s=%r (an old default, unused by %s.%s=%r) read as null",
                    where, key, name, value, key, selector, node.get(selector),
                )  # fmt: skip
    return cfg


def rerun_of(hydra_node: Any) -> Path | None:
    """The run directory whose saved config this command runs again (`-cp <run>/.hydra -cn
    config`), from Hydra's config sources; None for any other command."""
    from nnlab.runs import Run

    for source in hydra_node.runtime.get("config_sources") or []:
        path = Path(str(source.get("path") or ""))
        if (
            source.get("provider") == "main"
            and path.name == ".hydra"
            and Run.is_run_dir(path.parent)
        ):
            return path.parent
    return None


def upgrade_rerun(cfg: DictConfig, hydra_node: Any, quiet: bool = False) -> DictConfig:
    """`upgrade_saved` of a config run again from a run's saved config (`quiet`: without its
    notes, which the run logs itself)."""
    if (run_dir := rerun_of(hydra_node)) is not None:
        upgrade_saved(cfg, f"{run_dir}'s saved config", quiet)
    return cfg


def type_text(annotation: Any) -> str:
    """An annotation as the reference shows it: `int >= 1`, `one of lstm, gru`, `null or ...`."""
    import annotated_types

    if annotation is inspect.Parameter.empty or annotation is Any:
        return "any"
    if annotation is None or annotation is type(None):
        return "null"
    simple = {bool: "true/false", int: "int", float: "number", str: "string", Path: "path"}
    if annotation in simple:
        return simple[annotation]
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Annotated:
        text = type_text(args[0])
        for meta in args[1:]:
            for m in getattr(meta, "metadata", [meta]):
                for cls, sign, attr in (
                    (annotated_types.Ge, ">=", "ge"), (annotated_types.Gt, ">", "gt"),
                    (annotated_types.Le, "<=", "le"), (annotated_types.Lt, "<", "lt"),
                ):  # fmt: skip
                    if isinstance(m, cls):
                        text += f" {sign} {getattr(m, attr)}"
                if isinstance(m, annotated_types.MinLen):
                    text += f" (at least {m.min_length})"
        return text
    if origin is Literal:
        return "one of " + ", ".join(
            str(a).lower() if isinstance(a, bool) else str(a) for a in args
        )
    if origin in (Union, types.UnionType):
        parts = [type_text(a) for a in args if a is not type(None)]
        return " or ".join(parts + (["null"] if type(None) in args else []))
    if origin in _CONTAINERS:
        container = _CONTAINERS[origin]
        if container is dict:
            return f"mapping of {type_text(args[-1])}" if args else "mapping"
        if container is tuple and args and args[-1] is not Ellipsis:
            same = {type_text(a) for a in args}
            return f"list of {len(args)} × {same.pop()}" if len(same) == 1 else "list"
        return f"list of {type_text(args[0])}" if args else "list"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return f"mapping ({', '.join(annotation.model_fields)})"
    if isinstance(annotation, type) and typing_extensions.is_typeddict(annotation):
        return f"mapping ({', '.join(typing.get_type_hints(annotation))})"
    return getattr(annotation, "__name__", str(annotation))


# Keys a run's saved config may hold differently from the command that made it: how it was
# started or continued, not what it trains.
VOLATILE_KEYS = {"resume", "ckpt_path", "print_config", "check", "paths.output_dir"}


def config_difference(saved: Any, now: Any, key: str = "") -> str | None:
    """The first key whose value differs between a run's saved config and the one a command
    would run now (`key: saved -> now`), or None when they train the same thing."""
    if key in VOLATILE_KEYS:
        return None
    if isinstance(saved, dict) and isinstance(now, dict):
        for name in sorted(set(saved) | set(now), key=str):
            child = f"{key}.{name}" if key else str(name)
            missing = object()
            found = config_difference(saved.get(name, missing), now.get(name, missing), child)
            if found:
                return found
        return None
    if saved != now:

        def show(v: Any) -> str:
            return (
                "(absent)"
                if not isinstance(v, str | int | float | bool | list | dict | None)
                else repr(v)
            )

        return f"{key}: {show(saved)} -> {show(now)}"
    return None
