"""payload/eventloop.py: which loop a node runs on, and a clear refusal of one it cannot run."""

from __future__ import annotations

import asyncio
import importlib.util

import pytest

from payload import eventloop
from payload.config import NodeConfig


def test_auto_is_uvloop_where_installed_and_each_choice_runs_on_its_loop():
    assert importlib.util.find_spec("uvloop") is not None, "uvloop is a payload dependency (pyproject.toml)"
    assert eventloop.resolve("auto") == "uvloop"

    async def which() -> str:
        await asyncio.sleep(0)
        return eventloop.running()

    assert eventloop.run(which(), "asyncio") == "asyncio"
    assert eventloop.run(which(), "uvloop") == "uvloop"
    assert eventloop.run(which()) == "uvloop"


def test_without_uvloop_auto_falls_back_and_asking_for_it_is_refused(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "uvloop" else real(name, *a))
    assert eventloop.resolve("auto") == "asyncio"
    with pytest.raises(ValueError, match="uvloop asked for, but uvloop is not installed"):
        eventloop.resolve("uvloop")


def test_an_unknown_loop_is_refused_before_anything_runs():
    async def never() -> None:
        raise AssertionError("must not start")

    with pytest.raises(ValueError, match="unknown event_loop 'trio'"):
        eventloop.run(never(), "trio")
    config = {"node": 1, "listen": ["127.0.0.1", 1], "peers": {}, "model_dir": "/m", "log_path": "/l",
              "key_hex": "ab" * 32}
    assert NodeConfig.from_dict(config).event_loop == "auto"
    with pytest.raises(ValueError, match="event_loop 'trio' is none of auto, asyncio, uvloop"):
        NodeConfig.from_dict({**config, "event_loop": "trio"})
