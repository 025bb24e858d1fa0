"""The compact dedupe memory (detectors.windows.HashStore, PartitionWindows' hashed ids)."""

from __future__ import annotations

import math

import numpy as np

from detectors.events import BackendEvent, PlatformEvent
from detectors.windows import HashStore, PartitionWindows, WindowConfig

T = 1767571200


def pe(eid: str, ts: float, channel: str = "pixel", order_id: str | None = None) -> PlatformEvent:
    return PlatformEvent("meta", channel, "purchase", eid, order_id, ts, 10.0, "EUR", "chrome", "eu", False, True)


def test_false_positive_rate_matches_the_hash_width() -> None:
    """With b-bit keys and M ids remembered, a new id is taken for a remembered one with
    probability ~M / 2^b. Measured at b = 20 (at 64 bits the rate, M / 2^64, is unmeasurable:
    5e-13 for M = 10 million)."""
    bits = 20

    class Narrow(PartitionWindows):
        hash_mask = (1 << bits) - 1

    pw = Narrow(0, WindowConfig(window_s=60, allowed_lateness_s=0, dedupe_horizon_s=10**9))
    remembered = 20_000
    for i in range(remembered):
        pw.add_platform(i, pe(f"e{i}", T + i * 0.01))
    pw.take_changes()  # merges part of them into the arrays
    trials = 40_000
    false_hits = sum(pw.remembers_event("meta", f"new{i}") for i in range(trials))
    expected = trials * (1 - math.exp(-remembered / 2**bits))  # distinct keys among 20k of 2^20
    assert abs(false_hits - expected) < 4 * math.sqrt(expected), (false_hits, expected)
    # at the default width the same experiment finds none
    full = PartitionWindows(0, WindowConfig(window_s=60, allowed_lateness_s=0, dedupe_horizon_s=10**9))
    for i in range(remembered):
        full.add_platform(i, pe(f"e{i}", T + i * 0.01))
    assert not any(full.remembers_event("meta", f"new{i}") for i in range(trials))
    assert all(full.remembers_event("meta", f"e{i}") for i in range(0, remembered, 97))


def test_a_remembered_event_costs_at_most_150_bytes() -> None:
    pw = PartitionWindows(0, WindowConfig(window_s=300, allowed_lateness_s=0, dedupe_horizon_s=10**9))
    n = 120_000
    for i in range(n):
        pw.add_platform(i, pe(f"evt-{i:09d}", T + i, "pixel" if i % 2 else "capi", order_id=f"ord-{i:09d}"))
        if i % 5000 == 4999:
            pw.take_changes()
    pw.take_changes()
    for store in (pw._seen, pw._orders, pw._backend):
        store.compact()
    held = pw._seen.nbytes() + pw._orders.nbytes() + pw._backend.nbytes()
    assert len(pw.seen_events) == n and len(pw.order_events) == n
    assert held / n <= 150, held / n  # two 20-byte entries per platform event


def test_merges_keep_the_newest_value_and_drop_what_is_before_the_cutoff() -> None:
    st = HashStore(window_s=60)
    st.min_merge = 4
    for k in range(1, 10):
        st.put(k, k, 60 * k)
    st.compact()
    st.put(3, 99, 180)  # updated after the merge: the dict's value wins
    assert st.get(3) == (99, 180)
    st.cutoff = 60 * 5
    assert st.get(4) is None and st.get(5) == (5, 300)  # gone at once, merged or not
    st.compact()
    assert sorted(st.items().items()) == [(k, (k, 60 * k)) for k in range(5, 10)]
    assert st.keys.dtype == np.uint64 and len(st.keys) == 5
    # a batch lookup copies hits into the dict; once complete, a miss there is a miss
    st.prefetch([7, 8, 1000])
    st.complete = True
    assert st.young[7] == (7, 420) and st.get(1000) is None


def test_expired_event_ids_are_forgotten_and_the_restore_agrees() -> None:
    cfg = WindowConfig(window_s=60, allowed_lateness_s=0, dedupe_horizon_s=600)
    pw = PartitionWindows(0, cfg)
    pw.add_platform(0, pe("e", T, order_id="o"))
    items = dict(pw.take_changes())
    assert pw.remembers_event("meta", "e")
    pw.add_platform(1, pe("e2", T + 5000))
    pw.add_backend(0, BackendEvent("b", "purchase", "b", T + 5000, 1.0, "chrome", "eu", False, False))
    assert pw.close() is not None
    items.update(pw.take_changes())
    assert not pw.remembers_event("meta", "e") and pw.remembers_event("meta", "e2")
    restored = PartitionWindows.restore(0, cfg, {k: v for k, v in items.items() if v is not None})
    assert restored.seen_events == pw.seen_events and not restored.remembers_event("meta", "e")


def test_deltas_of_the_string_format_are_read() -> None:
    """State written before the hashed memory (ids as strings) restores to the same memory."""
    cfg = WindowConfig(window_s=60, allowed_lateness_s=0)
    old = {"0:m": {"offsets": {"b": 0, "p": 1}, "max_ts": {"b": T, "p": T}, "closed_through": None, "seq": 1},
           "0:d:1": {"s": [["meta", "e1", ["pixel", "capi"], T]], "o": [["meta", "o1", "e1", T]],
                     "b": [["o1", T]], "c": [["meta|purchase|chrome|eu", "o1", T]]}}
    pw = PartitionWindows.restore(0, cfg, old)
    fresh = PartitionWindows(0, cfg)
    fresh.add_platform(0, pe("e1", T, "pixel", order_id="o1"))
    fresh.add_platform(1, pe("e1", T, "capi", order_id="o1"))
    assert pw.seen_events == fresh.seen_events and pw.order_events == fresh.order_events
    assert pw.conversions == fresh.conversions


def test_more_channels_than_a_mask_of_64_bits_holds() -> None:
    cfg = WindowConfig(window_s=60, allowed_lateness_s=0)
    pw = PartitionWindows(0, cfg)
    for c in range(70):
        pw.add_platform(c, pe(f"e{c}", T, f"ch{c}"))  # 70 channels known here
    pw.add_platform(100, pe("x", T, "ch69"))
    pw.add_platform(101, pe("x", T, "ch68"))  # the pair: masks past bit 64
    for store in (pw._seen, pw._orders, pw._backend):
        store.compact()
    pw.add_platform(102, pe("x", T, "ch69"))  # same channel again: a duplicate trigger
    pw.add_platform(103, pe("x", T, "ch5"))  # a third channel: a pair, not a duplicate
    counters = pw.windows[T]["p"]["meta|purchase|chrome|eu"]
    from detectors.windows import P_DUP, P_PAIR
    assert counters[P_DUP] == 1 and counters[P_PAIR] == 2


def test_merges_agree_with_a_dict_on_random_operations() -> None:
    import random

    for trial in range(100):
        st = HashStore(window_s=60)
        model: dict[int, tuple[int, int]] = {}
        rng = random.Random(trial)
        cut = 0
        for _ in range(300):
            k = rng.randrange(1, 50) if rng.random() < 0.5 else rng.randrange(1, 2**64)
            a, b = rng.randrange(0, 2**64), 60 * rng.randrange(0, 100)
            st.put(k, a, b)
            model[k] = (a, b)
            if rng.random() < 0.1:
                st.compact()
            if rng.random() < 0.05:  # the cutoff only moves forward
                cut = max(cut, rng.randrange(0, 60))
                st.cutoff = 60 * cut
                model = {k: v for k, v in model.items() if v[1] >= st.cutoff}
            if rng.random() < 0.05:
                st.prefetch([*list(model)[:5], rng.randrange(1, 2**64)])
        model = {k: v for k, v in model.items() if v[1] >= st.cutoff}
        assert st.items() == model, trial
        st.compact()
        assert st.items() == model and bool(np.all(st.keys[1:] > st.keys[:-1]))
        assert all(st.get(k) == v for k, v in model.items())
