"""A CPU-heavy async pipeline stage, run on the event loop, then in worker processes.

    python examples/cpu_pipeline.py [--docs 64] [--batch 6]

The pipeline fetches documents in batches, parses and scores each batch
(``analyse``: a hand-written tokenizer and a keyword score, pure Python, a few
tens of milliseconds per document) and ranks the results. ``analyse`` is an
``async def`` stage that awaits its fetch and then computes.

Run as is, every batch holds the event loop for as long as it computes.
``@loopwatch.offload("process")`` sends each call to a pool of worker
processes, each running its own event loop, so the same ``async def`` runs
there unchanged and the pipeline's loop stays free. Both runs are watched by
``loopwatch.watch(threshold=0.05)``; the script prints their wall time and what
loopwatch saw on the loop (blocks, time blocked, lag of its heartbeat).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import loopwatch

THRESHOLD = 0.05
WORKERS = min(4, os.cpu_count() or 2)
QUERY = frozenset({"loop", "event", "block", "latency", "worker"})
WORDS = [
    "the", "a", "of", "to", "and", "in", "is", "it", "that", "for", "on", "with", "as", "was",
    "be", "by", "this", "loop", "event", "block", "latency", "worker", "task", "queue",
    "socket", "buffer", "thread", "process", "kernel", "signal", "future", "callback", "timer",
    "request", "response", "handler", "server", "client", "network", "parse", "token", "score",
    "rank", "index",
]
WORDS_PER_DOCUMENT = 24_000


@dataclass(frozen=True)
class Result:
    doc_id: int
    words: int
    score: float
    pid: int = field(compare=False)  # the process that analysed it


async def fetch(doc_id: int) -> str:
    """Stand-in for reading a document from storage: awaits, then returns its text."""
    await asyncio.sleep(0.001)
    rng = random.Random(doc_id)
    return " ".join(rng.choices(WORDS, k=WORDS_PER_DOCUMENT)) + "."


def tokenize(text: str) -> list[str]:
    """Split text into lower-case words, one character at a time (pure Python)."""
    words: list[str] = []
    current: list[str] = []
    for char in text:
        if char.isalnum():
            current.append(char.lower())
        elif current:
            words.append("".join(current))
            current.clear()
    if current:
        words.append("".join(current))
    return words


def score(words: list[str]) -> float:
    """Query terms per word, weighted by how close together they appear."""
    hits, last, closeness = 0, -1, 0.0
    for position, word in enumerate(words):
        if word in QUERY:
            hits += 1
            if last >= 0:
                closeness += 1.0 / (position - last)
            last = position
    return (hits + closeness) / max(1, len(words))


@loopwatch.offload("process", max_workers=WORKERS)
async def analyse(doc_ids: list[int]) -> list[Result]:
    """The pipeline's CPU-heavy stage: fetch a batch of documents, parse and score each."""
    texts = await asyncio.gather(*(fetch(doc_id) for doc_id in doc_ids))
    results = []
    for doc_id, text in zip(doc_ids, texts, strict=True):
        words = tokenize(text)  # where the time goes
        results.append(Result(doc_id, len(words), score(words), os.getpid()))
    return results


async def pipeline(docs: int, batch: int, *, offloaded: bool) -> tuple[float, list[Result]]:
    """Analyse every document, batches concurrently; (wall seconds, results best first)."""
    # analyse.__wrapped__ is the undecorated coroutine function: it runs on this loop.
    stage = analyse if offloaded else analyse.__wrapped__
    batches = [list(range(start, min(start + batch, docs))) for start in range(0, docs, batch)]
    start = time.perf_counter()
    done = await asyncio.gather(*(stage(ids) for ids in batches))
    wall = time.perf_counter() - start
    return wall, sorted((r for results in done for r in results), key=lambda r: -r.score)


async def start_workers() -> float:
    """Start the worker processes before timing anything; seconds it took."""
    start = time.perf_counter()
    # concurrent async calls each go to an idle worker, starting one if needed
    await asyncio.gather(*(analyse([]) for _ in range(WORKERS)))
    return time.perf_counter() - start


def plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def short(site: str | None) -> str:
    if site is None:
        return "<unknown>"
    path, _, line = site.rpartition(":")
    return f"{Path(path).name}:{line}"


def watched_run(label: str, docs: int, batch: int, *, offloaded: bool) -> list[Result]:
    with loopwatch.watch(threshold=THRESHOLD) as session:
        wall, results = asyncio.run(pipeline(docs, batch, offloaded=offloaded))
    report = session.report()
    blocked = sum(b.duration for b in report.blocks)
    main_loop = next((s for s in report.loops if "(MainThread)" in s.loop), None)
    lag = "" if main_loop is None or main_loop.lag_max is None else (
        f", heartbeat lag max {main_loop.lag_max * 1000:.0f} ms"
    )
    print(f"{label}: {wall:.2f} s wall")
    print(f"  loop: {plural(len(report.blocks), 'block')} over {THRESHOLD * 1000:.0f} ms, "
          f"{blocked:.2f} s blocked ({blocked / wall:.0%} of the run){lag}")
    pids = sorted({r.pid for r in results})
    print(f"  analysed in {'this process' if pids == [os.getpid()] else f'processes {pids}'}")
    for site in report.sites[:2]:
        if site.blocks:
            print(f"  site: {short(site.site)} in {site.function}: {plural(site.blocks, 'block')}, "
                  f"max {site.max * 1000:.0f} ms, {site.kind}; {site.advice}")
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--docs", type=int, default=64, help="documents to analyse")
    parser.add_argument("--batch", type=int, default=6, help="documents per analyse() call")
    args = parser.parse_args(argv)
    if args.docs < 1 or args.batch < 1:
        parser.error("--docs and --batch must be at least 1")
    batches = -(-args.docs // args.batch)
    print(f"Analysing {args.docs} documents ({WORDS_PER_DOCUMENT} words each) in {batches} "
          f"batches of {args.batch}; this is process {os.getpid()}.\n")

    inline = watched_run("1. inline, on the event loop", args.docs, args.batch,
                         offloaded=False)
    startup = asyncio.run(start_workers())
    print(f"\n(starting {WORKERS} worker processes took {startup:.2f} s, once per program)")
    offloaded = watched_run(f'2. @loopwatch.offload("process"), {WORKERS} workers',
                            args.docs, args.batch, offloaded=True)

    if inline != offloaded:
        print("\nunexpected: the two runs disagree")
        return 1
    best = ", ".join(f"#{r.doc_id} ({r.score:.4f})" for r in offloaded[:3])
    print(f"\nSame results both ways; best documents: {best}")
    return 0


if __name__ == "__main__":  # worker processes import this file: start nothing at import
    sys.exit(main())
