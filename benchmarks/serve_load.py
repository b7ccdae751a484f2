"""Load on ``emotrain serve``: turns/s and latency percentiles at 1, 8 and 32 concurrent clients, with
``--max-batch 1`` and with batching, in one run, on loopback.

Each request is one synthetic conversation (the tests' tiny clips: 32 px video at 4 fps, 0.5-1.5 s; 1-3 turns
each) with its clips, posted to ``/v1/predict/record``; every client sends its requests one after the other
(a closed loop), so at concurrency N the server holds N requests at most. Each (server, concurrency) point
runs ``--requests-per-client`` requests per client after a warm-up, bounded in time by ``--max-seconds``.
The bundle is the tests' stand-in system (the demo's tiny models, seeded, evaluated and fused for real) or
``--bundle``. After each point, the server's own ``/metrics`` split the time: media decoding per request and
model time per batch (both in the inference worker), the rest being HTTP, upload checks and queue hops.

Goal (issue 28): at concurrency 32, batching gives >= 2x the turns/s of ``--max-batch 1``, with p95 latency
no worse than 2x a single request's at concurrency 1.
"""

from __future__ import annotations

import argparse
import json
import re
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))


def metric(text: str, name: str) -> float:
    match = re.search(rf"^{name} (\S+)$", text, re.M)
    return float(match[1]) if match else 0.0


def run_point(port: int, bodies: list[tuple[list, int]], clients: int, per_client: int, max_seconds: float) -> dict:
    """``clients`` threads, each posting ``per_client`` requests in a row; latencies, turns, wall time."""
    from serve_util import post_form

    latencies: list[float] = []
    turns = [0]
    errors: list[int] = []
    lock = threading.Lock()
    deadline = time.monotonic() + max_seconds

    def client(i: int) -> None:
        for k in range(per_client):
            if time.monotonic() > deadline:
                return
            parts, n = bodies[(i * per_client + k) % len(bodies)]
            began = time.perf_counter()
            reply = post_form(port, "/v1/predict/record", parts, timeout=120)
            took = time.perf_counter() - began
            with lock:
                if reply.status == 200:
                    latencies.append(took)
                    turns[0] += n
                else:
                    errors.append(reply.status)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    began = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - began
    lat = np.array(latencies) * 1000
    return {"requests": len(latencies), "turns": turns[0], "wall": wall, "turns_s": turns[0] / wall,
            "p50": float(np.percentile(lat, 50)), "p95": float(np.percentile(lat, 95)),
            "p99": float(np.percentile(lat, 99)), "errors": errors}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", type=Path, help="a bundle (default: build the tests' stand-in system)")
    parser.add_argument("--conversations", type=int, default=40, help="synthesised conversations (the requests cycle)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--max-batch", type=int, default=32, help="the batching server's --max-batch")
    parser.add_argument("--batch-timeout-ms", type=float, default=10.0, help="the batching server's wait")
    parser.add_argument("--requests-per-client", type=int, default=0,
                        help="per point (default: 40 at concurrency 1, 12 at 8, 6 at 32)")
    parser.add_argument("--max-seconds", type=float, default=60.0, help="per point, at most")
    parser.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of the servers (default 1: on a "
                        "small shared machine, spinning OpenMP threads oversubscribe the cores)")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop the servers it started (their own sessions)

    from corpus import TINY_SPEC
    from emotrain.data.pack import PackOptions, pack
    from emotrain.data.splits import SplitRecipe
    from emotrain.data.synthetic import generate_corpus
    from emotrain.labels import load_scheme
    from serve_util import ServerProcess, record_parts, request

    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "corpus"
        generate_corpus(corpus, args.conversations, seed=0, spec=TINY_SPEC, workers=1, progress=False)
        bundle = args.bundle
        if bundle is None:
            from predict_system import make_system

            shards = Path(tmp) / "shards" / "fit"
            pack(PackOptions(source=corpus, out=shards, scheme=load_scheme("ekman7"), recipe=SplitRecipe(0.3, 0.3, 0),
                             workers=1, max_per_shard=8, progress=False))
            bundle = make_system(Path(tmp) / "system", shards)["bundle"]
        records = json.loads((corpus / "train.json").read_text())
        bodies = [(record_parts(corpus, r), len(r["turns"])) for r in records if r["turns"]]
        print(f"{len(bodies)} conversations, {sum(n for _, n in bodies) / len(bodies):.2f} turns each on average; "
              f"bundle {bundle}", flush=True)
        servers = {"max-batch 1": ["--max-batch", "1", "--batch-timeout-ms", "0"],
                   f"max-batch {args.max_batch}, {args.batch_timeout_ms:g} ms":
                       ["--max-batch", str(args.max_batch), "--batch-timeout-ms", str(args.batch_timeout_ms)]}
        rows = []
        for name, flags in servers.items():
            proc = ServerProcess(bundle, Path(tmp) / f"{len(rows)}.log", *flags, "--queue", "256",
                                 env={"OMP_NUM_THREADS": str(args.threads)})
            try:
                proc.wait_ready()
                run_point(proc.port, bodies, 2, 4, 30)  # warm-up
                for clients in args.concurrency:
                    before = request(proc.port, "GET", "/metrics").body.decode()
                    per = args.requests_per_client or {1: 40, 8: 12}.get(clients, 6)
                    point = run_point(proc.port, bodies, clients, per, args.max_seconds)
                    after = request(proc.port, "GET", "/metrics").body.decode()
                    for key, metric_name in (("decode", "emotrain_decode_seconds_sum"),
                                             ("model", "emotrain_model_seconds_sum"),
                                             ("batches", "emotrain_batch_requests_count")):
                        point[key] = metric(after, metric_name) - metric(before, metric_name)
                    rows.append((name, clients, point))
                    print(f"  {name:<22} c={clients:<3} {point['turns_s']:7.1f} turns/s  p50 {point['p50']:7.1f} ms  "
                          f"p95 {point['p95']:7.1f} ms  ({point['requests']} requests, {len(point['errors'])} errors)",
                          flush=True)
            finally:
                proc.stop()
        print()
        print("| server | clients | requests | turns/s | p50 ms | p95 ms | p99 ms | requests/batch | decode s/turn | "
              "model s/turn |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        for name, clients, p in rows:
            per_batch = p["requests"] / p["batches"] if p["batches"] else float("nan")
            print(f"| {name} | {clients} | {p['requests']} | {p['turns_s']:.1f} | {p['p50']:.0f} | {p['p95']:.0f} | "
                  f"{p['p99']:.0f} | {per_batch:.1f} | {p['decode'] / max(p['turns'], 1) * 1000:.1f} ms | "
                  f"{p['model'] / max(p['turns'], 1) * 1000:.1f} ms |")
        top = max(args.concurrency)
        single = next(p for n, c, p in rows if c == min(args.concurrency) and n == "max-batch 1")
        unbatched = next(p for n, c, p in rows if c == top and n == "max-batch 1")
        batched = next(p for n, c, p in rows if c == top and n != "max-batch 1")
        speedup = batched["turns_s"] / unbatched["turns_s"]
        print(f"\nat concurrency {top}: batching gives {speedup:.2f}x the turns/s of --max-batch 1 (goal >= 2x); "
              f"its p95 is {batched['p95'] / single['p50']:.1f}x a single request's latency at concurrency "
              f"{min(args.concurrency)} ({single['p50']:.0f} ms; goal <= 2x)")


if __name__ == "__main__":
    main()
