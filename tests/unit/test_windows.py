"""Window counting (detectors.windows): stage A `PartitionWindows` and stage B `WindowAssembler`."""

from __future__ import annotations

import copy
import time
from dataclasses import replace
from typing import Any

import orjson
import pytest

from detectors.events import BackendEvent, PlatformEvent
from detectors.windows import (
    P_BROKEN,
    P_COUNT,
    P_DUP,
    P_EVENTS,
    P_LATE,
    P_MATCHED,
    P_MISS_CLICK,
    P_MISS_CURRENCY,
    P_MISS_VALUE,
    P_PAIR,
    P_VALUE,
    ClosedWindow,
    PartitionWindows,
    WindowAssembler,
    WindowConfig,
    split_platform_by_group,
)

T = 1767571200  # aligned to 60 s
CFG = WindowConfig(window_s=60, allowed_lateness_s=30)


def be(eid: str, ts: float, value: float | None = 10.0, browser: str = "chrome", region: str = "eu",
       order_id: str | None = None, denied: bool = False, name: str = "purchase") -> BackendEvent:
    return BackendEvent(eid, name, order_id if order_id is not None else eid, ts, value, browser, region, denied, False)


def pe(eid: str, ts: float, channel: str = "pixel", platform: str = "meta", order_id: str | None = None,
       value: float | None = 10.0, currency: str | None = "EUR", click: bool = True, browser: str = "chrome",
       region: str = "eu", denied: bool = False, name: str = "purchase") -> PlatformEvent:
    return PlatformEvent(platform, channel, name, eid, order_id, ts, value, currency, browser, region, denied, click)


def leaf(pw: PartitionWindows, start: int, key: str = "meta|purchase|chrome|eu") -> list[Any]:
    return pw.windows[start]["p"][key]


# ---- stage A --------------------------------------------------------------------------------


def test_redelivery_is_skipped_by_offset() -> None:
    pw = PartitionWindows(0, CFG)
    assert pw.add_backend(0, be("o1", T + 1))
    assert pw.add_platform(0, pe("o1", T + 2, order_id="o1"))
    assert not pw.add_backend(0, be("o1", T + 1))  # same offset again: redelivery
    assert not pw.add_platform(0, pe("o1", T + 2, order_id="o1"))
    assert pw.already_applied("b", 0) and not pw.already_applied("b", 1)
    assert pw.windows[T]["b"]["purchase|chrome|eu"][0] == 1
    c = leaf(pw, T)
    assert (c[P_COUNT], c[P_DUP], c[P_EVENTS]) == (1, 0, 1)
    # offsets are per input topic: platform offset 0 does not shadow backend offset 1
    assert pw.add_backend(1, be("o2", T + 3))
    # a skipped (invalid) offset is remembered too, once
    assert pw.skip("p", 5) and not pw.skip("p", 5) and not pw.add_platform(4, pe("x", T + 4))


def test_pair_duplicate_and_broken_dedupe() -> None:
    pw = PartitionWindows(0, CFG)
    pw.add_backend(0, be("b-o1", T + 1, order_id="o1"))
    pw.add_backend(1, be("b-o2", T + 1, order_id="o2"))
    off = iter(range(100))
    pw.add_platform(next(off), pe("e1", T + 2, "pixel", order_id="o1"))
    pw.add_platform(next(off), pe("e1", T + 3, "capi", order_id="o1", click=False))  # pair: counted once
    pw.add_platform(next(off), pe("e1", T + 4, "pixel", order_id="o1"))  # duplicate trigger
    pw.add_platform(next(off), pe("e2", T + 5, "pixel", order_id="o2"))
    pw.add_platform(next(off), pe("e2-capi", T + 6, "capi", order_id="o2", value=None, currency=None))  # broken
    pw.add_platform(next(off), pe("e3", T + 7, "capi", order_id="ghost", click=False))
    c = leaf(pw, T)
    assert c[P_EVENTS] == 6
    assert c[P_PAIR] == 1
    assert c[P_DUP] == 1
    assert c[P_BROKEN] == 1
    assert c[P_COUNT] == 5  # e1, e1 (dup), e2, e2-capi, e3
    assert c[P_VALUE] == 40.0
    assert (c[P_MISS_VALUE], c[P_MISS_CURRENCY], c[P_MISS_CLICK]) == (1, 1, 1)
    assert c[P_MATCHED] == 0  # decided when the window closes (interleaving-independent)
    assert pw.windows[T]["c"]["meta|purchase|chrome|eu"] == {"pixel": 3, "capi": 3}
    # the same event id on another platform is another conversion
    pw.add_platform(next(off), pe("e1", T + 8, "pixel", platform="tiktok", order_id="o1"))
    assert leaf(pw, T, "tiktok|purchase|chrome|eu")[P_COUNT] == 1
    # at close: e1, e2, e2-capi match orders the backend has (up to the window); ghost does not
    partial = pw.close(T + 10 * 86_400)
    assert partial is not None
    assert partial.platform[T]["meta|purchase|chrome|eu"][P_MATCHED] == 3
    assert partial.platform[T]["tiktok|purchase|chrome|eu"][P_MATCHED] == 1


def test_lateness_counts_late_events_in_the_oldest_open_window() -> None:
    pw = PartitionWindows(0, replace(CFG, max_delay_s=0))  # no corrections: late is late
    pw.add_backend(0, be("a", T + 10))
    pw.add_platform(0, pe("a", T + 10))
    pw.add_backend(1, be("b", T + 100))  # watermark min(b, p) - 30: platform still at T+10
    pw.add_platform(1, pe("late-but-allowed", T + 50))  # within lateness: counted normally
    assert not pw.last_late
    pw.add_platform(2, pe("c", T + 200))
    pw.add_backend(2, be("c", T + 200))  # watermark T+170: windows T and T+60 are due
    partial = pw.close()
    assert partial is not None and partial.closed_through == T + 120
    assert sorted(partial.backend) == [T, T + 60]
    assert partial.platform[T]["meta|purchase|chrome|eu"][P_COUNT] == 2
    # an event of the closed window T: late, counted as late in the oldest open window (T+120)
    pw.add_platform(3, pe("very-late", T + 5))
    assert pw.last_late
    c = leaf(pw, T + 120)
    assert (c[P_LATE], c[P_COUNT], c[P_EVENTS]) == (1, 0, 1)
    assert partial.platform[T]["meta|purchase|chrome|eu"][P_LATE] == 0
    pw.add_backend(3, be("late-b", T + 5))
    assert pw.windows[T + 120]["b"]["purchase|chrome|eu"][3] == 1
    assert pw.close() is None  # nothing advanced


def test_a_delayed_platform_event_is_a_correction_of_its_own_window() -> None:
    pw = PartitionWindows(0, replace(CFG, max_delay_s=3600))
    pw.add_backend(0, be("a", T + 10))
    pw.add_platform(0, pe("a", T + 10))
    pw.add_platform(1, pe("c", T + 200))
    pw.add_backend(1, be("c", T + 200))
    first = pw.close()
    assert first is not None and first.closed_through == T + 120
    # window T is closed; an event of it arrives (within max_delay): counted in its arrival
    # window T+120 under `T@leaf`, with its delay in whole windows (no arrived_at)
    pw.add_platform(2, pe("late-import", T + 5, "import", order_id="a"))
    assert not pw.last_late and pw.own_window == T
    c = leaf(pw, T + 120, f"{T}@meta|purchase|chrome|eu")
    assert (c[P_COUNT], c[P_LATE], c[P_EVENTS]) == (1, 0, 1)
    assert pw.windows[T + 120]["d"][f"{T}@meta|purchase"] == {"import:14": 1}  # 120 s: bucket 14
    # an `arrived_at` gives the delay itself: 2 h 5 min is bucket 26 (2^12.5 < 7500 <= 2^13)
    pw.add_platform(3, pe("late-capi", T + 6, "capi")._replace(arrived_at=T + 7506))
    assert pw.windows[T + 120]["d"][f"{T}@meta|purchase"] == {"import:14": 1, "capi:26": 1}
    # beyond max_delay: late, as before
    pw.add_platform(4, pe("c2", T + 4000))
    pw.add_backend(2, be("c2", T + 4000))
    pw.add_platform(5, pe("ancient", T + 1))
    assert pw.last_late and pw.own_window is None
    partial = pw.close()
    assert partial is not None and partial.late is not None and partial.delays is not None
    fixes = partial.late[T + 120]
    assert fixes[f"{T}@meta|purchase|chrome|eu"][P_COUNT] == 2
    assert fixes[f"{T}@meta|purchase|chrome|eu"][P_MATCHED] == 1  # order a is in the backend
    assert all("@" not in k for w in partial.platform.values() for k in w)
    assert partial.delays[T + 120][f"{T}@meta|purchase"] == {"import:14": 1, "capi:26": 1}


def test_a_group_is_judged_after_its_learned_delay_with_its_corrections() -> None:
    """Stage B: a group whose channel reports windows late is judged that much later, with the
    delayed events in their own window; corrections after its judgement are late, counted."""
    W = 60
    asm = WindowAssembler(1, W, allowed_lateness_s=30, max_delay_s=3600)
    group, key = "google_ads|lead", "google_ads|lead|chrome|eu"

    def leaves() -> dict[str, list[Any]]:
        return {key: [1, 10.0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, {"import": 1}]}

    def window(start: int, on_time: bool, late: int | None = None) -> list[ClosedWindow]:
        """Window `start` closes at partition 0; a correction of window `late` arrived in it."""
        asm.add_backend(0, start, {"lead|chrome|eu": [1, 10.0, 0, 0]}, [group])
        if on_time:
            asm.add_platform(0, start, group, leaves(), {"import:0": 1})
        if late is not None:
            asm.add_late(0, late, start, group, leaves(), {"import:19": 1})
        asm.add_marker(0, start + W)
        return [w for ws in asm.close_ready() for w in ws if w.segment_key == "google_ads|lead|*|*"]

    # no delay learned: judged at once
    assert [w.judged_after_s for i in range(-6, 1) for w in window(T + i * W, True)] == [0] * 7
    # the import now arrives 5 windows late: its windows are judged empty until the delayed
    # events arrive, which count as late (late_events) and teach the delay
    judged = []
    for i in range(1, 13):
        judged += window(T + i * W, False, T + (i - 5) * W if i > 5 else None)
    assert judged[0].platform_count == 0 and judged[0].judged_after_s == 0
    assert sum(w.late_events for w in judged) >= 1
    hold = asm.hold_s(group)
    assert hold >= 5 * W
    assert any(p95[1] > p95[0] for w in judged for p95 in w.delay_p95.values())  # the jump shows
    # now a window waits for its delay: not judged when it closes ...
    s = T + 13 * W
    assert all(w.window_start < s for w in window(s, False, s - 5 * W))
    assert s in asm.pending
    # ... and judged `hold` after its end, with its delayed conversion counted in it
    later: list[ClosedWindow] = []
    for i in range(1, hold // W + 2):
        later += window(s + i * W, False, s + (i - 5) * W)
    first = next(w for w in later if w.window_start == s)
    assert first.platform_count == 1 and first.late_events == 0 and first.judged_after_s == hold
    # restore gives the same state
    again = WindowAssembler(1, W, allowed_lateness_s=30, max_delay_s=3600)
    again.restore("", asm.take_changes(""))
    assert again.pending == asm.pending and again.hold_s(group) == hold


def test_the_watermark_waits_for_the_slower_input_unless_idle() -> None:
    pw = PartitionWindows(0, CFG)
    pw.add_backend(0, be("a", T + 10))
    pw.add_backend(1, be("b", T + 1000))
    assert pw.close() is None  # platform input never seen: -inf
    assert pw.watermark_without({"p"}) == T + 970
    partial = pw.close(pw.watermark_without({"p"}))
    assert partial is not None and partial.closed_through == T + 960


def _drive(pw: PartitionWindows, events: list[tuple[str, int, Any]]) -> list[Any]:
    out = []
    for kind, offset, ev in events:
        (pw.add_backend if kind == "b" else pw.add_platform)(offset, ev)
        partial = pw.close()
        if partial is not None:
            out.append(orjson.loads(orjson.dumps(partial._asdict(), option=orjson.OPT_NON_STR_KEYS)))
    return out


def _stream(n: int = 400) -> list[tuple[str, int, Any]]:
    events = []
    for i in range(n):
        ts = T + i * 7
        events.append(("b", i, be(f"b{i}", ts, order_id=f"o{i % 150}")))
        events.append(("p", 2 * i, pe(f"e{i % 170}", ts + 3, "pixel", order_id=f"o{i % 150}")))
        events.append(("p", 2 * i + 1, pe(f"e{i % 170}", ts + 4, "capi" if i % 3 else "pixel", order_id=f"o{i % 150}",
                                          browser="safari" if i % 2 else "chrome")))
    return events


def test_restore_from_changes_gives_identical_state_and_output() -> None:
    events = _stream()
    cut = len(events) // 2
    a = PartitionWindows(3, CFG)
    items: dict[str, Any] = {}
    for i in range(0, cut, 37):  # batches, changes written after each (JSON round trip)
        _drive(a, events[i:min(i + 37, cut)])
        for k, v in a.take_changes().items():
            if v is None:
                items.pop(k, None)
            else:
                items[k] = orjson.loads(orjson.dumps(v))
    b = PartitionWindows.restore(3, CFG, copy.deepcopy(items))
    for attr in ("offsets", "max_ts", "closed_through", "seq", "windows", "seen_events", "order_events",
                 "backend_orders", "deltas"):
        assert getattr(b, attr) == getattr(a, attr), attr
    rest_a = _drive(a, events[cut:])
    rest_b = _drive(b, events[cut:])
    assert rest_a == rest_b and rest_a
    # replaying the whole stream into the restored state changes nothing before the cut
    c = PartitionWindows.restore(3, CFG, copy.deepcopy(items))
    assert _drive(c, events) == rest_a
    # other partitions' items are ignored
    assert PartitionWindows.restore(4, CFG, items).windows == {}


STATE_ATTRS = ("offsets", "max_ts", "closed_through", "seq", "windows", "seen_events", "order_events",
               "backend_orders", "deltas")


#: items split into many small pieces: every cut between two pieces of one item is tried too
SMALL_ITEMS = WindowConfig(window_s=60, allowed_lateness_s=30, max_records_per_item=7, max_leaves_per_item=2)


@pytest.mark.parametrize(("ratio", "cfg"), [(0.5, CFG), (4.0, CFG), (0.5, SMALL_ITEMS), (4.0, SMALL_ITEMS)])
def test_any_prefix_of_the_writes_restores_the_state_of_a_whole_batch(ratio: float, cfg: WindowConfig) -> None:
    """A crash may cut the changelog writes anywhere: window deltas, full snapshots, deletions,
    between the pieces of one item.

    Whatever prefix survives, the restored state is exactly the one after the batch that the
    surviving meta names, and driving the rest of the stream from there gives the same output
    as an uninterrupted run (counts and offsets agree).
    """
    events = _stream(300)
    a = PartitionWindows(3, cfg)
    a.full_snapshot_ratio = ratio
    writes: list[tuple[str, Any]] = []
    states: dict[int, dict[str, Any]] = {0: copy.deepcopy({k: getattr(a, k) for k in STATE_ATTRS})}
    for i in range(0, len(events), 29):
        _drive(a, events[i:i + 29])
        writes.extend((k, orjson.loads(orjson.dumps(v))) for k, v in a.take_changes().items())
        states[a.seq] = copy.deepcopy({k: getattr(a, k) for k in STATE_ATTRS})
    assert any(k == "3:w" for k, _ in writes) and any(k.startswith("3:v:") and v is None for k, v in writes)
    if cfg is SMALL_ITEMS:  # every kind of item came in pieces, and pieces were deleted
        for kind in ("d", "v", "w"):
            assert any(k.startswith(f"3:{kind}:") and k.count(":") == 3 for k, _ in writes), kind
        assert any(k.startswith("3:w:") and v is None for k, v in writes)
    # the items stored in the end: one per piece, none left over from a replaced snapshot
    final: dict[str, Any] = {}
    for k, v in writes:
        if v is None:
            final.pop(k, None)
        else:
            final[k] = v
    header = final["3:w"]
    assert sorted(k for k in final if k.startswith("3:w:")) == sorted(f"3:w:{header['id']}:{i}" for i in range(header["pieces"]))
    full = _drive(PartitionWindows(3, cfg), events)
    for cut in range(len(writes) + 1):
        items: dict[str, Any] = {}
        for k, v in writes[:cut]:
            if v is None:
                items.pop(k, None)
            else:
                items[k] = v
        b = PartitionWindows.restore(3, cfg, copy.deepcopy(items))
        want = states[b.seq]
        for attr in STATE_ATTRS:
            assert getattr(b, attr) == want[attr], (cut, attr)
        # the restored worker goes on (writes included) and ends where an uninterrupted run ends
        b.full_snapshot_ratio = ratio
        b.take_changes()
        since = b.closed_through
        rest = _drive(b, [e for e in events if e[1] > b.offsets[e[0]]])
        assert [p for p in full if p["closed_through"] > since] == rest, cut


def test_dedupe_memory_expires_but_survives_restore() -> None:
    cfg = WindowConfig(window_s=60, allowed_lateness_s=0, dedupe_horizon_s=600)
    pw = PartitionWindows(0, cfg)
    pw.add_backend(0, be("b", T))
    pw.add_platform(0, pe("e", T, order_id="o"))
    pw.take_changes()
    pw.add_backend(1, be("b2", T + 5000))
    pw.add_platform(1, pe("e2", T + 5000))
    pw.close()
    changes = pw.take_changes()
    assert ("meta", "e") not in pw.seen_events
    assert any(k.startswith("0:d:") and v is None for k, v in changes.items())


# ---- stage B --------------------------------------------------------------------------------


def _partials(pw_by_partition: dict[int, PartitionWindows]) -> list[Any]:
    return [p for p in (pw.close() for pw in pw_by_partition.values()) if p is not None]


def _feed(asm: WindowAssembler, partial: Any) -> None:
    """As the worker routes partials: platform leaves only to the owner of their group."""
    for start, group, leaves in split_platform_by_group(partial.platform):
        if asm.owns_group is None or asm.owns_group(group):
            asm.add_platform(partial.partition, start, group, copy.deepcopy(leaves))
    asm.add_marker(partial.partition, partial.closed_through, copy.deepcopy(partial.backend))


def _two_partitions() -> dict[int, PartitionWindows]:
    parts = {0: PartitionWindows(0, CFG), 1: PartitionWindows(1, CFG)}
    parts[0].add_backend(0, be("b1", T + 1, browser="safari", region="eu", value=20.0, denied=True))
    parts[0].add_platform(0, pe("e1", T + 2, browser="safari", region="eu", value=20.0))
    parts[1].add_backend(0, be("b2", T + 3, browser="chrome", region="na", value=30.0))
    parts[1].add_backend(1, be("b3", T + 4, browser="chrome", region="eu", value=5.0))
    parts[1].add_platform(0, pe("e3", T + 5, browser="chrome", region="eu", value=5.0, platform="google_ads"))
    parts[1].add_backend(2, be("l1", T + 6, name="lead", value=None))
    for p, pw in parts.items():  # advance both watermarks past the first window
        pw.add_backend(10, be(f"x{p}", T + 200))
        pw.add_platform(10, pe(f"x{p}", T + 200, platform="tiktok"))
    return parts


def test_assembler_closes_only_when_every_source_reported_and_ignores_duplicates() -> None:
    parts = _two_partitions()
    p0, p1 = _partials(parts)
    asm = WindowAssembler(2, 60)
    _feed(asm, p0)
    assert asm.close_ready() == []  # partition 1 has not reported
    _feed(asm, p0)  # re-sent after a crash: ignored
    _feed(asm, p1)
    closed = asm.close_ready()
    assert closed and closed[0][0].window_start == T
    assert asm.closed_through == T + 120
    _feed(asm, p1)  # too late, already closed
    _feed(asm, p0)
    assert asm.close_ready() == []
    by_key = {w.segment_key: w for w in closed[0]}
    meta = by_key["meta|purchase|*|*"]
    assert (meta.backend_count, meta.backend_value, meta.platform_count, meta.backend_consent_denied) == (3, 55.0, 1, 1)


def test_assembler_rollups_backend_join_and_silent_groups() -> None:
    parts = _two_partitions()
    asm = WindowAssembler(2, 60)
    for partial in _partials(parts):
        _feed(asm, partial)
    first = asm.close_ready()[0]
    by_key = {w.segment_key: w for w in first}
    levels = {w.segment_key: w.level for w in first}
    assert levels["meta|purchase|safari|eu"] == "leaf"
    assert levels["meta|purchase|safari|*"] == "platform_browser"
    assert levels["meta|purchase|*|eu"] == "platform_region"
    assert levels["*|purchase|*|*"] == "backend"
    assert by_key["*|purchase|*|*"].backend_count == 3 and by_key["*|lead|*|*"].backend_count == 1
    # every platform group of the event name gets the backend joined at every level
    for platform in ("meta", "google_ads"):
        assert by_key[f"{platform}|purchase|*|*"].backend_count == 3
        assert by_key[f"{platform}|purchase|chrome|*"].backend_count == 2
        assert by_key[f"{platform}|purchase|*|eu"].backend_count == 2
        assert by_key[f"{platform}|purchase|chrome|na"].backend_count == 1
    assert by_key["meta|purchase|safari|*"].platform_count == 1
    assert by_key["meta|purchase|chrome|*"].platform_count == 0
    assert by_key["google_ads|purchase|chrome|eu"].platform_count == 1
    assert by_key["google_ads|purchase|chrome|eu"].platform_value == 5.0
    # tiktok's first data (T+200) has not been closed yet: its group is not known here
    assert "tiktok|purchase|*|*" not in by_key
    # a later window without any data: every known group still gets its window
    for p, pw in parts.items():
        pw.add_backend(20, be(f"y{p}", T + 400))
        pw.add_platform(20, pe(f"y{p}", T + 400, platform="tiktok"))
    for partial in _partials(parts):
        _feed(asm, partial)
    silent = [ws for ws in asm.close_ready() if ws[0].window_start == T + 240][0]
    keys2 = {w.segment_key for w in silent}
    assert {"meta|purchase|*|*", "google_ads|purchase|*|*", "tiktok|purchase|*|*", "*|purchase|*|*"} <= keys2
    assert all(w.platform_count == 0 and w.backend_count == 0 for w in silent)
    # JSON round trip of a closed window
    w = by_key["meta|purchase|safari|eu"]
    assert ClosedWindow.from_dict(orjson.loads(orjson.dumps(w.to_dict()))) == w


def test_assembler_ownership_splits_groups() -> None:
    parts = _two_partitions()
    partials = _partials(parts)
    owned = []
    for k in (0, 1):
        asm = WindowAssembler(2, 60, owns_group=lambda g, k=k: (g.startswith("meta") or g == "*|purchase") == (k == 0))
        for partial in partials:
            _feed(asm, partial)
        owned.append({w.segment_key for w in asm.close_ready()[0]})
    assert "meta|purchase|*|*" in owned[0] and "meta|purchase|*|*" not in owned[1]
    assert "*|purchase|*|*" in owned[0] and "*|purchase|*|*" not in owned[1]
    assert "google_ads|purchase|*|*" in owned[1] and "*|lead|*|*" in owned[1]
    assert not owned[0] & owned[1]


def test_assembler_restore_round_trip() -> None:
    parts = _two_partitions()
    p0, p1 = _partials(parts)
    asm = WindowAssembler(2, 60)
    _feed(asm, p0)
    items = {k: orjson.loads(orjson.dumps(v)) for k, v in asm.take_changes("7:").items() if v is not None}
    restored = WindowAssembler(2, 60)
    restored.restore("7:", items)
    _feed(asm, p1)
    _feed(restored, p1)
    _feed(restored, p0)  # the re-sent partial after a crash
    assert [[w.to_dict() for w in ws] for ws in restored.close_ready()] == \
        [[w.to_dict() for w in ws] for ws in asm.close_ready()]


def test_first_close_emits_the_silent_windows_after_the_data() -> None:
    """Silence is data: when the first close reaches well past the last window with data
    (all input read before the first tick), the empty windows in between must still be
    emitted, as they are when an earlier close happened (timing must not matter)."""
    pw = PartitionWindows(0, CFG)
    pw.add_backend(0, be("a", T + 1))
    pw.add_platform(0, pe("a", T + 2))
    pw.add_backend(1, be("z", T + 630))
    pw.add_platform(1, pe("z", T + 630))
    one_close = WindowAssembler(1, 60)
    _feed(one_close, pw.close())
    starts = [ws[0].window_start - T for ws in one_close.close_ready()]
    assert starts == list(range(0, 600, 60)), (
        "PRODUCT BUG: detectors/windows.py WindowAssembler.close_ready fills empty windows only when "
        f"closed_through != -inf, so the first close skips them for ever; closed window starts: {starts}")


def test_a_far_future_watermark_does_not_materialise_every_empty_window() -> None:
    """A valid event pair with a plausible but far timestamp (30 days ahead here; up to the
    year 2100 is valid) must not make stage B build one window per group for every empty
    window in between: groups silent longer than `group_ttl_s` get none."""
    pw = PartitionWindows(0, CFG)
    pw.add_backend(0, be("a", T + 1))
    pw.add_platform(0, pe("a", T + 2))
    pw.add_backend(1, be("a2", T + 200))
    pw.add_platform(1, pe("a2", T + 200))
    asm = WindowAssembler(1, 60, group_ttl_s=86_400)
    _feed(asm, pw.close())
    asm.close_ready()
    pw.add_backend(2, be("far", T + 30 * 86_400))
    pw.add_platform(2, pe("far", T + 30 * 86_400))
    _feed(asm, pw.close())
    t0 = time.monotonic()
    closed = asm.close_ready()
    elapsed = time.monotonic() - t0
    meta_windows = sum(1 for ws in closed for w in ws if w.segment_key == "meta|purchase|*|*")
    bound = 86_400 // 60 + 2
    assert meta_windows <= bound, (
        f"PRODUCT BUG: WindowAssembler.close_ready built {meta_windows} silent windows of one group "
        f"({len(closed)} windows in {elapsed:.1f} s) for a 30-day jump; a jump to 2099 would be ~40M per group. "
        f"Groups silent longer than group_ttl_s are dropped only after the loop.")


@pytest.mark.parametrize("partition", [0, 5])
def test_closed_window_counts_survive_json(partition: int) -> None:
    pw = PartitionWindows(partition, CFG)
    pw.add_backend(0, be("a", T + 1))
    pw.add_platform(0, pe("a", T + 2))
    pw.add_backend(1, be("b", T + 200))
    pw.add_platform(1, pe("b", T + 200))
    partial = pw.close()
    assert partial is not None and partial.partition == partition
    doc = orjson.loads(orjson.dumps({"b": {str(k): v for k, v in partial.backend.items()}}))
    asm = WindowAssembler(1, 60)
    for start, group, leaves in split_platform_by_group(partial.platform):
        asm.add_platform(0, start, group, orjson.loads(orjson.dumps(leaves)))
    asm.add_marker(0, partial.closed_through, {int(k): v for k, v in doc["b"].items()})
    w = {x.segment_key: x for x in asm.close_ready()[0]}["meta|purchase|*|*"]
    assert (w.backend_count, w.platform_count, w.platform_channels) == (1, 1, {"pixel": 1})


def _partial_messages(n: int = 2, events: int = 300) -> list[tuple[Any, ...]]:
    """The partials of `n` source partitions over a stream, in an order the partials topic
    could deliver them: (kind, partition, ...) as stage B's `process_partials` reads them."""
    parts = {p: PartitionWindows(p, CFG) for p in range(n)}
    msgs: list[tuple[Any, ...]] = []
    for kind, offset, ev in _stream(events):
        p = offset % n
        (parts[p].add_backend if kind == "b" else parts[p].add_platform)(offset, ev)
        for pw in parts.values():
            partial = pw.close()
            if partial is None:
                continue
            partial = orjson.loads(orjson.dumps(partial._asdict(), option=orjson.OPT_NON_STR_KEYS))
            for start, leaves in partial["platform"].items():
                for s, group, part in split_platform_by_group({int(start): leaves}):
                    msgs.append(("platform", pw.partition, s, group, part))
            for start, leaves in partial["backend"].items():
                msgs.append(("backend", pw.partition, int(start), leaves))
            msgs.append(("closed", pw.partition, partial["closed_through"]))
    return msgs


def _apply(asm: WindowAssembler, msg: tuple[Any, ...]) -> None:
    msg = copy.deepcopy(msg)
    if msg[0] == "platform":
        asm.add_platform(*msg[1:])
    elif msg[0] == "backend":
        asm.add_backend(*msg[1:])
    else:
        asm.add_marker(msg[1], msg[2])


def test_assembler_any_prefix_of_the_writes_with_redelivery_publishes_the_same_windows() -> None:
    """Stage B's state is a small meta plus one item per (open window, group): a crash may cut
    its writes anywhere; the partials after the last commit are redelivered; the windows
    published in the end are those of an uninterrupted run, a re-published one identical."""
    msgs = _partial_messages()
    batch = 23
    asm = WindowAssembler(2, 60)
    writes: list[tuple[str, Any]] = []
    batch_end: list[int] = []  # write index after each batch (its offsets commit after that)
    published: list[list[dict[str, Any]]] = []  # windows published by each batch
    for i in range(0, len(msgs), batch):
        for m in msgs[i:i + batch]:
            _apply(asm, m)
        published.append([w.to_dict() for ws in asm.close_ready() for w in ws])
        writes.extend((k, orjson.loads(orjson.dumps(v))) for k, v in asm.take_changes("5:").items())
        batch_end.append(len(writes))
    full = {(w["segment_key"], w["window_start"]): w for ws in published for w in ws}
    assert len(full) > 50 and any(k.startswith("5:o:") and v is None for k, v in writes)
    assert all(k == "5:a" or k.startswith("5:o:") for k, _ in writes)
    for cut in range(len(writes) + 1):
        done = sum(1 for end in batch_end if end <= cut)  # batches whose writes all landed
        items: dict[str, Any] = {}
        for k, v in writes[:cut]:
            if v is None:
                items.pop(k, None)
            else:
                items[k] = v
        b = WindowAssembler(2, 60)
        b.restore("5:", copy.deepcopy(items))
        b.take_changes("5:")
        # published before the crash: every batch up to the one cut (outputs precede state)
        seen = {(w["segment_key"], w["window_start"]): w for ws in published[:done + 1] for w in ws}
        for m in msgs[done * batch:]:
            _apply(b, m)
        for ws in b.close_ready():
            for w in ws:
                d = w.to_dict()
                k = (d["segment_key"], d["window_start"])
                assert seen.setdefault(k, d) == d, (cut, k)
        assert seen == full, cut
