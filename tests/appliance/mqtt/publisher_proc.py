"""A publisher in its own process, so tests can SIGKILL it (last will, outbox survival across restarts).

Prints one line per event on stdout: ``queued <seq> <message_id>`` per score, ``connected`` when the broker
accepted it, ``done`` after the last score. Then it idles until killed.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from appliance.mqtt.publisher import ConnectionState, Publisher, PublisherConfig


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--outbox", type=Path, required=True)
    ap.add_argument("--count", type=int, default=0)
    ap.add_argument("--interval", type=float, default=0.0)
    ap.add_argument("--device", default="bed-proc")
    args = ap.parse_args()

    cfg = PublisherConfig(host="127.0.0.1", port=args.port, site="test", bed="b1", device_id=args.device,
                          outbox_path=args.outbox, reconnect_min_s=1, reconnect_max_s=1, health_interval_s=60,
                          score_expiry_s=60.0)
    pub = Publisher(cfg)
    pub.start()
    reported = False
    for i in range(args.count):
        msg = pub.publish_score(
            window_start_ns=i * 2_000_000_000, window_end_ns=i * 2_000_000_000 + 1, nips=3.5, confidence=0.8,
            modalities={"video": {"used": True, "weight": 1.0}}, model_version="m1", calibration_version="c1",
            latency_ms={"inference": 1.0},
        )
        print(f"queued {msg['sequence']} {msg['message_id']}", flush=True)
        if not reported and pub.state is ConnectionState.CONNECTED:
            print("connected", flush=True)
            reported = True
        time.sleep(args.interval)
    print("done", flush=True)
    while True:
        if not reported and pub.state is ConnectionState.CONNECTED:
            print("connected", flush=True)
            reported = True
        time.sleep(0.05)


if __name__ == "__main__":
    sys.exit(main())
