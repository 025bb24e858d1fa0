"""Scores of a segmentation against human annotations: F1 with a margin, and covering.

The conventions of the Turing change-point benchmark (van den Burg & Williams 2020), so our
figures compare with published ones: index 0 counts as a change point in every set (a
detector that reports nothing still gets precision 1), a detection matches at most one
annotation within ``margin`` points, recall is averaged over annotators, precision is taken
against the union of their annotations; covering (Arbelaez et al. 2011) is the length-weighted
best Jaccard overlap of each annotated segment with a detected one, averaged over annotators.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence


def _matched(truth: Iterable[int], detected: Iterable[int], margin: int) -> int:
    """Annotations matched by a detection within ``margin``, no detection used twice.

    >>> _matched({1, 10, 20, 23}, {1, 3, 5, 8, 20}, 5)
    3
    """
    free = set(detected)
    hits = 0
    for tau in sorted(truth):
        near = sorted((abs(tau - d), d) for d in free if abs(tau - d) <= margin)
        if near:
            free.remove(near[0][1])
            hits += 1
    return hits


def f1_score(
    annotations: Sequence[Sequence[int]], detected: Sequence[int], margin: int = 5
) -> float:
    """F1 of ``detected`` against several annotators' change points.

    >>> f1_score([[10, 20], [11, 20], [10], [0, 5]], [10, 20])
    1.0
    >>> round(f1_score([[], [10], [50]], [10]), 4)
    0.9091
    >>> round(f1_score([[], [10], [50]], []), 4)
    0.8
    """
    if not annotations:
        raise ValueError("at least one annotator is needed")
    per_annotator = [set(a) | {0} for a in annotations]
    union = set().union(*per_annotator)
    found = set(detected) | {0}
    precision = _matched(union, found, margin) / len(found)
    recall = sum(_matched(a, found, margin) / len(a) for a in per_annotator) / len(
        per_annotator
    )
    if precision + recall == 0.0:
        return 0.0
    return 2.0 * precision * recall / (precision + recall)


def _segments(changes: Iterable[int], n: int) -> list[tuple[int, int]]:
    bounds = sorted({c for c in changes if 0 < c < n})
    edges = [0, *bounds, n]
    return list(zip(edges[:-1], edges[1:], strict=True))


def _cover_one(truth: list[tuple[int, int]], found: list[tuple[int, int]], n: int) -> float:
    total = 0.0
    for a, b in truth:
        best = 0.0
        for c, d in found:
            inter = min(b, d) - max(a, c)
            if inter > 0:
                best = max(best, inter / (max(b, d) - min(a, c)))
        total += (b - a) * best
    return total / n


def covering(annotations: Sequence[Sequence[int]], detected: Sequence[int], n: int) -> float:
    """Segmentation covering of each annotator's segmentation by ``detected``, averaged.

    >>> round(covering([[10, 20], [10], [0, 5]], [10, 20], 45), 4)
    0.7963
    >>> round(covering([[], [10], [40]], [10], 45), 4)
    0.7954
    >>> round(covering([[], [10], [40]], [], 45), 4)
    0.8189
    """
    if not annotations:
        raise ValueError("at least one annotator is needed")
    found = _segments(detected, n)
    return sum(_cover_one(_segments(a, n), found, n) for a in annotations) / len(annotations)
