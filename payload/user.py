"""The end-user node program: enter prompts, stream the answers (``python -m payload.user``).

The sessions themselves live in :mod:`payload.user_node`; this module runs a
job (prompts x repeats, with sampling and concurrency) through them and, for
orchestration, prints token events as JSON lines.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from payload import eventloop
from payload.collector import freeze_loaded
from payload.config import UserConfig, compute_threads
from payload.clock import follow_skew
from payload.node import peak_rss_bytes
from payload.sampling import Sampling
from payload.slices import model_config
from payload.user_node import SessionResult, UserNode


@dataclass(frozen=True)
class Job:
    """What the user node runs: prompts x repeats, with sampling and concurrency."""

    prompts: list[str]
    max_new_tokens: int = 32
    sampling: Sampling = Sampling()
    repeats: int = 1
    concurrency: int = 1
    chat: bool = False
    ignore_eos: bool = False
    wait_nodes_s: float = 300.0
    prefill_chunk: int | None = None  # this job's chunk size (None: the deployment's), to compare without redeploying


async def run_job(config: UserConfig, job: Job, *, jsonl: bool = False) -> list[SessionResult]:
    """Serve, wait for the layer nodes, run every session, print tokens as they come."""
    def emit(record: dict) -> None:
        if jsonl:
            print(json.dumps({"ev": "token", **record}), flush=True)

    if job.prefill_chunk is not None:
        config = dataclasses.replace(config, prefill_chunk=job.prefill_chunk)
    user = UserNode(config, emit=emit)
    user.log.on_failure = lambda reason: print(f"[user] {reason}: sessions stop", file=sys.stderr, flush=True)
    user.log.log("ready", peak_rss_bytes=peak_rss_bytes(), event_loop=eventloop.running(), gc_frozen=freeze_loaded())
    server = await user.serve()
    results: list[SessionResult] = []
    async with server:
        await user.wait_for_nodes(job.wait_nodes_s)
        semaphore = asyncio.Semaphore(max(1, job.concurrency))
        stream = None if jsonl or job.concurrency > 1 else (lambda piece: print(piece, end="", flush=True))

        async def one(index: int, prompt: str, repeat: int) -> SessionResult:
            async with semaphore:
                if jsonl:
                    print(json.dumps({"ev": "session_start", "prompt_index": index, "repeat": repeat}), flush=True)
                res = await user.generate(prompt, max_new_tokens=job.max_new_tokens, sampling=job.sampling,
                                          prompt_index=index, repeat=repeat, stream=stream, chat=job.chat,
                                          ignore_eos=job.ignore_eos)
                if stream:
                    print(flush=True)
                if jsonl:
                    print(json.dumps({"ev": "session_end", "prompt_index": index, "repeat": repeat,
                                      "session": res.session, "text": res.text, "error": res.error}), flush=True)
                return res

        tasks = [one(i, p, r) for r in range(job.repeats) for i, p in enumerate(job.prompts)]
        results = list(await asyncio.gather(*tasks))
    user.log.log("stop", peak_rss_bytes=peak_rss_bytes())
    return results


def prewarm(argv: list[str]) -> None:
    """Import the tokenizer and model family code without starting anything (the local testbed forks after this)."""
    import tokenizers  # noqa: F401  (the fast tokenizer's library)
    from transformers import AutoTokenizer  # noqa: F401

    model_config(UserConfig.load(_parser().parse_args(argv).config).node.model_dir)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="JARVIS end-user node: enter prompts, stream the answers")
    parser.add_argument("--config", required=True, help="user node config JSON written by deploy")
    parser.add_argument("--job", help="job JSON (prompts, max_new_tokens, sampling, repeats, concurrency)")
    parser.add_argument("--prompt", action="append", default=[], help="prompt text (repeatable)")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--jsonl", action="store_true", help="print token events as JSON lines (for orchestration)")
    return parser


def main(argv: list[str] | None = None) -> int:
    follow_skew()
    parser = _parser()
    args = parser.parse_args(argv)
    torch.set_num_threads(compute_threads())
    if args.job:
        data = json.loads(Path(args.job).read_text())
        chunk = data.get("prefill_chunk")
        if chunk is not None and (isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 0):
            parser.error(f"{args.job}: prefill_chunk must be a number of positions >= 0 (0: one frame), "
                         f"got {chunk!r}")
        job = Job(prompts=list(data["prompts"]), max_new_tokens=int(data.get("max_new_tokens", 32)),
                  sampling=Sampling(**data.get("sampling", {})), repeats=int(data.get("repeats", 1)),
                  concurrency=int(data.get("concurrency", 1)), chat=bool(data.get("chat", False)),
                  ignore_eos=bool(data.get("ignore_eos", False)),
                  wait_nodes_s=float(data.get("wait_nodes_s", 300)),
                  prefill_chunk=chunk)
    elif args.prompt:
        job = Job(prompts=args.prompt, max_new_tokens=args.max_new_tokens)
    else:
        parser.error("give --prompt or --job")
    config = UserConfig.load(args.config)
    try:
        loop = eventloop.resolve(config.node.event_loop)
    except ValueError as exc:  # the loop asked for cannot run here: fail at start, saying why
        print(f"[user] {exc}", file=sys.stderr)
        return 3
    results = eventloop.run(run_job(config, job, jsonl=args.jsonl), loop)
    failed = [r for r in results if r.error]
    for r in failed:
        print(f"[user] session {r.session} failed: {r.error}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
