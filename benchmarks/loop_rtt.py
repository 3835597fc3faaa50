"""Loopback round trip of a decode-sized frame between two processes, on each event loop, side by side.

What a hop costs in the event loop alone, with warm caches (one busy pair of processes, as on testbeds with one
node per device): an echo server process and a client process exchange ``--bytes`` a message, ``--messages``
times per round, with asyncio streams on asyncio's loop and on uvloop's (payload/eventloop.py), alternating.

    .venv/bin/python benchmarks/loop_rtt.py [--rounds 3] [--messages 3000] [--bytes 1565]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import socket
import statistics
import time

from payload import eventloop


async def _echo(port: int, ready) -> None:
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(1 << 16):
            writer.write(data)

    server = await asyncio.start_server(serve, "127.0.0.1", port)
    ready.set()
    async with server:
        await server.serve_forever()


def _server(loop: str, port: int, ready) -> None:
    eventloop.run(_echo(port, ready), loop)


async def _rtts(port: int, messages: int, size: int) -> list[float]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    message, out = b"x" * size, []
    for _ in range(messages):
        start = time.perf_counter()
        writer.write(message)
        got = 0
        while got < size:
            got += len(await reader.read(1 << 16))
        out.append(time.perf_counter() - start)
    writer.close()
    return out


def one_round(loop: str, messages: int, size: int) -> tuple[float, float]:
    """Median and p90 round trip in microseconds, both processes on ``loop``."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    ready = multiprocessing.Event()
    server = multiprocessing.Process(target=_server, args=(loop, port, ready), daemon=True)
    server.start()
    try:
        ready.wait(10)
        rtts = sorted(eventloop.run(_rtts(port, messages, size), loop))
    finally:
        server.terminate()
        server.join()
    return rtts[len(rtts) // 2] * 1e6, rtts[int(len(rtts) * 0.9)] * 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--messages", type=int, default=3000)
    parser.add_argument("--bytes", type=int, default=1565, help="a Gemma 3 decode frame in bfloat16")
    args = parser.parse_args()
    loops = [eventloop.ASYNCIO, eventloop.UVLOOP]
    results: dict[str, list[tuple[float, float]]] = {loop: [] for loop in loops}
    for index in range(args.rounds):
        for loop in loops:
            results[loop].append(one_round(loop, args.messages, args.bytes))
        print(f"round {index + 1}: " + ", ".join(f"{loop} median {results[loop][-1][0]:.0f} us (p90 "
                                                  f"{results[loop][-1][1]:.0f})" for loop in loops), flush=True)
    medians = {loop: statistics.median(r[0] for r in results[loop]) for loop in loops}
    ratios = [a[0] / b[0] for a, b in zip(results[eventloop.UVLOOP], results[eventloop.ASYNCIO])]
    print(f"{args.bytes}-byte round trip between two processes: asyncio {medians['asyncio']:.0f} us, uvloop "
          f"{medians['uvloop']:.0f} us ({medians['uvloop'] / medians['asyncio']:.2f}x; rounds "
          f"{min(ratios):.2f}-{max(ratios):.2f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
