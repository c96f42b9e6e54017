"""k-fold cross-validation over a training split: `data.folds=K data.fold=i`.

Fold i's validation rows are the i-th of K near-equal parts of the training rows (of a seeded
permutation, or in order for a time series); the other K-1 parts train. The test split is never
touched. A sweep `-m data.folds=5 data.fold=0,1,2,3,4` runs every fold, and nnlab-report
aggregates the folds as it aggregates seeds.
"""

from __future__ import annotations

import torch

from nnlab.errors import ConfigError


def fold_indices(
    n: int, folds: int, fold: int, seed: int = 0, shuffle: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """(train rows, validation rows) of fold `fold` of `folds` over rows 0..n-1. Parts differ in
    size by at most one row; the K validation parts are disjoint and cover every row."""
    if isinstance(folds, bool) or not isinstance(folds, int) or folds < 2:
        raise ConfigError(
            "data.folds", f"must be a whole number >= 2 (or null: no folds), got {folds!r}"
        )
    if isinstance(fold, bool) or not isinstance(fold, int) or not 0 <= fold < folds:
        raise ConfigError(
            "data.fold", f"must be 0 .. {folds - 1} for data.folds={folds}, got {fold!r}"
        )
    if n < folds:
        raise ConfigError(
            "data.folds", f"{folds} folds need at least {folds} training rows, got {n}"
        )
    order = (
        torch.randperm(n, generator=torch.Generator().manual_seed(int(seed)))
        if shuffle
        else torch.arange(n)
    )
    bounds = [n * i // folds for i in range(folds + 1)]
    start, end = bounds[fold], bounds[fold + 1]
    return torch.cat([order[:start], order[end:]]), order[start:end]


def fold_blocks(n: int, folds: int, fold: int) -> tuple[list[tuple[int, int]], tuple[int, int]]:
    """For ordered data (a series): fold `fold` as [start, end) segments, the training pieces
    either side of the contiguous validation block, and the block."""
    _, val = fold_indices(n, folds, fold, shuffle=False)
    start, end = int(val[0]), int(val[-1]) + 1
    return [(a, b) for a, b in ((0, start), (end, n)) if b > a], (start, end)
