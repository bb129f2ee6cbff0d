"""Time synchronisation of message streams by stamp (exact or nearest within a tolerance).

The first stream is the reference: every kept frame is one reference message plus one message
of every other stream. Pairs are formed closest-first and each message is used at most once,
so with ``tolerance_ns = 0`` only identical stamps pair up.

Every message that ends up in no frame gets a reason (see :data:`REASONS`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

KEPT = "kept"
DUPLICATE = "duplicate_stamp"
NO_PARTNER = "no_partner"
OUT_OF_TOLERANCE = "out_of_tolerance"
PARTNER_TAKEN = "partner_taken"

REASONS: dict[str, str] = {
    DUPLICATE: "an earlier message of the same topic has the same stamp",
    NO_PARTNER: "another requested topic has no message near this stamp (gap, or it starts later / ends earlier)",
    OUT_OF_TOLERANCE: "another requested topic has a message within half its period, but farther than the tolerance",
    PARTNER_TAKEN: "partners within the tolerance existed but were paired with closer messages",
}
"""Why a message was dropped by :func:`synchronize`."""

_NEIGHBOURS = 8  # candidate partners considered on each side of a reference stamp


@dataclass
class SyncResult:
    """Output of :func:`synchronize`.

    Attributes:
        frames: (F, S) int64 message indices, one column per stream, rows sorted by the
            reference stamp.
        stamps: (F,) int64 reference stamps (ns) of the frames.
        dt_ns: (F, S) int64 stamp of each member minus the reference stamp (column 0 is 0).
        reasons: per stream, an array of one reason string per message (``"kept"`` for
            messages in a frame).
    """

    frames: np.ndarray
    stamps: np.ndarray
    dt_ns: np.ndarray
    reasons: list[np.ndarray]


def _dedupe(stamps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(indices of first occurrences sorted by stamp, boolean mask of later duplicates)."""
    order = np.argsort(stamps, kind="stable")
    s = stamps[order]
    first = np.ones(len(s), dtype=bool)
    first[1:] = s[1:] != s[:-1]
    dup = np.zeros(len(stamps), dtype=bool)
    dup[order[~first]] = True
    return order[first], dup


def _match(ref: np.ndarray, other: np.ndarray, tol: int) -> np.ndarray:
    """Greedy closest-first one-to-one matching; (len(ref),) index into ``other`` or -1.

    Both arrays are sorted and free of duplicates.
    """
    out = np.full(len(ref), -1, dtype=np.int64)
    if not len(ref) or not len(other):
        return out
    if tol == 0:
        pos = np.minimum(np.searchsorted(other, ref), len(other) - 1)
        hit = other[pos] == ref
        out[hit] = pos[hit]
        return out
    lo = np.maximum(np.searchsorted(other, ref - tol, "left"), np.searchsorted(other, ref, "left") - _NEIGHBOURS)
    hi = np.minimum(np.searchsorted(other, ref + tol, "right"), np.searchsorted(other, ref, "right") + _NEIGHBOURS)
    counts = np.maximum(hi - lo, 0)
    if not counts.sum():
        return out
    ri = np.repeat(np.arange(len(ref)), counts)
    oi = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts) + np.repeat(lo, counts)
    dist = np.abs(other[oi] - ref[ri])
    order = np.lexsort((oi, ri, dist))  # closest first, ties by reference then partner order
    used = np.zeros(len(other), dtype=bool)
    for k in order.tolist():
        r, o = ri[k], oi[k]
        if out[r] < 0 and not used[o]:
            out[r] = o
            used[o] = True
    return out


def _nearest_gap(stamps: np.ndarray, other_sorted: np.ndarray) -> np.ndarray:
    """|stamp - nearest stamp of other_sorted| for every stamp (inf when other is empty)."""
    if not len(other_sorted):
        return np.full(len(stamps), np.inf)
    pos = np.searchsorted(other_sorted, stamps)
    left = other_sorted[np.maximum(pos - 1, 0)]
    right = other_sorted[np.minimum(pos, len(other_sorted) - 1)]
    return np.minimum(np.abs(stamps - left), np.abs(right - stamps)).astype(np.float64)


def _period(sorted_stamps: np.ndarray) -> float:
    """Median spacing of a stream (ns); 0 (unknown) for fewer than two messages.

    A partner closer than half of it is taken as "the same sample, off by more than the
    tolerance"; farther partners are neighbouring samples, so the message has none.
    """
    if len(sorted_stamps) < 2:
        return 0.0
    return float(np.median(np.diff(sorted_stamps)))


def synchronize(streams: Sequence[np.ndarray], tolerance_ns: int = 0) -> SyncResult:
    """Group messages of several streams into frames by stamp.

    Args:
        streams: per stream, the (M_s,) int64 stamps (ns) of its messages in bag order; the
            first stream is the reference whose stamps name the frames.
        tolerance_ns: largest allowed |partner stamp - reference stamp|; 0 = exact match.

    Returns:
        A :class:`SyncResult`. Messages whose stamp repeats an earlier one of the same stream
        are dropped as ``duplicate_stamp``.
    """
    if not streams:
        raise ValueError("synchronize needs at least one stream")
    tol = int(tolerance_ns)
    arrays = [np.asarray(s, dtype=np.int64).reshape(-1) for s in streams]
    firsts, dups = zip(*(_dedupe(a) for a in arrays))
    ref_idx = firsts[0]
    ref = arrays[0][ref_idx]
    keep = np.ones(len(ref_idx), dtype=bool)
    members = [ref_idx]
    for s in range(1, len(arrays)):
        cand = firsts[s]
        m = _match(ref, arrays[s][cand], tol)
        keep &= m >= 0
        members.append(np.where(m >= 0, cand[np.maximum(m, 0)], -1))
    frames = np.stack([m[keep] for m in members], axis=1).astype(np.int64) if len(ref_idx) else \
        np.zeros((0, len(arrays)), dtype=np.int64)
    stamps = ref[keep]
    dt = np.stack([arrays[s][frames[:, s]] - stamps for s in range(len(arrays))], axis=1) if len(frames) else \
        np.zeros((0, len(arrays)), dtype=np.int64)

    sorted_unique = [np.sort(a[f]) for a, f in zip(arrays, firsts)]
    periods = [_period(x) for x in sorted_unique]
    reasons: list[np.ndarray] = []
    for s, a in enumerate(arrays):
        r = np.full(len(a), PARTNER_TAKEN, dtype=object)
        for t in range(len(arrays)):
            if t == s:
                continue
            gap = _nearest_gap(a, sorted_unique[t])
            missing = gap > tol
            far = missing & ~(gap < periods[t] / 2)
            r[missing & (r == PARTNER_TAKEN)] = OUT_OF_TOLERANCE
            r[far] = NO_PARTNER
        r[dups[s]] = DUPLICATE
        r[frames[:, s]] = KEPT
        reasons.append(r)
    return SyncResult(frames=frames, stamps=stamps, dt_ns=dt, reasons=reasons)
