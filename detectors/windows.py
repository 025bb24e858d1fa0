"""Event-time window counts: per source partition (stage A) and merged per segment (stage B).

Pure state, no I/O. The worker keeps these objects in Faust tables as plain JSON-able items;
`gapwatch backtest` drives the very same objects from files, so both give identical windows.

Stage A, `PartitionWindows`: one per source partition index. It counts events into leaf
counters per window, remembers event ids for dedupe, and the last applied offset per source
topic, so a redelivered message (offset <= last applied) is recognised and skipped. Its
state is a set of items (key -> JSON value) of which only the changed ones are written after
each batch, in this order: `{p}:d:{seq}` (append-only dedupe memory added by batch `seq`),
`{p}:v:{seq}` (the windows batch `seq` touched, whole), `{p}:m` (offsets, watermarks, admitted
names and the newest `seq`) and, now and then, a full snapshot of every open window (pieces
`{p}:w:{id}:{i}`, then the header `{p}:w`) followed by deletions of what it covers. No item
grows with the backlog: deltas and snapshots are cut into pieces of bounded size. A restore
takes the snapshot and applies the deltas up to the `seq` named by `{p}:m`: whatever prefix of
the writes survives a crash, the windows are those of the batch that `{p}:m` names, so counts
and offsets agree.

Stage B, `WindowAssembler`: merges the partials of all source partitions and, once every
partition has closed a window, builds the closed window of every segment. Its state: a small
meta plus one item per (open window, group), deleted when the window closes.
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
import xxhash

from detectors.events import BackendEvent, PlatformEvent

__all__ = [
    "WindowConfig",
    "PartitionWindows",
    "NameCaps",
    "Partial",
    "WindowAssembler",
    "ClosedWindow",
    "BACKEND_FIELDS",
    "PLATFORM_FIELDS",
    "segment_key",
    "group_of",
    "delay_bucket",
    "DELAY_BUCKETS",
]

JSON = Any
NEG_INF = -math.inf

# Leaf counter layouts (lists, indexed for speed on the hot path).
BACKEND_FIELDS = ("count", "value", "consent_denied", "late")
B_COUNT, B_VALUE, B_DENIED, B_LATE = range(4)
PLATFORM_FIELDS = (
    "count", "value", "duplicates", "pair_deduped", "broken_dedupe", "missing_value",
    "missing_currency", "missing_click_ids", "consent_denied", "matched_orders", "late", "events",
)
(P_COUNT, P_VALUE, P_DUP, P_PAIR, P_BROKEN, P_MISS_VALUE, P_MISS_CURRENCY, P_MISS_CLICK,
 P_DENIED, P_MATCHED, P_LATE, P_EVENTS) = range(12)
N_PLATFORM = len(PLATFORM_FIELDS)
#: worst-case JSON bytes of one dedupe record (ids up to 256 characters, names up to 40), of
#: one platform leaf (name parts, 12 counters, up to MAX_CHANNELS channels of up to 20
#: characters) and of one backend leaf: item pieces are sized from them
MAX_RECORD_BYTES = 640
MAX_LEAF_BYTES = 1024
MAX_BACKEND_LEAF_BYTES = 160
#: distinct channels counted apart per leaf and window; more count as `other`
MAX_CHANNELS = 16
#: the name every platform or event name beyond its cap is counted under
OTHER = "other"
#: reporting delays are counted in half-octave buckets: bucket 0 holds delays <= 1 s, bucket i
#: delays in (2^((i-1)/2), 2^(i/2)] s, the last one everything beyond 2^18 s (73 h)
DELAY_BUCKETS = 37
#: `channel:bucket` counters kept apart per group and window (more count under `other`): a
#: group's delays take at most (48 + 37) x ~30 bytes, counted as 3 leaves in item pieces
MAX_DELAY_KEYS = 48


def delay_bucket(delay_s: float) -> int:
    """Half-octave bucket of a reporting delay in seconds.

    >>> delay_bucket(0.2), delay_bucket(1.0), delay_bucket(1.2), delay_bucket(100.0), delay_bucket(1e9)
    (0, 0, 1, 14, 36)
    """
    if delay_s <= 1.0:
        return 0
    return min(DELAY_BUCKETS - 1, math.ceil(2.0 * math.log2(delay_s) - 1e-9))


def delay_edge(bucket: int) -> float:
    """Upper edge in seconds of a delay bucket (`delay_bucket(delay_edge(i)) == i`)."""
    return float(2.0 ** (bucket / 2.0))


@dataclass(frozen=True)
class WindowConfig:
    """Window size, allowed lateness and how long event / order ids are remembered for dedupe."""

    window_s: int = 300
    allowed_lateness_s: float = 120.0
    dedupe_horizon_s: float = 86_400.0
    #: distinct platform names and event names a partition keeps apart; newer ones count as
    #: `other` (a producer bug must not grow state, partials and segments without bound)
    max_platforms: int = 20
    max_event_names: int = 20
    #: bounds on one stored item: records of a dedupe delta, leaves of a window piece
    max_records_per_item: int = 1000
    max_leaves_per_item: int = 500
    #: a platform event later than the allowed lateness but at most this late (event time of
    #: its input's newest event against its own window's end) still counts in its own window:
    #: it is sent as a correction of that window when the window it arrived in closes (stage B
    #: decides whether it arrived within its channel's delay; see docs/architecture.md,
    #: "Delayed channels"). 0 turns corrections off (every late event is only counted late)
    max_delay_s: float = 26 * 3600.0

    def __post_init__(self) -> None:
        if self.window_s <= 0:
            raise ValueError("window_s must be > 0")
        if self.allowed_lateness_s < 0:
            raise ValueError("allowed_lateness_s must be >= 0")


def segment_key(platform: str, event_name: str, browser: str, region: str) -> str:
    return f"{platform}|{event_name}|{browser}|{region}"


def group_of(platform_leaf: str) -> str:
    """`meta|purchase|safari|eu` -> `meta|purchase` (the unit of alert grouping)."""
    platform, event_name, _ = platform_leaf.split("|", 2)
    return f"{platform}|{event_name}"


class Partial(NamedTuple):
    """What stage A hands to stage B when partition `partition` closes windows.

    `backend` and `platform` map window_start -> leaf -> counters; `closed_through` says every
    window ending at or before it is complete for this partition. `delays`: window_start ->
    group -> reporting delays (`channel:bucket` -> events). `late`: corrections, arrival window
    -> `own_start@leaf` -> counters of the delayed events of window `own_start` that arrived
    while the arrival window was open (their delays under `own_start@group` in `delays`).
    """

    partition: int
    closed_through: float
    backend: dict[int, dict[str, list[float]]]
    platform: dict[int, dict[str, list[Any]]]
    delays: dict[int, dict[str, dict[str, int]]] | None = None
    late: dict[int, dict[str, list[Any]]] | None = None


#: dedupe keys are 64-bit xxh3 hashes (stable across processes, unlike `hash()`): two different
#: ids share one with probability 2^-64, so with M ids remembered a new id is mistaken for a
#: remembered one with probability M / 2^64 (5e-13 for M = 10 million: one wrong verdict in
#: ~2e12 events). tests/unit/test_dedupe_memory.py checks that rate with narrower hashes.
HASH_BITS = 64
_SEED_EVENT, _SEED_ORDER, _SEED_BACKEND = 1, 2, 3
_xxh = xxhash.xxh3_64_intdigest
_platform_seeds: dict[str, tuple[int, int]] = {}


def _platform_seed(platform: str) -> tuple[int, int]:
    """Seeds of a platform's event and order keys (derived from its name: stable)."""
    raw = platform.encode()
    seeds = (_xxh(raw, _SEED_EVENT), _xxh(raw, _SEED_ORDER))
    if len(_platform_seeds) < 4096:
        _platform_seeds[platform] = seeds
    return seeds


class HashStore:
    """A compact map from 64-bit key hashes to (aux, bucket), forgetting buckets before a cutoff.

    New entries go to a small dict (`young`); now and then they are merged into sorted numpy
    arrays (`keys` uint64, `aux` uint64, `buckets` uint32 in windows since the epoch): 20 bytes
    an entry instead of the ~300 of a dict of tuples of strings. Lookups in the arrays are made
    for a whole batch at once (`prefetch`: one `searchsorted`), which copies the hits into
    `young`; a single `get` also works (tests, rare paths). An entry whose bucket is before
    `cutoff` is gone, whether or not a merge has dropped it yet, so what is remembered depends
    on the data and the cutoff alone, never on when merges happened (restores agree).

    >>> st = HashStore(window_s=60)
    >>> st.put(12345, 7, 600); st.get(12345), st.get(999)
    ((7, 600), None)
    >>> st.compact(); st.get(12345), len(st.young), len(st.keys)
    ((7, 600), 0, 1)
    >>> st.cutoff = 660.0; st.get(12345)
    """

    #: merge `young` into the arrays once it holds this many entries, or an eighth of the arrays
    #: (an entry there costs ~300 bytes, one in the arrays 20; a merge is linear in the arrays)
    min_merge = 50_000

    def __init__(self, window_s: int) -> None:
        self.window_s = window_s
        self.young: dict[int, tuple[int, int]] = {}  # key -> (aux, bucket)
        # what `put` added since the last merge, as flat lists (an update appends again: the
        # merge keeps the last value of a key); entries `prefetch` copied are not in them
        self.new: list[int] = []  # key, aux, bucket, key, aux, bucket, ... (a list: appends are cheap)
        self.wide: dict[int, tuple[int, int]] = {}  # entries whose aux needs > 64 bits: dict only
        self.keys = np.zeros(0, dtype=np.uint64)
        self.aux = np.zeros(0, dtype=np.uint64)
        self.buckets = np.zeros(0, dtype=np.uint32)
        self.cutoff = NEG_INF
        #: set by the owner once every key it will look up has been prefetched: a miss in
        #: `young` is then a miss (no per-key search of the arrays)
        self.complete = False

    def __len__(self) -> int:
        return len(self.young) + len(self.keys)

    def get(self, key: int) -> tuple[int, int] | None:
        hit = self.young.get(key)
        if hit is None and not self.complete and len(self.keys):
            i = int(np.searchsorted(self.keys, np.uint64(key)))  # a Python int would compare as float
            if i < len(self.keys) and int(self.keys[i]) == key:
                hit = (int(self.aux[i]), int(self.buckets[i]) * self.window_s)
        if hit is not None and hit[1] < self.cutoff:
            return None
        return hit

    def put(self, key: int, aux: int, bucket: int) -> None:
        self.young[key] = (aux, bucket)
        if aux >> 64:  # a channel mask past 64 channels: kept in the dict, never merged
            self.wide[key] = (aux, bucket)
        else:
            self.new += (key, aux, bucket)

    def should_compact(self) -> bool:
        return len(self.young) >= max(self.min_merge, len(self.keys) >> 3)

    def prefetch(self, keys: list[int]) -> None:
        """Copy the array entries of `keys` into `young` (then `young.get` answers for them)."""
        if not len(self.keys) or not keys:
            return
        want = np.fromiter(keys, dtype=np.uint64, count=len(keys))
        idx = np.searchsorted(self.keys, want)
        idx[idx >= len(self.keys)] = 0
        found = np.flatnonzero(self.keys[idx] == want)
        if not len(found):
            return
        young = self.young
        w = self.window_s
        at = idx[found]
        for key, aux, bucket in zip(want[found].tolist(), self.aux[at].tolist(), self.buckets[at].tolist(), strict=True):
            if key not in young:
                young[key] = (aux, bucket * w)

    def compact(self) -> None:
        """Merge `young` into the arrays, dropping entries before the cutoff (newest value wins)."""
        young, self.young = self.young, {}
        new, self.new = self.new, []
        if self.wide:
            self.wide = {k: v for k, v in self.wide.items() if v[1] >= self.cutoff and young.get(k) == v}
            self.young.update(self.wide)
        keys, aux, buckets = self.keys, self.aux, self.buckets
        if new:
            flat = np.frombuffer(array("Q", new), dtype=np.uint64).reshape(-1, 3)
            # the new entries sorted, the last value of a key kept (an update appends again)
            order = np.argsort(flat[:, 0], kind="stable")
            flat = flat[order]
            last = np.ones(len(flat), dtype=bool)
            last[:-1] = flat[1:, 0] != flat[:-1, 0]
            flat = flat[last]
            new_keys, new_aux = flat[:, 0], flat[:, 1]
            new_buckets = (flat[:, 2] // np.uint64(self.window_s)).astype(np.uint32)
            # keys already in the arrays take the new value in place; the others are inserted
            # (a merge: linear in the arrays, the sort only over the new entries)
            pos = np.searchsorted(keys, new_keys)
            inside = pos < len(keys)
            hit = np.zeros(len(new_keys), dtype=bool)
            hit[inside] = keys[pos[inside]] == new_keys[inside]
            if hit.any():
                aux, buckets = aux.copy(), buckets.copy()
                aux[pos[hit]] = new_aux[hit]
                buckets[pos[hit]] = new_buckets[hit]
            fresh = ~hit
            keys = np.insert(keys, pos[fresh], new_keys[fresh])
            aux = np.insert(aux, pos[fresh], new_aux[fresh])
            buckets = np.insert(buckets, pos[fresh], new_buckets[fresh])
        if self.cutoff > NEG_INF and len(buckets):
            first_kept = int(max(0.0, math.ceil(self.cutoff / self.window_s)))
            if int(buckets.min()) < first_kept:
                keep = buckets >= first_kept
                keys, aux, buckets = keys[keep], aux[keep], buckets[keep]
        self.keys, self.aux, self.buckets = keys, aux, buckets

    def items(self) -> dict[int, tuple[int, int]]:
        """Every entry remembered (after the cutoff), as a dict: for tests and comparisons."""
        out = {k: (a, b * self.window_s) for k, a, b in zip(self.keys.tolist(), self.aux.tolist(),
                                                            self.buckets.tolist(), strict=True)}
        out.update(self.young)
        return {k: v for k, v in out.items() if v[1] >= self.cutoff}

    def nbytes(self) -> int:
        """Bytes held: the arrays, and the dict's entries at ~200 bytes each (key, tuple, ints)."""
        return int(self.keys.nbytes + self.aux.nbytes + self.buckets.nbytes) + 200 * len(self.young)


class NameCaps:
    """Platform and event names a partition counts apart, at most the configured number of
    each (first seen, in the partition's own input order, first admitted); the rest fold into
    `other`. Backend and platform names are admitted separately, each in its own input's
    order, so the choice never depends on how the reads of the two inputs interleave.

    >>> caps = NameCaps(max_platforms=1, max_event_names=5)
    >>> caps.platform("meta"), caps.platform("tiktok"), caps.platform("meta"), caps.folded
    ('meta', 'other', 'meta', {'platform': 1})
    """

    def __init__(self, max_platforms: int = 20, max_event_names: int = 20) -> None:
        self.max_platforms = max_platforms
        self.max_event_names = max_event_names
        self.platforms: dict[str, None] = {OTHER: None}
        self.platform_event_names: dict[str, None] = {OTHER: None}
        self.backend_event_names: dict[str, None] = {OTHER: None}
        self.changed = False
        #: tallies since the last `take_folded` (not state): folded events per field, and the
        #: first name folded of each field
        self.folded: dict[str, int] = {}
        self.first_folded: dict[str, str] = {}

    def _admit(self, known: dict[str, None], name: str, limit: int, field: str) -> str:
        if name in known:
            return name
        if len(known) <= limit:  # `other` is always there and not counted
            known[name] = None
            self.changed = True
            return name
        self.folded[field] = self.folded.get(field, 0) + 1
        self.first_folded.setdefault(field, name)
        return OTHER

    def platform(self, name: str) -> str:
        return self._admit(self.platforms, name, self.max_platforms, "platform")

    def platform_event_name(self, name: str) -> str:
        return self._admit(self.platform_event_names, name, self.max_event_names, "event_name")

    def backend_event_name(self, name: str) -> str:
        return self._admit(self.backend_event_names, name, self.max_event_names, "event_name")

    def take_folded(self) -> tuple[dict[str, int], dict[str, str]]:
        out = (self.folded, self.first_folded)
        self.folded, self.first_folded = {}, {}
        return out

    def to_dict(self) -> dict[str, list[str]]:
        return {"platforms": list(self.platforms), "platform_event_names": list(self.platform_event_names),
                "backend_event_names": list(self.backend_event_names)}

    @classmethod
    def from_dict(cls, d: Mapping[str, list[str]] | None, config: WindowConfig) -> NameCaps:
        caps = cls(config.max_platforms, config.max_event_names)
        if d:
            caps.platforms.update(dict.fromkeys(d["platforms"]))
            caps.platform_event_names.update(dict.fromkeys(d["platform_event_names"]))
            caps.backend_event_names.update(dict.fromkeys(d["backend_event_names"]))
        return caps


class PartitionWindows:
    """Idempotent window counts of one source partition (both event topics share the index).

    >>> from types import SimpleNamespace as E
    >>> pw = PartitionWindows(0, WindowConfig(window_s=60, allowed_lateness_s=0))
    >>> ev = E(event_id="o1", event_name="purchase", order_id="o1", ts=120.5, value=10.0,
    ...        browser="chrome", region="eu", consent_denied=False)
    >>> pw.add_backend(0, ev); pw.add_backend(0, ev)   # the second is a redelivery: skipped
    True
    False
    >>> pw.windows[120]["b"]["purchase|chrome|eu"][0]
    1
    """

    def __init__(self, partition: int, config: WindowConfig) -> None:
        self.partition = partition
        self.config = config
        self.offsets: dict[str, int] = {"b": -1, "p": -1}
        # newest event time per input topic: the partition's watermark is the minimum over
        # its inputs (minus lateness), so a topic read ahead never makes the other one late
        self.max_ts: dict[str, float] = {"b": NEG_INF, "p": NEG_INF}
        self.closed_through = NEG_INF
        self.seq = 0  # batches that changed the dedupe memory or the windows
        self.base_seq = 0  # the batch whose windows the last full snapshot `{p}:w` holds
        self._window_deltas: list[int] = []  # seqs of the `{p}:v:{seq}` items still stored
        self._delta_leaves = 0  # leaves written in window deltas since the last full snapshot
        self._full_leaves = 0  # leaves in the last full snapshot
        self._dirty: set[int] = set()  # windows touched since the last take_changes
        # window_start -> {"b": {leaf: counters}, "p": {leaf: counters}, "c": {leaf: {channel: n}}}
        self.windows: dict[int, dict[str, dict[str, Any]]] = {}
        # Dedupe memory, by 64-bit hashes of the ids (see HashStore; buckets are the events'
        # own windows, forgotten `dedupe_horizon_s` of event time before the closed windows):
        # hash(platform, event_id) -> (bit mask of the channels it came on, bucket)
        self._seen = HashStore(config.window_s)
        # hash(platform, order_id) -> (hash(platform, event_id) of its first event, bucket)
        self._orders = HashStore(config.window_s)
        # hash(order_id) of a backend order -> (0, bucket)
        self._backend = HashStore(config.window_s)
        #: channel names in the order they were first seen here: bit i of a mask is channels[i]
        self.channels: list[str] = []
        self._channel_bit: dict[str, int] = {}
        self.conversions: dict[int, list[tuple[str, int]]] = {}  # bucket -> (leaf, hash(order_id)) with an order id
        self.deltas: dict[int, int] = {}  # delta seq -> newest bucket it holds (for expiry)
        self._deleted_keys: list[str] = []
        self._pieces: dict[str, int] = {}  # "d:{seq}" / "v:{seq}" -> pieces stored, when more than one
        self._snapshot_id = 0  # names the pieces `{p}:w:{id}:{i}` of the newest full snapshot
        self._snapshot_pieces = 0
        self.names = NameCaps(config.max_platforms, config.max_event_names)
        self._delta: dict[str, list[tuple[Any, ...]]] = {"s": [], "o": [], "b": [], "c": []}
        self._meta_dirty = False
        self.last_late = False
        self.last_duplicate = False  # the last platform event was a duplicate trigger
        # tallies for metrics since the last `take_tallies` (not state: never persisted)
        self.late_events = 0
        self.leaf_events: dict[str, int] = {}  # leaf -> events counted (late ones included)
        self.duplicate_events: dict[tuple[str, str], int] = {}  # (platform, event_name) -> triggers
        self._size = config.window_s
        self._lateness = config.allowed_lateness_s
        self._max_delay = config.max_delay_s
        #: the own window of the last event counted as a correction (None: on time or late)
        self.own_window: int | None = None
        self.counted_in = 0  # the open window the last event was counted in

    # ---- dedupe memory --------------------------------------------------------------------
    #: keys are masked to this many bits (tests narrow it to measure the false-positive rate)
    hash_mask = (1 << HASH_BITS) - 1

    @property
    def seen_events(self) -> dict[int, tuple[int, int]]:
        """hash(platform, event_id) -> (channel mask, bucket): every event id remembered."""
        return self._seen.items()

    @property
    def order_events(self) -> dict[int, tuple[int, int]]:
        """hash(platform, order_id) -> (hash of its first event id, bucket)."""
        return self._orders.items()

    @property
    def backend_orders(self) -> dict[int, tuple[int, int]]:
        """hash(order_id) -> (0, bucket): backend orders remembered."""
        return self._backend.items()

    def remembers_event(self, platform: str, event_id: str) -> bool:
        return self._seen.get(self.platform_keys_of(platform, event_id, None)[0]) is not None

    def platform_keys_of(self, platform: str, event_id: str, order_id: str | None) -> tuple[int, int, int]:
        """(event key, order key, backend order key) of a platform event (0: no order id).

        The platform is the seed of the event and order keys (hashes of platform and id)."""
        mask = self.hash_mask
        seeds = _platform_seeds.get(platform) or _platform_seed(platform)
        ekey = _xxh(event_id.encode(), seeds[0]) & mask
        if order_id is None:
            return ekey, 0, 0
        # (platform, order) pairs as the order's own hash xor the platform's seed: two pairs
        # share a key with probability 2^-64, like any two hashes
        bkey = _xxh(order_id.encode(), _SEED_BACKEND) & mask
        return ekey, (bkey ^ seeds[1]) & mask, bkey

    def backend_key(self, order_id: str) -> int:
        return _xxh(order_id.encode(), _SEED_BACKEND) & self.hash_mask

    def prefetch(self, kind: str, events: list[Any]) -> list[Any]:
        """Keys of a batch's events, looked up in the dedupe arrays at once (one `searchsorted`
        per store instead of one per event); pass each to `add_backend` / `add_platform`."""
        if kind == "b":
            bkeys = [None if ev.order_id is None else self.backend_key(ev.order_id) for ev in events]
            self._backend.prefetch([k for k in bkeys if k is not None])
            self._backend.complete = True
            return bkeys
        keys = [self.platform_keys_of(ev.platform, ev.event_id, ev.order_id) for ev in events]
        self._seen.prefetch([k[0] for k in keys])
        self._orders.prefetch([k[1] for k in keys if k[1]])
        self._seen.complete = self._orders.complete = True
        return keys

    def _channel(self, channel: str) -> int:
        bit = self._channel_bit.get(channel)
        if bit is None:
            bit = self._channel_bit[channel] = 1 << len(self.channels)
            self.channels.append(channel)
            self._meta_dirty = True
        return bit

    # ---- hot path -------------------------------------------------------------------------
    def already_applied(self, topic: str, offset: int) -> bool:
        """True for a redelivered message (same partition, offset not beyond the last applied)."""
        return offset <= self.offsets[topic]

    def skip(self, topic: str, offset: int) -> bool:
        """Record an offset whose message was not counted (invalid, sent to the DLQ)."""
        if offset <= self.offsets[topic]:
            return False
        self.offsets[topic] = offset
        self._meta_dirty = True
        return True

    def _window_for(self, topic: str, ts: float) -> tuple[dict[str, dict[str, Any]], bool]:
        """The open window that an event of time `ts` counts in, and whether it is late.

        A platform event later than the lateness but within `max_delay_s` is not late: it counts
        in the open window it arrived in, under its own window's start (`self.own_window`), and
        goes to stage B as a correction of its own window when that window closes."""
        max_ts = self.max_ts
        newest = max_ts[topic]
        if ts > newest:
            max_ts[topic] = newest = ts
        size = self._size
        start = int(ts // size) * size
        # Late is judged against this event's own input: its order within its partition is
        # fixed, so the verdict does not depend on how the two topics' reads interleave.
        # (A window closed earlier is closed: the partition watermark never exceeds this one.)
        limit = newest - self._lateness
        if limit < self.closed_through:
            limit = self.closed_through
        late = start + size <= limit
        self.last_late = late
        self.own_window = None
        if late and topic == "p" and start + size > limit - self._max_delay:
            # delayed, not late: a correction of its own window, carried by its arrival window
            self.late_events += 1
            self.own_window = start
            start = int(limit // size) * size
            late = self.last_late = False
        elif late:
            self.late_events += 1
            # counted as late in the oldest window still open, never lost
            start = int(max(self.closed_through, start) // size) * size
            while start + size <= self.closed_through:
                start += size
        self._dirty.add(start)
        window = self.windows.get(start)
        if window is None:
            window = self.windows[start] = {"b": {}, "p": {}, "c": {}, "d": {}}
        self.counted_in = start
        return window, late

    def add_backend(self, offset: int, ev: BackendEvent, key: int | None = None) -> bool:
        if offset <= self.offsets["b"]:
            return False
        self.offsets["b"] = offset
        self._meta_dirty = True
        window, late = self._window_for("b", ev.ts)
        event_name = ev.event_name
        if event_name not in self.names.backend_event_names:
            event_name = self.names.backend_event_name(event_name)
            self._meta_dirty = True
        leaf = f"{event_name}|{ev.browser}|{ev.region}"
        leaf_events = self.leaf_events
        leaf_events[leaf] = leaf_events.get(leaf, 0) + 1
        counters = window["b"].get(leaf)
        if counters is None:
            counters = window["b"][leaf] = [0, 0.0, 0, 0]
        if late:
            counters[B_LATE] += 1
            return True
        counters[B_COUNT] += 1
        if ev.value is not None:
            counters[B_VALUE] += ev.value
        if ev.consent_denied:
            counters[B_DENIED] += 1
        if ev.order_id is not None:
            if key is None:
                key = self.backend_key(ev.order_id)
            if self._backend.get(key) is None:
                bucket = int(ev.ts // self._size) * self._size
                self._backend.put(key, 0, bucket)
                self._delta["b"].append((key, bucket))
        return True

    def add_platform(self, offset: int, ev: PlatformEvent, keys: tuple[int, int, int] | None = None) -> bool:
        if offset <= self.offsets["p"]:
            return False
        self.offsets["p"] = offset
        self._meta_dirty = True
        self.last_duplicate = False
        window, late = self._window_for("p", ev.ts)
        names = self.names
        if ev.platform not in names.platforms or ev.event_name not in names.platform_event_names:
            ev = ev._replace(platform=names.platform(ev.platform), event_name=names.platform_event_name(ev.event_name))
            self._meta_dirty = True
        leaf = f"{ev.platform}|{ev.event_name}|{ev.browser}|{ev.region}"
        leaf_events = self.leaf_events
        leaf_events[leaf] = leaf_events.get(leaf, 0) + 1
        # the reporting delay per group and channel, in log buckets: the event's `arrived_at`
        # against its own time; without it, from the arrival order: 0 on time, and for a
        # correction how many windows after its own it arrived (the input's newest event time
        # would depend on how events are spread over partitions; whole windows rarely do)
        own = self.own_window
        arrived = ev.arrived_at
        if arrived is not None:
            delay = arrived - ev.ts
        else:
            delay = 0.0 if own is None else float(self.counted_in - own)
        group = f"{ev.platform}|{ev.event_name}"
        conv_bucket = None
        if own is not None:
            # a correction of window `own`, kept in its arrival window under `own@`
            leaf = f"{own}@{leaf}"
            group = f"{own}@{group}"
            conv_bucket = self.counted_in  # matched against the backend when it closes
        delays = window.setdefault("d", {}).get(group)
        if delays is None:
            delays = window["d"][group] = {}
        hkey = f"{ev.channel}:{delay_bucket(delay)}"
        if hkey not in delays and len(delays) >= MAX_DELAY_KEYS:
            hkey = f"{OTHER}:{delay_bucket(delay)}"  # bounded: at most MAX_DELAY_KEYS + DELAY_BUCKETS
        delays[hkey] = delays.get(hkey, 0) + 1
        counters = window["p"].get(leaf)
        if counters is None:
            counters = window["p"][leaf] = [0] * N_PLATFORM
            counters[P_VALUE] = 0.0
            window["c"][leaf] = {}
        channels = window["c"][leaf]
        channel = ev.channel
        if channel not in channels and len(channels) >= MAX_CHANNELS:
            channel = OTHER
        channels[channel] = channels.get(channel, 0) + 1
        counters[P_EVENTS] += 1
        if late:
            counters[P_LATE] += 1
            return True
        bucket = int(ev.ts // self._size) * self._size
        if keys is None:
            keys = self.platform_keys_of(ev.platform, ev.event_id, ev.order_id)
        key = keys[0]
        store = self._seen
        seen = store.young.get(key)
        if seen is None and not store.complete:
            seen = store.get(key)
        elif seen is not None and seen[1] < store.cutoff:
            seen = None  # forgotten
        is_new = seen is None
        bit = self._channel_bit.get(ev.channel) or self._channel(ev.channel)
        if seen is not None:
            if seen[0] & bit:
                # same event id again on the same channel: a duplicate trigger, and the
                # platform counts it, so it inflates the count
                counters[P_DUP] += 1
                self.last_duplicate = True
                dkey = (ev.platform, ev.event_name)
                self.duplicate_events[dkey] = self.duplicate_events.get(dkey, 0) + 1
            else:
                # the other channel of a pixel + server pair: the platform's dedupe working
                seen_on = seen[0] | bit
                self._seen.put(key, seen_on, seen[1])
                self._delta["s"].append((key, seen_on, seen[1]))
                counters[P_PAIR] += 1
                return True
        else:
            self._seen.put(key, bit, bucket)
            self._delta["s"].append((key, bit, bucket))
        counters[P_COUNT] += 1
        value = ev.value
        if value is None:
            counters[P_MISS_VALUE] += 1
        else:
            counters[P_VALUE] += value
        if ev.currency is None:
            counters[P_MISS_CURRENCY] += 1
        if not ev.has_click_ids:
            counters[P_MISS_CLICK] += 1
        if ev.consent_denied:
            counters[P_DENIED] += 1
        order_id = ev.order_id
        if order_id is not None and is_new:
            # matched against the backend when the window closes (see close): by then every
            # backend order up to the window's end has been read, whatever the interleaving
            okey, bkey = keys[1], keys[2]
            cb = bucket if conv_bucket is None else conv_bucket
            self.conversions.setdefault(cb, []).append((leaf, bkey))
            self._delta["c"].append((leaf, bkey, cb))
            first = self._orders.get(okey)
            if first is None:
                self._orders.put(okey, key, bucket)
                self._delta["o"].append((okey, key, bucket))
            elif first[0] != key:
                # one order under two event ids: the platform counts it twice
                counters[P_BROKEN] += 1
        return True

    def take_tallies(self) -> tuple[int, dict[str, int], dict[tuple[str, str], int]]:
        """(late events, events per leaf, duplicate triggers per platform group) since the last call."""
        out = (self.late_events, self.leaf_events, self.duplicate_events)
        self.late_events = 0
        self.leaf_events = {}
        self.duplicate_events = {}
        return out

    # ---- closing --------------------------------------------------------------------------
    @property
    def watermark(self) -> float:
        """Event-time watermark: the slowest input's newest event time minus the lateness."""
        return min(self.max_ts.values()) - self.config.allowed_lateness_s

    def watermark_without(self, idle_topics: Iterable[str]) -> float:
        """The watermark when idle inputs are left out (NEG_INF if every input is idle)."""
        active = [ts for topic, ts in self.max_ts.items() if topic not in idle_topics]
        return min(active) - self.config.allowed_lateness_s if active else NEG_INF

    def close(self, watermark: float | None = None) -> Partial | None:
        """Close every open window that ends at or before the watermark.

        `watermark` may be raised by the caller when inputs are idle (see `watermark_without`).
        Returns None when nothing advanced.
        """
        mark = self.watermark if watermark is None else max(watermark, self.watermark)
        if mark == NEG_INF:
            return None
        size = self.config.window_s
        through = float(int(mark // size) * size)
        if through <= self.closed_through:
            return None
        backend: dict[int, dict[str, list[float]]] = {}
        platform: dict[int, dict[str, list[Any]]] = {}
        delays: dict[int, dict[str, dict[str, int]]] = {}
        late: dict[int, dict[str, list[Any]]] = {}
        for start in sorted(self.windows):
            if start + size > through:
                break
            window = self.windows.pop(start)
            conversions = self.conversions.pop(start, ())
            if conversions:
                orders = self._backend
                orders.prefetch([k for _, k in conversions])
                young, cutoff = orders.young, orders.cutoff
                for leaf, key in conversions:
                    hit = young.get(key)
                    if hit is not None and cutoff <= hit[1] <= start and leaf in window["p"]:
                        window["p"][leaf][P_MATCHED] += 1
            if window["b"]:
                backend[start] = window["b"]
            if window["p"]:
                platform[start] = {leaf: c + [window["c"][leaf]] for leaf, c in window["p"].items() if "@" not in leaf}
                corrections = {leaf: c + [window["c"][leaf]] for leaf, c in window["p"].items() if "@" in leaf}
                if corrections:
                    late[start] = corrections
                if not platform[start]:
                    del platform[start]
            if window.get("d"):
                delays[start] = window["d"]
        self.closed_through = through
        self._meta_dirty = True
        self._expire(through - self.config.dedupe_horizon_s)
        return Partial(self.partition, through, backend, platform, delays, late)

    def _expire(self, cutoff: float) -> None:
        """Forget dedupe memory older than the horizon (bounded memory).

        Entries before the cutoff are gone at once (lookups ignore them); merges drop them
        from the arrays, and the deltas holding only such entries are deleted.
        """
        for store in (self._seen, self._orders, self._backend):
            store.cutoff = cutoff
        if not self.deltas or min(self.deltas.values()) >= cutoff:
            return
        for seq, newest in list(self.deltas.items()):
            if newest < cutoff:
                del self.deltas[seq]
                self._delete_item("d", seq)

    # ---- persistence ----------------------------------------------------------------------
    #: a full snapshot of the windows is written once the window deltas since the last one
    #: hold this many times its leaves: writes stay within (1 + 1/ratio) x the deltas, and a
    #: restore reads at most (1 + ratio) x the open windows
    full_snapshot_ratio = 4.0
    #: ... or once this many window deltas are stored
    max_window_deltas = 256

    def _delete_item(self, kind: str, seq: int) -> None:
        """Queue the deletion of `{p}:{kind}:{seq}` and of its further pieces."""
        key = f"{self.partition}:{kind}:{seq}"
        self._deleted_keys.append(key)
        for i in range(1, self._pieces.pop(f"{kind}:{seq}", 1)):
            self._deleted_keys.append(f"{key}:{i}")

    def _write_pieces(self, out: dict[str, JSON | None], kind: str, seq: int, pieces: list[JSON]) -> None:
        key = f"{self.partition}:{kind}:{seq}"
        out[key] = pieces[0]
        for i, piece in enumerate(pieces[1:], 1):
            out[f"{key}:{i}"] = piece
        if len(pieces) > 1:
            self._pieces[f"{kind}:{seq}"] = len(pieces)

    def _write_snapshot(self, out: dict[str, JSON | None]) -> None:
        p = self.partition
        old_id, old_pieces = self._snapshot_id, self._snapshot_pieces
        self._snapshot_id += 1
        pieces = _split_windows(self.windows, self.config.max_leaves_per_item)
        for i, piece in enumerate(pieces):
            out[f"{p}:w:{self._snapshot_id}:{i}"] = piece
        out[f"{p}:w"] = {"seq": self.seq, "id": self._snapshot_id, "pieces": len(pieces)}
        for i in range(old_pieces):
            out[f"{p}:w:{old_id}:{i}"] = None
        self._snapshot_pieces = len(pieces)

    def take_changes(self) -> dict[str, JSON | None]:
        """Items changed since the last call (None = delete); write them in order after each batch.

        No item grows with the backlog: a dedupe delta holds at most `max_records_per_item`
        records and a window item at most `max_leaves_per_item` leaves; more go to further
        pieces (`{key}:1`, `{key}:2`, ...), all written before the meta that makes them count.
        """
        out: dict[str, JSON | None] = {}
        p = self.partition
        for key in self._deleted_keys:
            out[key] = None
        self._deleted_keys = []
        delta = self._delta
        windows = self.windows
        dirty = [start for start in self._dirty if start in windows]
        self._dirty = set()
        for store in (self._seen, self._orders, self._backend):
            store.complete = False  # the batch's prefetch covered its events only
            if store.should_compact():
                store.compact()
        has_dedupe = bool(delta["s"] or delta["o"] or delta["b"] or delta["c"])
        if has_dedupe or dirty:
            self.seq += 1
            self._meta_dirty = True
        if has_dedupe:
            newest = max(
                [r[2] for r in delta["s"]] + [r[2] for r in delta["o"]] + [r[1] for r in delta["b"]]
                + [r[2] for r in delta["c"]]
            )
            self.deltas[self.seq] = newest
            self._write_pieces(out, "d", self.seq, _split_records(delta, self.config.max_records_per_item))
            self._delta = {"s": [], "o": [], "b": [], "c": []}
        if dirty:
            # the touched windows, whole: applied in seq order they give the newest counts
            touched = {start: windows[start] for start in dirty}
            pieces = _split_windows(touched, self.config.max_leaves_per_item)
            self._write_pieces(out, "v", self.seq, pieces)
            self._window_deltas.append(self.seq)
            self._delta_leaves += sum(len(w["b"]) + len(w["p"]) for w in touched.values())
        if self._meta_dirty:
            # The offsets and the seq of the newest batch in one value: whatever prefix of the
            # changelog survives a crash, the windows restored (full snapshot + deltas up to
            # this seq) are those of the batch whose offsets it holds (no double counting).
            out[f"{p}:m"] = {
                "offsets": self.offsets,
                "max_ts": {k: (None if v == NEG_INF else v) for k, v in self.max_ts.items()},
                "closed_through": None if self.closed_through == NEG_INF else self.closed_through,
                "seq": self.seq,
                "channels": self.channels,
                "names": self.names.to_dict(),
            }
            self._meta_dirty = False
            if self._window_deltas and (
                self._delta_leaves >= self.full_snapshot_ratio * max(self._full_leaves, 1)
                or len(self._window_deltas) >= self.max_window_deltas
            ):
                # After the meta: a full snapshot never runs ahead of the offsets. Its pieces
                # `{p}:w:{id}:{i}` first, then the header `{p}:w` naming them, then deletions of
                # the previous snapshot's pieces and of the window deltas it covers, except this
                # batch's own (written above, needed if the snapshot is lost): it goes with the
                # next one.
                self._write_snapshot(out)
                self.base_seq = self.seq
                for seq in self._window_deltas[:-1]:
                    self._delete_item("v", seq)
                    out.update((k, None) for k in self._deleted_keys)
                    self._deleted_keys = []
                self._window_deltas = self._window_deltas[-1:]
                self._full_leaves = sum(len(w["b"]) + len(w["p"]) for w in windows.values())
                self._delta_leaves = 0
        return out

    def _upgrade_delta(self, delta: JSON) -> JSON:
        """A dedupe delta written before the hashed memory (ids as strings): in today's form."""
        seen = []
        for platform, event_id, channels, bucket in delta["s"]:
            mask = 0
            for channel in channels:
                mask |= self._channel_bit.get(channel) or self._channel(channel)
            seen.append((self.platform_keys_of(platform, event_id, None)[0], mask, bucket))
        orders = [(self.platform_keys_of(platform, event_id, order_id)[1],
                   self.platform_keys_of(platform, event_id, None)[0], bucket)
                  for platform, order_id, event_id, bucket in delta["o"]]
        return {"s": seen, "o": orders, "b": delta["b"], "c": delta.get("c", [])}

    @classmethod
    def restore(cls, partition: int, config: WindowConfig, items: Mapping[str, JSON]) -> PartitionWindows:
        """Rebuild from the items of this partition (as written by `take_changes`)."""
        self = cls(partition, config)
        prefix = f"{partition}:"
        deltas: dict[int, dict[int, JSON]] = {}
        window_deltas: dict[int, dict[int, JSON]] = {}
        snapshot_pieces: dict[int, dict[int, JSON]] = {}
        full: JSON = None
        for key, value in items.items():
            if not key.startswith(prefix) or value is None:
                continue
            kind, _, rest = key[len(prefix):].partition(":")
            if kind == "m":
                self.offsets = dict(value["offsets"])
                self.max_ts = {k: (NEG_INF if v is None else v) for k, v in value["max_ts"].items()}
                self.closed_through = NEG_INF if value["closed_through"] is None else value["closed_through"]
                self.seq = value["seq"]
                for channel in value.get("channels", ()):
                    self._channel_bit[channel] = 1 << len(self.channels)
                    self.channels.append(channel)
                self.names = NameCaps.from_dict(value.get("names"), config)
            elif kind == "w":
                if not rest:
                    full = value
                else:
                    snap_id, _, piece = rest.partition(":")
                    snapshot_pieces.setdefault(int(snap_id), {})[int(piece)] = value
            elif kind in ("d", "v"):
                item_seq, _, piece = rest.partition(":")
                (deltas if kind == "d" else window_deltas).setdefault(int(item_seq), {})[int(piece or 0)] = value
        for snap, pieces in snapshot_pieces.items():
            self._snapshot_id = max(self._snapshot_id, snap)
            if full is None or full.get("id") != snap:
                # a snapshot cut before its header, or the one before the header's
                self._deleted_keys.extend(f"{prefix}w:{snap}:{i}" for i in pieces)
        if full is not None and full["seq"] <= self.seq:
            self.base_seq = full["seq"]
            if "windows" in full:  # one value (written before snapshots came in pieces)
                self.windows = {int(k): v for k, v in full["windows"].items()}
            else:
                self._snapshot_id = max(self._snapshot_id, full["id"])
                self._snapshot_pieces = full["pieces"]
                parts = snapshot_pieces.get(full["id"], {})
                self.windows = _merge_window_pieces(parts[i] for i in range(full["pieces"]))
        for seq, parts in sorted(window_deltas.items()):
            if len(parts) > 1:
                self._pieces[f"v:{seq}"] = max(parts) + 1
            if seq > self.seq:
                # written by a batch whose meta did not survive: delete it before the next
                # batch reuses its seq (that batch may touch no window and not overwrite it)
                self._delete_item("v", seq)
                continue
            self._window_deltas.append(seq)
            changed = _merge_window_pieces(parts[i] for i in sorted(parts))
            if self.base_seq < seq:  # newer than the full snapshot
                self.windows.update(changed)
                self._delta_leaves += sum(len(v["b"]) + len(v["p"]) for v in changed.values())
        size = config.window_s
        for start in [s for s in self.windows if s + size <= self.closed_through]:
            del self.windows[start]  # closed after the snapshot that holds it
        self._full_leaves = sum(len(w["b"]) + len(w["p"]) for w in self.windows.values())
        for seq, parts in sorted(deltas.items()):
            if len(parts) > 1:
                self._pieces[f"d:{seq}"] = max(parts) + 1
            if seq > self.seq:
                # written by a batch whose meta did not survive: not applied, and deleted
                # before its seq is reused (the next batch may add no dedupe memory)
                self._delete_item("d", seq)
                continue
            newest = NEG_INF
            orders, backend = self._orders.young, self._backend.young
            for i in sorted(parts):
                delta = parts[i]
                if delta["s"] and len(delta["s"][0]) == 4 or delta["o"] and len(delta["o"][0]) == 4:
                    delta = self._upgrade_delta(delta)
                for hkey, channels, bucket in delta["s"]:
                    self._seen.put(hkey, channels, bucket)
                    newest = max(newest, bucket)
                for hkey, first, bucket in delta["o"]:
                    if hkey not in orders:
                        self._orders.put(hkey, first, bucket)
                    newest = max(newest, bucket)
                for order, bucket in delta["b"]:
                    hkey = self.backend_key(order) if isinstance(order, str) else order
                    if hkey not in backend:
                        self._backend.put(hkey, 0, bucket)
                    newest = max(newest, bucket)
                for leaf, order, bucket in delta.get("c", ()):
                    hkey = self.backend_key(order) if isinstance(order, str) else order
                    if bucket + config.window_s > self.closed_through:  # its window is still open
                        self.conversions.setdefault(bucket, []).append((leaf, hkey))
                    newest = max(newest, bucket)
            self.deltas[seq] = int(newest) if newest != NEG_INF else 0
        cutoff = self.closed_through - config.dedupe_horizon_s
        for store in (self._seen, self._orders, self._backend):
            store.cutoff = cutoff
            store.compact()
        return self


def _split_records(delta: dict[str, list[tuple[Any, ...]]], limit: int) -> list[JSON]:
    """A dedupe delta as pieces of at most `limit` records (one piece when it fits)."""
    if sum(len(v) for v in delta.values()) <= limit:
        return [delta]
    pieces: list[dict[str, list[tuple[Any, ...]]]] = []
    piece: dict[str, list[tuple[Any, ...]]] = {"s": [], "o": [], "b": [], "c": []}
    n = 0
    for kind in ("s", "o", "b", "c"):
        for record in delta[kind]:
            if n >= limit:
                pieces.append(piece)
                piece, n = {"s": [], "o": [], "b": [], "c": []}, 0
            piece[kind].append(record)
            n += 1
    pieces.append(piece)
    return pieces


def _split_windows(windows: Mapping[int, Mapping[str, Any]], limit: int) -> list[JSON]:
    """Windows as pieces `{start: {"b", "p", "c"}}` of at most `limit` leaves each; a window
    with more leaves spreads over several pieces (merged again by `_merge_window_pieces`)."""
    if sum(len(w["b"]) + len(w["p"]) for w in windows.values()) <= limit:
        return [{str(start): w for start, w in windows.items()}]
    pieces: list[dict[str, dict[str, Any]]] = []
    piece: dict[str, dict[str, Any]] = {}
    n = 0
    for start in sorted(windows):
        w = windows[start]
        key = str(start)
        target: dict[str, dict[str, Any]] = {"b": {}, "p": {}, "c": {}, "d": {}}
        piece[key] = target
        # a group's delays (at most MAX_CHANNELS x DELAY_BUCKETS counters) go with its first piece
        target["d"] = dict(w.get("d", {}))
        n += 3 * len(target["d"])
        for part in ("b", "p"):
            for leaf, counters in w[part].items():
                if n >= limit:
                    pieces.append(piece)
                    piece, n = {}, 0
                    piece[key] = target = {"b": {}, "p": {}, "c": {}, "d": {}}
                target[part][leaf] = counters
                if part == "p":
                    target["c"][leaf] = w["c"][leaf]
                n += 1
    pieces.append(piece)
    return pieces


def _merge_window_pieces(pieces: Iterable[Mapping[str, Any]]) -> dict[int, dict[str, Any]]:
    out: dict[int, dict[str, Any]] = {}
    for piece in pieces:
        for k, w in piece.items():
            have = out.get(int(k))
            if have is None:
                out[int(k)] = w
                w.setdefault("d", {})
            else:
                for part in ("b", "p", "c", "d"):
                    have.setdefault(part, {}).update(w.get(part, {}))
    return out



# ---- stage B ------------------------------------------------------------------------------


@dataclass
class ClosedWindow:
    """One closed window of one segment: the value published on `gapwatch-windows`."""

    platform: str
    event_name: str
    browser: str
    region: str
    level: str
    window_start: int
    window_end: int
    backend_count: int = 0
    backend_value: float = 0.0
    backend_consent_denied: int = 0
    platform_count: int = 0
    platform_value: float = 0.0
    platform_duplicates: int = 0
    platform_pair_deduped: int = 0
    platform_broken_dedupe: int = 0
    platform_missing_value: int = 0
    platform_missing_currency: int = 0
    platform_missing_click_ids: int = 0
    platform_consent_denied: int = 0
    platform_matched_orders: int = 0
    platform_events: int = 0
    platform_channels: dict[str, int] = field(default_factory=dict)
    late_events: int = 0
    #: platform level only: this window's reporting delays (`channel:bucket` -> events, see
    #: `delay_bucket`), the learned delays per channel `[p95 over days before this window,
    #: p95 of the last hours, weight of the last hours]` and how long after its end the
    #: window was judged (its channels' learned delay, in whole windows)
    platform_delays: dict[str, int] = field(default_factory=dict)
    delay_p95: dict[str, list[float]] = field(default_factory=dict)
    judged_after_s: int = 0

    @property
    def segment_key(self) -> str:
        return segment_key(self.platform, self.event_name, self.browser, self.region)

    def to_dict(self) -> dict[str, Any]:
        # spelled out (the fields in declaration order): ~450 of these per closed window
        platform, event_name, browser, region = self.platform, self.event_name, self.browser, self.region
        return {
            "segment": {"platform": platform, "event_name": event_name, "browser": browser, "region": region},
            "segment_key": f"{platform}|{event_name}|{browser}|{region}",
            "level": self.level,
            "window_start": self.window_start,
            "window_end": self.window_end,
            "backend_count": self.backend_count,
            "backend_value": round(self.backend_value, 6),
            "backend_consent_denied": self.backend_consent_denied,
            "platform_count": self.platform_count,
            "platform_value": round(self.platform_value, 6),
            "platform_duplicates": self.platform_duplicates,
            "platform_pair_deduped": self.platform_pair_deduped,
            "platform_broken_dedupe": self.platform_broken_dedupe,
            "platform_missing_value": self.platform_missing_value,
            "platform_missing_currency": self.platform_missing_currency,
            "platform_missing_click_ids": self.platform_missing_click_ids,
            "platform_consent_denied": self.platform_consent_denied,
            "platform_matched_orders": self.platform_matched_orders,
            "platform_events": self.platform_events,
            "platform_channels": self.platform_channels,
            "late_events": self.late_events,
            "platform_delays": self.platform_delays,
            "delay_p95": self.delay_p95,
            "judged_after_s": self.judged_after_s,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ClosedWindow:
        seg = d["segment"]
        kwargs = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        return cls(seg["platform"], seg["event_name"], seg["browser"], seg["region"],
                   **{k: v for k, v in kwargs.items() if k not in ("platform", "event_name", "browser", "region")})


#: the part of an open window in stage B that holds the backend counts (groups hold a `|`)
BACKEND_PART = "*"

LEVELS = ("backend", "platform", "platform_browser", "platform_region", "leaf")


def _rollup_keys(browser: str, region: str) -> Iterator[tuple[str, str, str]]:
    yield "platform", "*", "*"
    yield "platform_browser", browser, "*"
    yield "platform_region", "*", region
    yield "leaf", browser, region


class WindowAssembler:
    """Merges partials from all `n_sources` partitions; builds closed windows per segment.

    Partials are idempotent: one from a partition that already closed past a window is
    ignored, and a platform partial is remembered by (partition, window, group).
    Groups (`platform|event_name`) keep getting windows from their first window with data
    on, for `group_ttl_s` of event time after their last, even when silent, because a
    platform that stops reporting is the loudest gap.
    """

    def __init__(self, n_sources: int, window_s: int, group_ttl_s: float = 7 * 86_400.0,
                 owns_group: Any = None, max_gap_s: float = 86_400.0, allowed_lateness_s: float = 120.0,
                 max_delay_s: float = 26 * 3600.0) -> None:
        self.max_gap_s = max_gap_s
        self.allowed_lateness_s = allowed_lateness_s
        self.max_delay_s = max_delay_s
        #: window_start -> groups still to judge (the window closed; their channels' delay has
        #: not passed yet)
        self.pending: dict[int, list[str]] = {}
        #: group -> learned delays, corrections that came after their window was judged
        self.delays: dict[str, DelayLearner] = {}
        self._delays_dirty: set[str] = set()
        self.n_sources = n_sources
        self.window_s = window_s
        self.group_ttl_s = group_ttl_s
        self.owns_group = owns_group  # callable(group) -> bool; None = owns all
        self.markers: dict[int, float] = {}
        self.closed_through = NEG_INF
        self.groups: dict[str, int] = {}  # group -> newest closed window start with platform data
        # window_start -> {"b": leaves, "p": leaves, "seen": {group or "*": [partition, ...]}}
        self.open: dict[int, dict[str, Any]] = {}
        self._meta_dirty = False  # markers, closed_through or groups changed since the last write
        self._dirty: set[tuple[int, str]] = set()  # (window_start, part) merged into since the last write
        self._stored: dict[int, set[str]] = {}  # window_start -> parts with a stored item
        self._closed_stored: list[tuple[int, str]] = []  # stored items of windows closed since

    def add_platform(self, partition: int, window_start: int, group: str, leaves: Mapping[str, list[Any]],
                     delays: Mapping[str, int] | None = None) -> bool:
        if not self._add(partition, window_start, group, leaves):
            return False
        if delays:
            _add_counts(self.open[window_start].setdefault("d", {}).setdefault(group, {}), delays)
        return True

    def add_late(self, partition: int, window_start: int, arrived: int, group: str,
                 leaves: Mapping[str, list[Any]], delays: Mapping[str, int] | None = None) -> bool:
        """A correction: delayed events of `group` in window `window_start` that reached
        `partition` while its window `arrived` was open (sent when that one closed).

        Kept with its window until the group's judgement, which takes it when `arrived` closed
        within the group's delay; one that comes after the judgement is counted as late in
        the group's next judged window (`late_events`), never dropped silently."""
        size = self.window_s
        if arrived + size <= self.markers.get(partition, NEG_INF):
            return False  # re-sent: that partition had closed its arrival window already
        part = f"{group}@{arrived}"
        if window_start + size > self.closed_through or group in self.pending.get(window_start, ()):
            window = self._window(window_start)
            seen = window["seen"].setdefault(part, [])
            if partition in seen:
                return False
            seen.append(partition)
            entry = window.setdefault("l", {}).setdefault(part, {"leaves": {}, "delays": {}})
            _merge(entry["leaves"], leaves)
            _add_counts(entry["delays"], delays or {})
            self._dirty.add((window_start, part))
            return True
        learner = self._learner(group)
        return learner.add_beyond([f"{partition}:{window_start}"], arrived,
                                  sum(int(c[P_EVENTS]) for c in leaves.values()), delays or {})

    def _learner(self, group: str) -> DelayLearner:
        learner = self.delays.get(group)
        if learner is None:
            learner = self.delays[group] = DelayLearner(self.window_s)
        self._delays_dirty.add(group)
        return learner

    def hold_s(self, group: str) -> int:
        """How long after its end a window of `group` is judged: its channels' learned delay
        past the allowed lateness in whole windows, plus one (a correction is sent when the
        window it arrived in closes), at most `max_delay_s`."""
        learner = self.delays.get(group)
        if learner is None:
            return 0
        delay = min(learner.delay_s(), self.max_delay_s)
        if delay <= self.allowed_lateness_s:
            return 0
        size = self.window_s
        return (int((delay - self.allowed_lateness_s) // size) + 1) * size

    def add_backend(self, partition: int, window_start: int, leaves: Mapping[str, list[Any]],
                    groups: Iterable[str] = ()) -> bool:
        """The backend counts of one window closed by `partition` (every group needs them) and
        the groups with platform data in it there (every partition learns every group)."""
        return self._add(partition, window_start, BACKEND_PART, leaves, groups)

    def _add(self, partition: int, window_start: int, part: str, leaves: Mapping[str, list[Any]],
             groups: Iterable[str] = ()) -> bool:
        if window_start + self.window_s <= self.markers.get(partition, NEG_INF):
            return False  # re-sent after the partition had already closed it
        if window_start + self.window_s <= self.closed_through:
            return False
        window = self._window(window_start)
        seen = window["seen"].setdefault(part, [])
        if partition in seen:
            return False
        seen.append(partition)
        _merge(window["b"] if part == BACKEND_PART else window["p"], leaves)
        if groups:
            window.setdefault("g", set()).update(groups)
        self._dirty.add((window_start, part))
        return True

    def add_marker(self, partition: int, closed_through: float,
                   backend: Mapping[int, Mapping[str, list[float]]] | None = None) -> bool:
        """A partition closed windows through `closed_through` (`backend`: their counts, as
        partials carried them before they came one message per window)."""
        if closed_through <= self.markers.get(partition, NEG_INF):
            return False
        for start, leaves in (backend or {}).items():
            self.add_backend(partition, int(start), leaves)
        self.markers[partition] = closed_through
        self._meta_dirty = True
        return True

    def _window(self, start: int) -> dict[str, Any]:
        window = self.open.get(start)
        if window is None:
            window = self.open[start] = {"b": {}, "p": {}, "seen": {}}
        return window

    @property
    def ready_through(self) -> float:
        if len(self.markers) < self.n_sources:
            return NEG_INF
        return min(self.markers.values())

    def close_ready(self) -> list[list[ClosedWindow]]:
        """Close every window all sources have closed; one list of segment windows per window."""
        through = self.ready_through
        out: list[list[ClosedWindow]] = []
        if through == NEG_INF:
            return out
        # also close the empty windows up to `through`: silence is data. From the last closed
        # window, or on the first close from the first window with data; never more than
        # `max_gap_s` of them (a jump in event time must not build millions of empty windows).
        if self.closed_through != NEG_INF:
            first = int(self.closed_through)
        else:
            first = min(self.open) if self.open else int(through)
        first = max(first, int(through - self.max_gap_s) // self.window_s * self.window_s)
        start = first
        while start + self.window_s <= through:
            self.open.setdefault(start, {"b": {}, "p": {}, "seen": {}})
            start += self.window_s
        for start in sorted(self.open):
            end = start + self.window_s
            window = self.open[start]
            closing = start not in self.pending
            if closing:
                if end > through:
                    break
                groups, live = self._groups_at(start, window)
                pending = sorted(groups)
            else:
                pending, live = self.pending[start], set()
            # a group's windows are judged in order, each once its channels' delay has passed
            ready = [g for g in pending if end + self.hold_s(g) <= through]
            rest = [g for g in pending if g not in ready]
            if closing or ready:
                out.append(self._build(start, window, ready, live if closing else None))
                self._meta_dirty = True
            if rest:
                self.pending[start] = rest
                # what the judged groups held is no longer needed
                stored = self._stored.get(start, set())
                for part in [p for p in stored if p.rpartition("@")[0] in ready or p in ready]:
                    stored.discard(part)
                    self._closed_stored.append((start, part))
            else:
                self.pending.pop(start, None)
                del self.open[start]
                self._closed_stored.extend((start, part) for part in self._stored.pop(start, ()))
        if through > self.closed_through:
            self.closed_through = through
            self._meta_dirty = True
            cutoff = through - self.group_ttl_s
            for g in [g for g, s in self.groups.items() if s < cutoff]:
                del self.groups[g]
        return out

    def _groups_at(self, start: int, window: Mapping[str, Any]) -> tuple[set[str], set[str]]:
        """(groups owned here to judge in this window, groups live anywhere), when it closes."""
        # The groups of this window: those with data in it, and those with data in a window
        # closed before it, at most `group_ttl_s` ago. Windows close in order and each is
        # complete when it closes, so this depends on the data alone, never on how many
        # windows one call happens to close (a group first seen later is not in earlier ones).
        # Every partition learns every group (the backend partials name them), not only the
        # ones it owns: the backend series of an event name is built by its owner whenever a
        # group of that name is live anywhere, so with any number of partitions as with one.
        with_data = {group_of(leaf) for leaf in window["p"]} | window.get("g", set())
        cutoff = start - self.group_ttl_s
        for g in with_data:
            self.groups[g] = start
        live = {g for g, last in self.groups.items() if last >= cutoff}
        groups = live
        if self.owns_group is not None:
            groups = {g for g in groups if self.owns_group(g)}
        return groups, live

    def _build(self, start: int, window: dict[str, Any], groups: Iterable[str], live: set[str] | None) -> list[ClosedWindow]:
        """The segment windows of `groups` (judged now) and, when the window closes now (`live`:
        the groups live anywhere), the backend series."""
        end = start + self.window_s
        segments: dict[tuple[str, str, str, str], ClosedWindow] = {}

        def seg(platform: str, event_name: str, level: str, browser: str, region: str) -> ClosedWindow:
            k = (platform, event_name, browser, region)
            w = segments.get(k)
            if w is None:
                w = segments[k] = ClosedWindow(platform, event_name, browser, region, level, start, end)
            return w

        groups = sorted(groups)
        judged = set(groups)
        holds = {g: self.hold_s(g) for g in groups}
        by_event_name: dict[str, list[str]] = {}
        for g in groups:
            platform, event_name = g.split("|", 1)
            by_event_name.setdefault(event_name, []).append(platform)
        # the judged groups' leaves, with the corrections that arrived within their delay;
        # later ones wait, counted as late, for the group's next judged window
        leaves_now: dict[str, list[Any]] = {}
        for leaf, c in window["p"].items():
            if group_of(leaf) in judged:
                leaves_now[leaf] = c
        delays_now: dict[str, dict[str, int]] = {g: dict(window.get("d", {}).get(g, {})) for g in groups}
        late_now: dict[str, int] = {}
        for part, entry in sorted(window.get("l", {}).items()):
            g, _, arrived = part.rpartition("@")
            if g not in judged:
                continue
            if int(arrived) + self.window_s <= end + holds[g]:
                for leaf, c in entry["leaves"].items():
                    have = leaves_now.get(leaf)
                    if have is None:
                        leaves_now[leaf] = [dict(x) if isinstance(x, dict) else x for x in c]
                    else:
                        if have is window["p"].get(leaf):
                            have = leaves_now[leaf] = [dict(x) if isinstance(x, dict) else x for x in have]
                        _merge({leaf: have}, {leaf: c})
                _add_counts(delays_now[g], entry["delays"])
            else:
                self._learner(g).add_beyond([f"{p}:{start}" for p in window["seen"].get(part, [])], int(arrived),
                                            sum(int(c[P_EVENTS]) for c in entry["leaves"].values()), entry["delays"])
        for g in groups:
            learner = self.delays.get(g)
            if learner is not None and learner.beyond:
                n, extra = learner.take_beyond(end + holds[g])
                if n:
                    late_now[g] = n
                    _add_counts(delays_now[g], extra)
        for leaf, c in leaves_now.items():
            platform, event_name, browser, region = leaf.split("|")
            for level, b, r in _rollup_keys(browser, region):
                w = seg(platform, event_name, level, b, r)
                w.platform_count += c[P_COUNT]
                w.platform_value += c[P_VALUE]
                w.platform_duplicates += c[P_DUP]
                w.platform_pair_deduped += c[P_PAIR]
                w.platform_broken_dedupe += c[P_BROKEN]
                w.platform_missing_value += c[P_MISS_VALUE]
                w.platform_missing_currency += c[P_MISS_CURRENCY]
                w.platform_missing_click_ids += c[P_MISS_CLICK]
                w.platform_consent_denied += c[P_DENIED]
                w.platform_matched_orders += c[P_MATCHED]
                w.platform_events += c[P_EVENTS]
                w.late_events += c[P_LATE]
                channels = c[N_PLATFORM] if len(c) > N_PLATFORM else {}
                for ch, n in channels.items():
                    w.platform_channels[ch] = w.platform_channels.get(ch, 0) + n
        for leaf, c in window["b"].items():
            event_name, browser, region = leaf.split("|")
            for platform in by_event_name.get(event_name, ()):
                for level, b, r in _rollup_keys(browser, region):
                    w = seg(platform, event_name, level, b, r)
                    w.backend_count += int(c[B_COUNT])
                    w.backend_value += c[B_VALUE]
                    w.backend_consent_denied += int(c[B_DENIED])
                    w.late_events += int(c[B_LATE])
        # A group owned here with no data at all in this window still gets its parent window;
        # it carries the group's delays, and they teach the group's learner
        for g in groups:
            platform, event_name = g.split("|", 1)
            parent = seg(platform, event_name, "platform", "*", "*")
            parent.late_events += late_now.get(g, 0)
            parent.platform_delays = delays_now[g]
            parent.judged_after_s = holds[g]
            if delays_now[g] or g in self.delays:
                parent.delay_p95 = self._learner(g).update(start, delays_now[g])
        for g in groups:  # judged: its leaves are not needed any more
            window.setdefault("d", {}).pop(g, None)
            for part in [p for p in window.get("l", {}) if p.rpartition("@")[0] == g]:
                del window["l"][part]
        for leaf in [leaf for leaf in window["p"] if group_of(leaf) in judged]:
            del window["p"][leaf]
        if live is None:
            return [segments[k] for k in sorted(segments)]
        # The backend series itself, once per event name (by its owner): business reality.
        backend_names = {leaf.split("|", 1)[0] for leaf in window["b"]} | {g.split("|", 1)[1] for g in live}
        for event_name in backend_names:
            if self.owns_group is not None and not self.owns_group(f"*|{event_name}"):
                continue
            w = seg("*", event_name, "backend", "*", "*")
            for leaf, c in window["b"].items():
                if leaf.split("|", 1)[0] == event_name:
                    w.backend_count += int(c[B_COUNT])
                    w.backend_value += c[B_VALUE]
                    w.backend_consent_denied += int(c[B_DENIED])
        return [segments[k] for k in sorted(segments)]

    # persistence, under a caller-chosen prefix: a small meta `{prefix}a` (markers, closed
    # through, groups) and one item per (open window, part) `{prefix}o:{start}:{part}` (part:
    # a group, or `*` for the backend counts) holding its merged leaves and the partitions
    # merged into them, so counts and "already merged" always agree. Bounded: a part holds
    # one group's leaves (browser x region) or the backend's (event name x browser x region).
    def take_changes(self, prefix: str) -> dict[str, JSON | None]:
        """Items changed since the last call (None = delete), in the order to write them.

        Merged parts first (a re-sent partial is recognised by the item itself), then the
        meta, then the deletions of closed windows' items: a crash between the meta and the
        deletions leaves items that `restore` drops as closed, never a closed window reopened.
        """
        out: dict[str, JSON | None] = {}
        by_window: dict[int, list[str]] = {}
        for start, part in self._dirty:
            if start in self.open:
                by_window.setdefault(start, []).append(part)
        self._dirty = set()
        for start in sorted(by_window):
            window = self.open[start]
            groups: dict[str, dict[str, list[Any]]] | None = None
            stored = self._stored.setdefault(start, set())
            for part in sorted(by_window[start]):
                delays: dict[str, int] | None = None
                if part == BACKEND_PART:
                    leaves = window["b"]
                elif "@" in part:  # a correction
                    entry = window.get("l", {}).get(part)
                    if entry is None:
                        continue  # taken by its group's judgement already
                    leaves, delays = entry["leaves"], entry["delays"]
                else:
                    if groups is None:
                        groups = {}
                        for leaf, c in window["p"].items():
                            groups.setdefault(group_of(leaf), {})[leaf] = c
                    leaves = groups.get(part, {})
                    delays = window.get("d", {}).get(part)
                item = {"seen": window["seen"][part], "leaves": leaves}
                if delays:
                    item["delays"] = delays
                if part == BACKEND_PART and window.get("g"):
                    item["groups"] = sorted(window["g"])
                out[f"{prefix}o:{start}:{part}"] = item
                stored.add(part)
        # each group's learned delays (idempotent per window: a crash before the meta that
        # re-judges a window does not learn it twice)
        for g in sorted(self._delays_dirty):
            out[f"{prefix}dl:{g}"] = self.delays[g].to_dict()
        self._delays_dirty = set()
        if self._meta_dirty:
            self._meta_dirty = False
            out[f"{prefix}a"] = {
                "markers": {str(k): v for k, v in self.markers.items()},
                "closed_through": None if self.closed_through == NEG_INF else self.closed_through,
                "groups": self.groups,
                "pending": {str(k): v for k, v in self.pending.items()},
            }
        for start, part in self._closed_stored:
            out[f"{prefix}o:{start}:{part}"] = None
        self._closed_stored = []
        return out

    def restore(self, prefix: str, items: Mapping[str, JSON]) -> None:
        value = items.get(f"{prefix}a")
        if value is not None:
            self.markers = {int(k): v for k, v in value["markers"].items()}
            self.closed_through = NEG_INF if value["closed_through"] is None else value["closed_through"]
            self.groups = dict(value["groups"])
            self.pending = {int(k): list(v) for k, v in value.get("pending", {}).items()}
            for k, window in value.get("open", {}).items():  # one value held every open window
                seen: dict[str, list[int]] = {}
                for partition, group in window["seen"]:
                    seen.setdefault(group, []).append(partition)
                start = int(k)
                self.open[start] = {"b": window["b"], "p": window["p"], "seen": seen}
                self._dirty.update((start, part) for part in seen)
                self._meta_dirty = True
        item_prefix = f"{prefix}o:"
        learner_prefix = f"{prefix}dl:"
        for key, item in items.items():
            if item is not None and key.startswith(learner_prefix):
                self.delays[key[len(learner_prefix):]] = DelayLearner.from_dict(self.window_s, item)
        for key, item in items.items():
            if item is None or not key.startswith(item_prefix):
                continue
            k, _, part = key[len(item_prefix):].partition(":")
            start = int(k)
            owner = part.rpartition("@")[0] or part
            if start + self.window_s <= self.closed_through and owner not in self.pending.get(start, ()):
                self._closed_stored.append((start, part))  # closed; the crash cut its deletion
                continue
            window = self._window(start)
            window["seen"][part] = list(item["seen"])
            if "@" in part:
                window.setdefault("l", {})[part] = {"leaves": item["leaves"], "delays": item.get("delays", {})}
                self._stored.setdefault(start, set()).add(part)
                continue
            if item.get("delays"):
                window.setdefault("d", {})[part] = item["delays"]
            (window["b"] if part == BACKEND_PART else window["p"]).update(item["leaves"])
            if item.get("groups"):
                window["g"] = set(item["groups"])
            self._stored.setdefault(start, set()).add(part)


def _merge(into: dict[str, list[Any]], leaves: Mapping[str, list[Any]]) -> None:
    for leaf, counters in leaves.items():
        have = into.get(leaf)
        if have is None:
            into[leaf] = [dict(x) if isinstance(x, dict) else x for x in counters]
            continue
        for i, x in enumerate(counters):
            if isinstance(x, dict):
                for ch, n in x.items():
                    have[i][ch] = have[i].get(ch, 0) + n
            else:
                have[i] += x


def split_platform_by_group(platform: Mapping[int, Mapping[str, list[Any]]]) -> Iterable[tuple[int, str, dict[str, list[Any]]]]:
    """Regroup a partial's platform leaves as (window_start, group, leaves) for routing."""
    for start, leaves in platform.items():
        by_group: dict[str, dict[str, list[Any]]] = {}
        for leaf, c in leaves.items():
            by_group.setdefault(group_of(leaf), {})[leaf] = c
        for group, part in by_group.items():
            yield start, group, part


def _add_counts(into: dict[str, int], counts: Mapping[str, int]) -> None:
    for k, n in counts.items():
        into[k] = into.get(k, 0) + n


def _quantile_s(hist: Mapping[str, float], q: float) -> float | None:
    """The upper edge of the bucket holding quantile `q` of a sparse delay histogram."""
    total = sum(hist.values())
    if total <= 0:
        return None
    acc = 0.0
    for bucket in sorted(hist, key=int):
        acc += hist[bucket]
        if acc >= q * total - 1e-9:
            return delay_edge(int(bucket))
    return delay_edge(max(int(b) for b in hist))


class DelayLearner:
    """The reporting delays of one group's channels, learned from the windows judged.

    Per channel two sparse histograms over the half-octave buckets of `delay_bucket`: one
    over the last days (weights decay by e^(-window/3 d) per judged window) whose 95th
    percentile is the channel's delay, and one over the last hours (6 h) that shows a jump.
    Memory: at most (48 + 37) channel buckets x 2 histograms x ~12 bytes of JSON per group
    (~2 kB; ~300 bytes for two channels), plus the corrections that came after their window
    was judged, kept until the group's next judgement takes them (a few per group).
    """

    LONG_S = 3 * 86_400.0
    RECENT_S = 6 * 3600.0
    QUANTILE = 0.95
    #: a channel's delay counts once this much (decayed) weight is behind it
    MIN_WEIGHT = 5.0

    def __init__(self, window_s: int) -> None:
        self.window_s = window_s
        self.long: dict[str, dict[str, float]] = {}  # channel -> bucket -> weight
        self.recent: dict[str, dict[str, float]] = {}
        #: arrival window -> {"n": events, "d": delays, "seen": ["partition:own window", ...]}
        self.beyond: dict[str, dict[str, Any]] = {}
        self.last = -1  # the newest window learned (idempotent per window)

    def add_beyond(self, seen_ids: list[str], arrived: int, n: int, delays: Mapping[str, int]) -> bool:
        entry = self.beyond.setdefault(str(arrived), {"n": 0, "d": {}, "seen": []})
        if any(i in entry["seen"] for i in seen_ids):
            return False
        entry["seen"].extend(seen_ids)
        entry["n"] += n
        _add_counts(entry["d"], delays)
        return True

    def take_beyond(self, through: float) -> tuple[int, dict[str, int]]:
        """The late corrections whose arrival window closed by `through`: (events, delays)."""
        n = 0
        delays: dict[str, int] = {}
        for arrived in sorted((a for a in self.beyond if int(a) + self.window_s <= through), key=int):
            entry = self.beyond.pop(arrived)
            n += entry["n"]
            _add_counts(delays, entry["d"])
        return n, delays

    def delay_s(self) -> float:
        """The delay to wait for: the largest channel's 95th percentile over the last days."""
        out = 0.0
        for hist in self.long.values():
            if sum(hist.values()) >= self.MIN_WEIGHT:
                out = max(out, _quantile_s(hist, self.QUANTILE) or 0.0)
        return out

    def update(self, start: int, delays: Mapping[str, int]) -> dict[str, list[float]]:
        """Learn one judged window's delays; per channel [p95 over days before it, p95 of the
        last hours with it, weight of the last hours]."""
        before = {ch: _quantile_s(h, self.QUANTILE) for ch, h in self.long.items()
                  if sum(h.values()) >= self.MIN_WEIGHT}
        if start > self.last:
            self.last = start
            for hists, tau in ((self.long, self.LONG_S), (self.recent, self.RECENT_S)):
                factor = math.exp(-self.window_s / tau)
                for ch in list(hists):
                    hist = {b: w * factor for b, w in hists[ch].items() if w * factor >= 1e-3}
                    if hist:
                        hists[ch] = hist
                    else:
                        del hists[ch]
                for key, n in delays.items():
                    ch, _, bucket = key.rpartition(":")
                    hist = hists.setdefault(ch, {})
                    hist[bucket] = hist.get(bucket, 0.0) + n
        out: dict[str, list[float]] = {}
        for ch, hist in sorted(self.recent.items()):
            p_before = before.get(ch)
            p_recent = _quantile_s(hist, self.QUANTILE)
            if p_before is not None and p_recent is not None:
                out[ch] = [p_before, p_recent, round(sum(hist.values()), 3)]
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"long": self.long, "recent": self.recent, "beyond": self.beyond, "last": self.last}

    @classmethod
    def from_dict(cls, window_s: int, d: Mapping[str, Any]) -> DelayLearner:
        self = cls(window_s)
        self.long = {ch: dict(h) for ch, h in d.get("long", {}).items()}
        self.recent = {ch: dict(h) for ch, h in d.get("recent", {}).items()}
        self.beyond = {a: {"n": e["n"], "d": dict(e["d"]), "seen": list(e["seen"])} for a, e in d.get("beyond", {}).items()}
        self.last = int(d.get("last", -1))
        return self
