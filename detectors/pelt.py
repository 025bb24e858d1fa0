"""Penalised optimal segmentation (PELT, Killick et al. 2012) for any additive segment cost.

The search knows nothing of the model: a cost is a callable ``cost(starts, ends)`` giving the
cost of the segments ``[starts[i], ends[i])`` (numpy broadcasting), additive and such that
splitting a segment never raises its cost (true of every fitted-likelihood cost). Up to
``exact_limit`` points the search is exact; beyond, segment boundaries are first restricted
to a regular grid (at most ``exact_limit`` positions: O(grid^2) worst case whatever n), then
the search runs again, exactly, over the positions within one grid step of the changes found;
when those are too many (hundreds of changes), each change instead moves to its best point
within one grid step (neighbours fixed) and a change whose removal lowers the penalised cost
is dropped. Close to the optimum, not always it.

>>> import numpy as np
>>> x = np.array([0.0] * 8 + [5.0] * 6 + [1.0] * 9)
>>> s1, s2 = np.concatenate([[0], np.cumsum(x)]), np.concatenate([[0], np.cumsum(x * x)])
>>> def sse(starts, ends):
...     n = ends - starts
...     return s2[ends] - s2[starts] - (s1[ends] - s1[starts]) ** 2 / n
>>> pelt(sse, x.size, penalty=1.0, min_size=2)
[8, 14]
>>> pelt(sse, x.size, penalty=1.0, min_size=2, exact_limit=10)
[8, 14]
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
from numpy.typing import NDArray

IntArray = NDArray[np.int64]
FloatArray = NDArray[np.float64]
SegmentCost = Callable[[IntArray, IntArray], FloatArray]

EXACT_LIMIT = 1000
NEAR_LIMIT = 5_000  # positions of the second, restricted exact pass (~0.2 s)


def _search(
    cost: SegmentCost, positions: IntArray, penalty: float, min_size: int, slack: float
) -> list[int]:
    """PELT over the boundary ``positions`` (sorted, first 0, last n); returns changes."""
    m = int(positions.size)
    best = np.full(m, np.inf)
    best[0] = -penalty
    last = np.zeros(m, dtype=np.int64)
    candidates = np.zeros(1, dtype=np.int64)  # indices into positions
    admitted = 1
    for j in range(1, m):
        end = int(positions[j])
        # a start becomes admissible once it can close a segment of min_size points
        while admitted < j and end - int(positions[admitted]) >= min_size:
            if math.isfinite(float(best[admitted])):
                candidates = np.append(candidates, admitted)
            admitted += 1
        if candidates.size == 0:
            continue
        ends = np.full(candidates.size, end, dtype=np.int64)
        values = best[candidates] + cost(positions[candidates], ends) + penalty
        i = int(np.argmin(values))
        best[j] = values[i]
        last[j] = candidates[i]
        # pruning (Killick et al.): a start that cannot beat the optimum now never will
        candidates = candidates[values - penalty - slack <= best[j]]
    changes: list[int] = []
    j = m - 1
    if not math.isfinite(float(best[j])):
        return []
    while j > 0:
        j = int(last[j])
        if j > 0:
            changes.append(int(positions[j]))
    return sorted(changes)


def _refine(
    cost: SegmentCost, changes: list[int], n: int, step: int, min_size: int, penalty: float
) -> list[int]:
    """Move each change to its best point within ``step`` (neighbours fixed), then drop
    the changes whose removal lowers the penalised cost; O(changes x step)."""
    out = list(changes)
    for _ in range(2):
        for k, c in enumerate(out):
            left = out[k - 1] if k > 0 else 0
            right = out[k + 1] if k + 1 < len(out) else n
            pos = np.arange(max(c - step, left + min_size), min(c + step, right - min_size) + 1)
            if pos.size == 0:
                continue
            lefts, rights = np.full(pos.size, left), np.full(pos.size, right)
            out[k] = int(pos[int(np.argmin(cost(lefts, pos) + cost(pos, rights)))])
    k = 0
    while k < len(out):
        left = out[k - 1] if k > 0 else 0
        right = out[k + 1] if k + 1 < len(out) else n
        one = np.array([left, out[k]], dtype=np.int64), np.array([out[k], right], dtype=np.int64)
        merged = float(cost(np.array([left]), np.array([right]))[0])
        if merged <= float(np.sum(cost(*one))) + penalty:
            del out[k]
        else:
            k += 1
    return out


def _near(changes: list[int], n: int, step: int) -> IntArray:
    """Boundary positions within ``step`` of the coarse changes, plus both ends."""
    parts = [np.array([0, n], dtype=np.int64)]
    for c in changes:
        parts.append(np.arange(max(c - step, 1), min(c + step, n - 1) + 1, dtype=np.int64))
    return np.unique(np.concatenate(parts))


def pelt(
    cost: SegmentCost,
    n: int,
    penalty: float,
    min_size: int,
    exact_limit: int = EXACT_LIMIT,
    slack: float = 0.0,
    refine: bool = True,
) -> list[int]:
    """Changes (first index of each new segment) minimising total cost + penalty per change.

    ``slack``: how much splitting a segment can raise the cost at most (0 for a fitted
    likelihood; a cost that charges each segment for a parameter may rise by that charge);
    pruning keeps every start within that margin, so the search stays exact. ``refine=False``
    stops a long series at the grid (changes on grid points: for quick drafts).
    """
    if n < 2 * min_size:
        return []
    if n <= exact_limit:
        return _search(cost, np.arange(n + 1, dtype=np.int64), penalty, min_size, slack)
    step = max(math.ceil(n / exact_limit), 1)
    grid = np.unique(np.concatenate([np.arange(0, n, step), [n]])).astype(np.int64)
    coarse = _search(cost, grid, penalty, max(min_size, step), slack)
    if not refine:
        return coarse
    near = _near(coarse, n, step)
    if near.size <= NEAR_LIMIT:
        # exact search again over one grid step around each coarse change: it can also
        # trade two changes the grid forced for one in between
        return _search(cost, near, penalty, min_size, slack)
    return _refine(cost, coarse, n, step, min_size, penalty)
