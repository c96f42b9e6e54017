"""A search space from Hydra's sweep syntax, as hydra-optuna-sweeper read it:

interval(a, b)            a float (or int, both ends int) uniform in [a, b]
tag(log, interval(a, b))  the same, log-uniform
choice(x, y, ...) / x,y   one of the values
range(a, b, step=s)       a, a+s, ... below b (Hydra's range: b excluded)
anything else             a fixed value, passed to every trial
"""

from __future__ import annotations

from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import (
    ChoiceSweep,
    IntervalSweep,
    Override,
    RangeSweep,
    Transformer,
)

from nnlab.errors import UserError


def _choices(override: Override) -> list[Any]:
    out = list(override.sweep_iterator(transformer=Transformer.encode))
    for x in out:
        if not isinstance(x, str | int | float | bool | type(None)):
            raise UserError(f"{override.input_line}: choices must be numbers or strings")
    return out


def distribution(override: Override) -> Any:
    """Optuna's distribution for a sweep override, or the fixed value (a string) otherwise."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    if not override.is_sweep_override():
        return override.get_value_element_as_str()
    value = override.value()
    key = override.get_key_element()
    if isinstance(value, ChoiceSweep) or (isinstance(value, RangeSweep) and value.shuffle):
        return CategoricalDistribution(_choices(override))
    if isinstance(value, RangeSweep):
        values = _choices(override)
        if not values:
            raise UserError(f"{key}: {override.input_line} holds no value; check its bounds")
        if all(isinstance(v, int) for v in values):
            step = int(value.step) if len(values) > 1 else 1
            return IntDistribution(values[0], values[-1], step=step)
        if len(values) == 1:
            return CategoricalDistribution(values)
        return FloatDistribution(values[0], values[-1], step=float(value.step))
    if isinstance(value, IntervalSweep):
        log = "log" in value.tags
        if value.start >= value.end or (log and value.start <= 0):
            text = override.input_line.split("=", 1)[-1]
            need = "a log interval needs 0 < a < b" if log else "an interval needs a < b"
            raise UserError(f"{key}: {text}: {need}")
        if isinstance(value.start, int) and isinstance(value.end, int):
            return IntDistribution(value.start, value.end, log=log)
        return FloatDistribution(float(value.start), float(value.end), log=log)
    raise UserError(f"{key}: {override.input_line} is not a search space Optuna can sample")


def search_entries(arguments: list[str]) -> dict[str, tuple[str, Any]]:
    """{key: (the entry as written, its distribution or fixed value)} from `key=value`
    strings; later ones replace earlier."""
    entries: dict[str, tuple[str, Any]] = {}
    for override in OverridesParser.create().parse_overrides(arguments):
        key = override.get_key_element()
        entries.pop(key, None)
        entries[key] = (override.input_line, distribution(override))
    return entries


def search_space(arguments: list[str]) -> tuple[dict[str, Any], dict[str, str]]:
    """(distributions, fixed values) from `key=value` strings; later ones replace earlier."""
    space: dict[str, Any] = {}
    fixed: dict[str, str] = {}
    for key, (_, value) in search_entries(arguments).items():
        if isinstance(value, str):
            fixed[key] = value
        else:
            space[key] = value
    return space, fixed


def ends(d: Any) -> list[tuple[str, Any]]:
    """The values of a distribution that bound what a trial can get, each with what it is: every
    choice; an interval's or range's low and high end (Optuna samples them inclusive). The
    schema checks a search space through these (nnlab/schema.py: UpFrontCheck)."""
    from optuna.distributions import CategoricalDistribution

    if isinstance(d, CategoricalDistribution):
        return [("choice", c) for c in d.choices]
    return [("low end", d.low), ("high end", d.high)]


def grid(space: dict[str, Any]) -> dict[str, list[Any]]:
    """Every value of each distribution, for Optuna's GridSampler (intervals have none)."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    out: dict[str, list[Any]] = {}
    for key, d in space.items():
        if isinstance(d, CategoricalDistribution):
            out[key] = list(d.choices)
        elif isinstance(d, IntDistribution) and not d.log:
            out[key] = list(range(d.low, d.high + 1, d.step))
        elif isinstance(d, FloatDistribution) and d.step is not None:
            n = round((d.high - d.low) / d.step)
            out[key] = [d.low + i * d.step for i in range(n + 1)]
        else:
            raise UserError(
                f"hydra.sweeper.params.{key}: the grid sampler needs values to take in turn "
                "(choice(...), range(...) or a,b,c), not an interval"
            )
    return out


def override_value(value: Any) -> str:
    """A sampled value as an override's right-hand side (a list stays a list: [32,32])."""
    if isinstance(value, float):
        return repr(value)
    return str(value)
