"""How many samples (rows, points) go to the train / val / test splits: `data.splits` as three
fractions or three counts, shared by the table and series data modules."""

from __future__ import annotations

import math
from collections.abc import Sequence

from nnlab.errors import ConfigError


def split_sizes(n: int, splits: Sequence[float | int], key: str = "data.splits") -> list[int]:
    """Rows in the train / val / test splits: three fractions summing to 1, or three counts
    (whole numbers; rows past their sum are left out)."""
    values = list(splits)
    if len(values) != 3 or any(
        isinstance(v, bool) or not isinstance(v, int | float) for v in values
    ):
        raise ConfigError(key, f"three fractions or three counts (train, val, test), got {values}")
    if all(isinstance(v, int) for v in values) and sum(values) > 1:  # counts
        if any(v < 0 for v in values) or values[0] == 0:
            raise ConfigError(key, f"counts must be >= 0 with some training rows, got {values}")
        if sum(values) > n:
            raise ConfigError(
                key, f"counts {values} need {sum(values)} rows, but the data has {n}; use fewer"
            )
        return values
    if any(v < 0 for v in values) or values[0] == 0 or not math.isclose(sum(values), 1.0):
        raise ConfigError(
            key, f"fractions must be >= 0 and sum to 1 (or give counts), got {values}"
        )
    ends = [round(n * sum(values[: i + 1])) for i in range(3)]
    ends[-1] = n
    return [ends[0], ends[1] - ends[0], ends[2] - ends[1]]
