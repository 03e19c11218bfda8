"""Benchmark: retrieval quality, actor batching throughput, cache hits and HTTP load.

Runs in the calling process (recall, the one-at-a-time baseline, the load clients), in
one local Ray actor (throughput) and in one ``launch.serve_retrieval`` subprocess on
127.0.0.1 (HTTP load), all on CPU. Uses the real MuSiQue sample in ``../shared/data``:

1. Recall@1/3/5 of the gold supporting paragraph for each decomposition step's keyword
   query (``#k`` replaced by step k's answer, ``A >> rel`` as ``A rel``), over the 1,890
   paragraphs of the 100 questions, for MiniLM-dense (FAISS flat) and BM25; then with the
   queries encoded in each other ``--dtypes`` (bf16, int8) against the same float32 index.
2. Queries/s of the ``RetrievalActor`` with 1, 8 and 64 concurrent callers (one query per
   call, distinct queries, cache cleared per level) vs. ``Retriever.search`` called one query
   at a time in this process with the same torch thread count and CPU niceness (both
   printed), same index and encoder, in interleaved rounds (medians); plus 8 callers sending
   8 queries per call (how rollout workers call) and the Ray-free ``BatchingSearcher`` with 64
   callers; CPU ms per query (this process + the actor) beside wall time, the CPU of the
   actor's batch thread (encoder + FAISS) per query and the share of the wall time it spent
   searching. Then the latency of cache hits. ``--interference`` first times the encoder next
   to a CPU-bound and two memory-bound neighbour processes.
3. HTTP load: N clients POSTing Search-R1-style requests for D seconds (cache off unless
   ``--http-cache``): requests, errors, p50/p99 latency.

Exits 1 when no measured encoder dtype reaches ``--min-ratio`` at 64 callers, or any HTTP
request failed. A single query costs about what reading the encoder's weights costs; a batch
of queries, packed several to a row, costs its arithmetic, which bf16 (native with
avx512_bf16/AMX) makes ~3x cheaper than fp32. So bf16 batches best: 6-8x without Ray,
3.5-4.9x through the actor (docs/retrieval.md), whose per-call cost (~0.6 ms of CPU, caller
and actor) needs the second core; fp32 ~3.2x, int8 ~2.7x (its smaller weights speed single
queries up as much).

    python -m benchmarks.bench_retrieval                        # about 5 minutes here
    python -m benchmarks.bench_retrieval --workdir /tmp/bench   # keep and reuse the indexes
    python -m benchmarks.bench_retrieval --skip-http --http-duration 5
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import random
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

if __package__ in (None, ""):  # run as a script: make the checkout importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from retrieval_service.batching import BATCH_SIZE_MEAN, CACHE_HIT_RATE, LATENCY_MS_P50, LATENCY_MS_P99
from retrieval_service.retriever import Retriever, build_retriever
from workers.config import RetrievalConfig

ROOT = Path(__file__).resolve().parents[1]
logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Step:
    """One decomposition step: its keyword query and the id of its gold paragraph."""

    query: str
    gold_id: str


def keyword_query(question: str, answers: list[str]) -> str:
    """``What city did #1 live in`` -> with step 1's answer; ``Hello Love >> performer`` -> ``Hello Love performer``."""
    query = re.sub(r"#(\d+)", lambda m: answers[int(m.group(1)) - 1], question)
    return " ".join(query.replace(">>", " ").split())


def load_musique(data_dir: Path, workdir: Path) -> tuple[Path, list[Step], list[str]]:
    """Write the corpus as JSONL with ids; return it, the steps and a pool of distinct queries."""
    corpus = json.loads((data_dir / "musique_train100_corpus.json").read_text())
    ids = {(p["title"], p["text"]): f"m{i}" for i, p in enumerate(corpus)}
    path = workdir / "musique_corpus.jsonl"
    if not path.exists():
        path.write_text("".join(json.dumps({"id": f"m{i}", "title": p["title"], "text": p["text"]}) + "\n"
                                for i, p in enumerate(corpus)))
    steps, questions = [], []
    for row in json.loads((data_dir / "musique_train100.json").read_text()):
        questions.append(row["question"])
        answers = [s["answer"] for s in row["question_decomposition"]]
        for step in row["question_decomposition"]:
            para = row["paragraphs"][step["paragraph_support_idx"]]
            steps.append(Step(keyword_query(step["question"], answers),
                              ids[(para["title"], para["paragraph_text"])]))
    pool = list(dict.fromkeys([s.query for s in steps] + questions + [p["title"] for p in corpus]))
    return path, steps, pool


def recall_table(retrievers: dict[str, Retriever], steps: list[Step]) -> dict[str, list[float]]:
    print(f"\n== Retrieval quality: MuSiQue train100, {len(steps)} decomposition steps, "
          f"{next(iter(retrievers.values())).num_passages} paragraphs ==")
    print(f"{'method':<24}{'recall@1':>10}{'recall@3':>10}{'recall@5':>10}")
    table = {}
    for name, retriever in retrievers.items():
        results = retriever.search([s.query for s in steps], 5)
        ranks = [[d.id for d in docs] for docs in results]
        table[name] = [float(np.mean([s.gold_id in r[:k] for s, r in zip(steps, ranks, strict=True)]))
                       for k in (1, 3, 5)]
        print(f"{name:<24}" + "".join(f"{v:>10.3f}" for v in table[name]))
    return table


async def _callers(actor: object, queries: list[str], callers: int, topk: int, per_call: int = 1) -> None:
    calls = iter([queries[i:i + per_call] for i in range(0, len(queries), per_call)])

    async def caller() -> None:
        for batch in calls:  # callers share one iterator: each query asked once
            await actor.search.remote(batch, topk)  # type: ignore[attr-defined]

    await asyncio.gather(*(caller() for _ in range(callers)))


@dataclass
class Level:
    """Per-round measurements of one setup: wall queries/s, CPU ms per query, ratio to baseline."""

    name: str
    queries: int
    qps: list[float]
    cpu_ms: list[float]
    ratio: list[float]
    batch: list[float]
    encoder_ms: list[float] = field(default_factory=list)
    encoder_busy: list[float] = field(default_factory=list)


def _one_at_a_time(retriever: Retriever, queries: list[str], topk: int) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    for q in queries:
        retriever.search([q], topk)
    return len(queries) / (time.perf_counter() - wall), 1000 * (time.process_time() - cpu) / len(queries)


def _thread_cpu(_: object) -> tuple[float, float]:
    """Inside the actor (through ``__ray_call__``): CPU seconds of the batch worker thread, which
    runs the encoder and FAISS, and of the whole process. The thread's is NaN without /proc."""
    total = time.process_time()
    for thread in threading.enumerate():
        if thread.name.startswith("retrieval-batch") and thread.native_id is not None:
            try:
                stat = Path(f"/proc/self/task/{thread.native_id}/stat").read_text()
            except OSError:
                break
            utime, stime = stat.rsplit(")", 1)[1].split()[11:13]
            return (int(utime) + int(stime)) / os.sysconf("SC_CLK_TCK"), total
    return float("nan"), total


def _actor_level(group: object, queries: list[str], callers: int, topk: int, per_call: int = 1
                 ) -> tuple[float, float, float, float, float]:
    """Wall queries/s, CPU ms per query (actor + this process), mean batch size, the encoder
    thread's CPU ms per query, and the share of the wall time the actor spent searching."""
    import ray

    actor = group.actors[0]  # type: ignore[attr-defined]
    group.clear_cache()  # type: ignore[attr-defined]
    group.reset_stats()  # type: ignore[attr-defined]
    encoder_cpu, actor_cpu = ray.get(actor.__ray_call__.remote(_thread_cpu))
    wall, cpu = time.perf_counter(), time.process_time()
    asyncio.run(_callers(actor, queries, callers, topk, per_call))
    elapsed = time.perf_counter() - wall
    used = time.process_time() - cpu
    encoder_after, actor_after = ray.get(actor.__ray_call__.remote(_thread_cpu))
    used += actor_after - actor_cpu
    stats = group.stats()  # type: ignore[attr-defined]
    return (len(queries) / elapsed, 1000 * used / len(queries), stats.metrics()[BATCH_SIZE_MEAN],
            1000 * (encoder_after - encoder_cpu) / len(queries), stats.search_seconds / elapsed)


def _inprocess_level(retriever: Retriever, queries: list[str], callers: int, args: argparse.Namespace
                     ) -> tuple[float, float, float, float, float]:
    """The Ray-free BatchingSearcher with ``callers`` coroutines: batching without Ray's per-call cost."""
    from retrieval_service.batching import BatchingSearcher

    searcher = BatchingSearcher(retriever.search, max_wait_ms=2.0, cache_size=0)

    async def run() -> None:
        it = iter(queries)

        async def caller() -> None:
            for q in it:
                await searcher.search([q], args.topk)

        await asyncio.gather(*(caller() for _ in range(callers)))

    wall, cpu = time.perf_counter(), time.process_time()
    asyncio.run(run())
    qps = len(queries) / (time.perf_counter() - wall)
    cpu_ms = 1000 * (time.process_time() - cpu) / len(queries)
    searcher.close()
    stats = searcher.stats()
    return qps, cpu_ms, stats.metrics()[BATCH_SIZE_MEAN], float("nan"), stats.search_seconds * qps / len(queries)


def _niceness(_: object) -> int:
    """This process's CPU niceness (run inside the actor through ``__ray_call__``)."""
    return os.getpriority(os.PRIO_PROCESS, 0)


def throughput(group: object, retriever: Retriever, pool: list[str], args: argparse.Namespace) -> float:
    """Interleaved rounds of every setup (the machine's load drifts); print medians, return the
    median 64-caller speed-up over one-at-a-time."""
    import ray

    queries = random.Random(0).sample(pool, min(len(pool), args.queries_per_level * args.rounds))
    retriever.search(queries[:8], args.topk)  # warm-up both sides
    ray.get(group.actors[0].search.remote(queries[-8:], args.topk))  # type: ignore[attr-defined]
    levels = [Level("Retriever.search, 1 at a time", args.baseline_queries, [], [], [], [])]
    levels += [Level(f"RetrievalActor, {c} callers", args.baseline_queries if c == 1 else args.queries_per_level,
                     [], [], [], []) for c in (1, 8, 64)]
    levels.append(Level("RetrievalActor, 8 x 8 per call", args.queries_per_level, [], [], [], []))
    levels.append(Level("BatchingSearcher (no Ray), 64", args.queries_per_level, [], [], [], []))
    for r in range(args.rounds):
        chunk = queries[r * args.queries_per_level:(r + 1) * args.queries_per_level]
        base_qps, base_cpu = _one_at_a_time(retriever, chunk[:args.baseline_queries], args.topk)
        results = [(base_qps, base_cpu, 1.0, base_cpu, 1.0)]
        results += [_actor_level(group, chunk[:lvl.queries], c, args.topk) for c, lvl in zip((1, 8, 64), levels[1:4],
                                                                                            strict=True)]
        results.append(_actor_level(group, chunk, 8, args.topk, per_call=8))  # rollout workers batch their calls
        results.append(_inprocess_level(retriever, chunk, 64, args))
        for lvl, (qps, cpu_ms, batch, encoder_ms, busy) in zip(levels, results, strict=True):
            lvl.qps.append(qps)
            lvl.cpu_ms.append(cpu_ms)
            lvl.ratio.append(qps / base_qps)
            lvl.batch.append(batch)
            lvl.encoder_ms.append(encoder_ms)
            lvl.encoder_busy.append(busy)
    import torch

    dtype = getattr(retriever, "encoder", None) and retriever.encoder.dtype  # type: ignore[attr-defined]
    actor = group.actors[0]  # type: ignore[attr-defined]
    threads = (torch.get_num_threads(), ray.get(actor.num_threads.remote()))
    nice = (os.getpriority(os.PRIO_PROCESS, 0), ray.get(actor.__ray_call__.remote(_niceness)))
    print(f"\n== Throughput: MiniLM ({dtype}) + FAISS flat, topk={args.topk}, one query per call, "
          f"median of {args.rounds} interleaved rounds; torch threads {threads[0]} here, {threads[1]} in the "
          f"actor; niceness {nice[0]} here, {nice[1]} in the actor ==")
    print(f"{'setup':<32}{'queries':>8}{'queries/s':>11}{'vs 1-at-a-time':>16}{'CPU ms/query':>14}"
          f"{'mean batch':>12}{'encoder ms/q':>14}{'search busy':>13}")
    for lvl in levels:
        print(f"{lvl.name:<32}{lvl.queries:>8}{np.median(lvl.qps):>11.1f}{np.median(lvl.ratio):>15.2f}x"
              f"{np.median(lvl.cpu_ms):>14.2f}{np.median(lvl.batch):>12.1f}"
              f"{_cell(lvl.encoder_ms, '.2f'):>14}{_cell(lvl.encoder_busy, '.0%'):>13}")
    print("  encoder ms/q: CPU of the actor's batch thread (encoder + FAISS) per query; search busy: "
          "share of the wall time spent in searches (the batch thread's critical path)")
    print(f"  per-round speed-up of the actor at 64 callers: {', '.join(f'{x:.2f}x' for x in levels[3].ratio)}; "
          f"one-at-a-time per round: {', '.join(f'{x:.0f}' for x in levels[0].qps)} q/s")
    return float(np.median(levels[3].ratio))


def _cell(values: list[float], spec: str) -> str:
    """Median of a column, or '-' where it was not measured."""
    return "-" if np.isnan(values).any() else format(float(np.median(values)), spec)


_NEIGHBOURS = {
    "alone": None,
    "next to a Python loop": "while True: pass",
    "next to a 24 MB stream": "import numpy as np\na = np.ones(3 << 20)\nwhile True: a.sum()",
    "next to a 256 MB stream": "import numpy as np\na = np.ones(32 << 20)\nwhile True: a.sum()",
}


def interference(retriever: Retriever, pool: list[str], args: argparse.Namespace) -> None:
    """Encoder cost per query with another process busy on the other core: how much a
    neighbour's use of the shared cache and memory bandwidth slows the batch thread."""
    import torch

    torch.set_num_threads(args.actor_cpus)  # as the actor's batch thread runs
    queries = random.Random(1).sample(pool, min(len(pool), 256))
    retriever.search(queries[:32], args.topk)
    print(f"\n== Encoder cost next to other work (ms per query, wall, {len(queries)} queries) ==")
    print(f"{'':<26}{'batches of 32':>15}{'one at a time':>15}")
    for name, code in _NEIGHBOURS.items():
        neighbour = subprocess.Popen([sys.executable, "-c", code]) if code else None
        try:
            time.sleep(0.5 if code else 0.0)
            cost = []
            for size, n in ((32, len(queries)), (1, 64)):
                start = time.perf_counter()
                for i in range(0, n, size):
                    retriever.search(queries[i:i + size], args.topk)
                cost.append(1000 * (time.perf_counter() - start) / n)
        finally:
            if neighbour is not None:
                neighbour.kill()
                neighbour.wait()
        print(f"{name:<26}{cost[0]:>15.3f}{cost[1]:>15.3f}")


def cache_latency(group: object, pool: list[str], args: argparse.Namespace) -> None:
    import ray

    actor = group.actors[0]  # type: ignore[attr-defined]
    queries = pool[:200]
    ray.get(actor.search.remote(queries, args.topk))  # now all cached
    group.reset_stats()  # type: ignore[attr-defined]
    lat = []
    for q in queries:
        start = time.perf_counter()
        ray.get(actor.search.remote([q], args.topk))
        lat.append(1000 * (time.perf_counter() - start))
    inside = group.metrics()  # type: ignore[attr-defined]
    print(f"\n== Cache hits ({len(queries)} repeated queries, hit rate {inside[CACHE_HIT_RATE]:.2f}) ==")
    print(f"through Ray (caller -> actor -> caller): p50 {np.percentile(lat, 50):.2f} ms, "
          f"p99 {np.percentile(lat, 99):.2f} ms")
    print(f"inside the actor:                       p50 {inside[LATENCY_MS_P50]:.3f} ms, "
          f"p99 {inside[LATENCY_MS_P99]:.3f} ms")


def run_actor(cfg: RetrievalConfig, pool: list[str], args: argparse.Namespace) -> dict[str, float]:
    """Throughput per encoder dtype (same index, same encoder weights), then cache-hit latency."""
    import ray
    import torch

    from actors.cluster import init_ray
    from actors.retrieval import RetrievalGroup
    from workers.config import ClusterConfig

    # Same intra-op threads on both sides (the actor sets its own from retrieval.num_cpus), and
    # the same CPU priority: Ray starts workers at niceness 15 (RAY_worker_niceness), which on a
    # machine shared with other jobs slows the actor and not this process's one-at-a-time loop.
    torch.set_num_threads(args.actor_cpus)
    os.environ["RAY_worker_niceness"] = str(os.getpriority(os.PRIO_PROCESS, 0))
    init_ray(ClusterConfig(num_cpus=max(2, args.actor_cpus), loopback=True), logging_level="WARNING")
    ratios = {}
    try:
        for dtype in args.dtypes:
            dcfg = replace(cfg, encoder_dtype=dtype, num_cpus=args.actor_cpus)
            group = RetrievalGroup(dcfg, device="cpu", num_replicas=1)
            group.wait_ready(timeout=600)
            ratios[dtype] = throughput(group, build_retriever(dcfg, device="cpu"), pool, args)
            if dtype == args.dtypes[-1]:
                cache_latency(group, pool, args)
            group.shutdown()
        return ratios
    finally:
        ray.shutdown()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_healthy(proc: subprocess.Popen, url: str, timeout: float = 300) -> None:
    import requests

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with {proc.returncode}")
        try:
            requests.get(f"{url}/health", timeout=2)
            return
        except requests.ConnectionError:
            time.sleep(0.5)
    raise RuntimeError("the server did not come up")


def _load_clients(url: str, pool: list[str], args: argparse.Namespace) -> tuple[list[float], list[str], float]:
    import requests

    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    stop_at = time.monotonic() + args.http_duration

    def client(seed: int) -> None:
        rng, session = random.Random(seed), requests.Session()
        while time.monotonic() < stop_at:
            payload = {"queries": [rng.choice(pool)], "topk": args.topk, "return_scores": True}
            start = time.perf_counter()
            try:
                response = session.post(f"{url}/retrieve", json=payload, timeout=30)
                ok = response.status_code == 200 and len(response.json()["result"][0]) == args.topk
                problem = None if ok else f"HTTP {response.status_code}: {response.text[:100]}"
            except (requests.RequestException, ValueError, KeyError) as exc:
                problem = repr(exc)
            with lock:
                latencies.append(1000 * (time.perf_counter() - start))
                if problem:
                    errors.append(problem)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(args.http_clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return latencies, errors, time.perf_counter() - start


def http_load(index_dir: Path, pool: list[str], args: argparse.Namespace) -> int:
    """Serve the dense index from a subprocess on 127.0.0.1 and load it; return the error count."""
    import requests

    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "launch.serve_retrieval", f"retrieval.index_dir={index_dir}",
           f"server.port={port}", "server.host=127.0.0.1", f"retrieval.cache_size={100000 if args.http_cache else 0}"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_healthy(proc, url)
        latencies, errors, elapsed = _load_clients(url, pool, args)
        server = requests.get(f"{url}/metrics", timeout=10).json()
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
    print(f"\n== HTTP load: {args.http_clients} clients x {args.http_duration:.0f} s on 127.0.0.1, "
          f"1 query/request, topk={args.topk}, cache {'on' if args.http_cache else 'off'} ==")
    print(f"requests {len(latencies)}, errors {len(errors)}, {len(latencies) / elapsed:.1f} req/s, "
          f"latency p50 {np.percentile(latencies, 50):.1f} ms, p99 {np.percentile(latencies, 99):.1f} ms, "
          f"server mean batch {server[BATCH_SIZE_MEAN]:.1f}")
    print(f"server-side latency (queue + batch + search): p50 {server[LATENCY_MS_P50]:.1f} ms, "
          f"p99 {server[LATENCY_MS_P99]:.1f} ms")
    for problem in errors[:5]:
        print(f"  error: {problem}")
    return len(errors)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--workdir", type=Path, default=None, help="keep indexes here (default: a temp dir)")
    parser.add_argument("--topk", type=int, default=3)
    parser.add_argument("--actor-cpus", type=int, default=1, help="num_cpus (= torch threads) of the actor")
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16", "int8"],
                        help="encoder dtypes to measure throughput with (retrieval.encoder_dtype)")
    parser.add_argument("--baseline-queries", type=int, default=100, help="one-at-a-time and 1-caller queries")
    parser.add_argument("--queries-per-level", type=int, default=512, help="queries for 8 and 64 callers")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds of every setup")
    parser.add_argument("--http-clients", type=int, default=16)
    parser.add_argument("--http-duration", type=float, default=30.0, help="seconds of HTTP load")
    parser.add_argument("--http-cache", action="store_true", help="keep the server's cache on during the load")
    parser.add_argument("--min-ratio", type=float, default=5.0, help="required speed-up at 64 callers")
    for part in ("recall", "throughput", "http"):
        parser.add_argument(f"--skip-{part}", action="store_true")
    parser.add_argument("--interference", action="store_true",
                        help="also time the encoder next to a CPU-bound and a memory-bound neighbour process")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    tmp = None if args.workdir else tempfile.TemporaryDirectory(prefix="bench-retrieval-")
    workdir = args.workdir or Path(tmp.name)  # type: ignore[union-attr]
    workdir.mkdir(parents=True, exist_ok=True)
    corpus, steps, pool = load_musique(args.data_dir, workdir)
    print(f"load average at start: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs (others' jobs disturb wall times)")
    dense_cfg = RetrievalConfig(corpus_path=str(corpus), index_dir=str(workdir / "dense"))
    start = time.perf_counter()
    dense = build_retriever(dense_cfg, device="cpu", progress=True)  # reused when --workdir has it
    print(f"dense index ready in {time.perf_counter() - start:.1f} s")
    failed = False
    if not args.skip_recall:
        bm25 = build_retriever(RetrievalConfig(method="bm25", corpus_path=str(corpus), index_dir=str(workdir / "bm25")))
        # Other dtypes encode the queries only, against the same (float32-built) index.
        others = {f"minilm-dense {d}": build_retriever(replace(dense_cfg, encoder_dtype=d), device="cpu")
                  for d in args.dtypes if d not in ("auto", "float32")}
        recall_table({"bm25": bm25, "minilm-dense": dense, **others}, steps)
    if args.interference:
        interference(build_retriever(replace(dense_cfg, encoder_dtype=args.dtypes[-1]), device="cpu"), pool, args)
    if not args.skip_throughput:
        ratios = run_actor(dense_cfg, pool, args)
        for dtype, ratio in ratios.items():
            verdict = "ok" if ratio >= args.min_ratio else "below target"
            print(f"batching speed-up at 64 callers, {dtype}: {ratio:.2f}x "
                  f"(target >= {args.min_ratio:.1f}x): {verdict}")
        failed |= max(ratios.values()) < args.min_ratio
    if not args.skip_http:
        failed |= http_load(workdir / "dense", pool, args) > 0
    if tmp is not None:
        tmp.cleanup()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
