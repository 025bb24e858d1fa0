"""The hostile producer of issue 13 (a script, not a test): a fresh platform and event name on
every platform event, 60,000 over a day (20,000 platform names x 5,000 event names), plus
30,000 backend orders. Prints time and peak RSS of `Backtest` (in this process) and of a live
worker on the embedded broker (until every event is consumed and the day's windows closed).

    .venv/bin/python tests/bench/hostile_cardinality.py
"""

from __future__ import annotations

import asyncio
import resource
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import orjson  # noqa: E402

from detectors.pipeline import Backtest, PipelineConfig  # noqa: E402
from streams.broker import EmbeddedBroker  # noqa: E402
from tests.bench.soak import rss_mb  # noqa: E402
from tests.integration.worker_harness import (  # noqa: E402
    WorkerProcess,
    create_topics,
    flush_messages,
    produce_messages,
    unique_names,
)

T0 = 1767571200.0


def events() -> tuple[list[bytes], list[bytes]]:
    platform = [orjson.dumps({"event_id": f"e{i}", "platform": f"pf{i % 20000}", "event_name": f"ev{i % 5000}",
                              "order_id": f"o{i}", "channel": "capi", "occurred_at": T0 + i * 1.44})
                for i in range(60_000)]
    backend = [orjson.dumps({"event_id": f"o{i}", "type": "order", "order_id": f"o{i}", "occurred_at": T0 + i * 2.88,
                             "value": 10}) for i in range(30_000)]
    return backend, platform


def main() -> int:
    backend, platform = events()
    t = time.monotonic()
    bt = Backtest(PipelineConfig())
    bt.run(backend, platform)
    bt.close_all()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"backtest: {time.monotonic() - t:.1f} s, peak RSS {peak:.0f} MB, {len(bt.windows)} segment windows, "
          f"{len({(w.platform, w.event_name) for w in bt.windows})} (platform, event name) pairs")

    tmp = Path(tempfile.mkdtemp(prefix="gapwatch-hostile-"))
    with EmbeddedBroker(log_path=str(tmp / "broker.log")) as broker:
        names = unique_names("hostile")
        asyncio.run(create_topics(broker.bootstrap, names, partitions=2))
        worker = WorkerProcess(broker.bootstrap, names, tmp / "worker.log", window_s=300, lateness_s=120).start()
        worker.wait_ready(120)
        msgs = [(names["backend"], orjson.loads(v)["order_id"].encode(), v) for v in backend]
        msgs += [(names["platform"], orjson.loads(v)["order_id"].encode(), v) for v in platform]
        msgs += flush_messages(names, T0 + 2 * 86400)
        t = time.monotonic()
        asyncio.run(produce_messages(broker.bootstrap, msgs, partitions=2))
        peak_live = 0.0
        while True:
            assert worker.alive(), worker.log_tail()
            m = worker.metrics()
            peak_live = max(peak_live, rss_mb(worker.proc.pid) if worker.proc else 0.0)
            if m.value("gapwatch_events_consumed_total") >= len(msgs) and m.value("gapwatch_watermark_seconds") >= T0 + 86400:
                break
            if time.monotonic() - t > 600:
                print("live: not done after 600 s")
                break
            time.sleep(0.5)
        print(f"live worker: {time.monotonic() - t:.1f} s from the first produce to every event consumed and the day "
              f"closed, peak RSS {peak_live:.0f} MB, folded events {m.by_label('gapwatch_folded_events_total', 'field')}, "
              f"windows closed {sum(m.by_label('gapwatch_windows_closed_total', 'level').values()):.0f}")
        worker.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
