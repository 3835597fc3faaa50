"""``wire_dtype: auto``: each node's output dtype from its uplink's configured rate (experiment/wire.py)."""

from __future__ import annotations

import pytest

from experiment.wire import AUTO_COMPRESSED, AUTO_UNCOMPRESSED, MIN_CHUNK, prefill_chunk, uplink_mbit, wire_dtypes
from testbed.interface import HostInfo, TestbedError
from testbed.profiles import profile_to_dict, resolve


def host(index: int, *, link: str | None = None, profile: str | None = None) -> HostInfo:
    extra = {"link": profile_to_dict(resolve(link))} if link else {}
    return HostInfo(f"node{index}", index, f"10.0.0.{index + 1}", "/w", profile=profile, extra=extra)


def test_auto_compresses_what_leaves_by_a_slow_uplink_only():
    hosts = [host(0, link="server"), host(1, link="wifi"), host(2, link="cellular"), host(3, link="server"),
             host(4, profile="cellular"), host(5)]
    assert wire_dtypes(hosts, "auto") == {0: AUTO_UNCOMPRESSED, 1: AUTO_COMPRESSED, 2: AUTO_COMPRESSED,
                                          3: AUTO_UNCOMPRESSED, 4: AUTO_COMPRESSED, 5: AUTO_UNCOMPRESSED}


def test_a_trace_driven_uplink_counts_at_its_mean_rate():
    rate = uplink_mbit(host(1, link="cellular-driving"))
    assert rate is not None and 0.5 < rate < 30
    assert wire_dtypes([host(1, link="cellular-driving")], "auto") == {1: AUTO_COMPRESSED}


def test_a_named_dtype_is_every_nodes_and_an_unknown_one_is_refused():
    hosts = [host(0), host(1, link="cellular")]
    assert wire_dtypes(hosts, "fp8") == {0: "fp8", 1: "fp8"}
    with pytest.raises(TestbedError, match="unknown wire_dtype 'int4'"):
        wire_dtypes(hosts, "int4")


def test_auto_chunks_a_prefill_by_the_slowest_hops_bandwidth_delay_product():
    """Cellular: 2.64 Mbit/s up, 88 ms + the farthest downlink's 130 ms each way: 144 KB a round trip, 112
    positions of Gemma 3 (640 values) in bfloat16, 179 in int8 (804 bytes a position)."""
    hosts = [host(0, link="wifi"), host(1, link="cellular"), host(2, link="server")]
    dtypes = wire_dtypes(hosts, "bfloat16")
    assert prefill_chunk(hosts, dtypes, 640, "auto") == 112
    assert prefill_chunk(hosts, wire_dtypes(hosts, "auto"), 640, "auto") == 179
    assert prefill_chunk([host(0), host(1)], {0: "bfloat16", 1: "bfloat16"}, 640, "auto") == 0, "no rates: off"
    fast = [host(0, link="server"), host(1, link="server")]  # 1000 Mbit/s, a round trip of at least 2 ms
    assert prefill_chunk(fast, wire_dtypes(fast, "bfloat16"), 640, "auto") == 195
    tiny = [host(0, link="cellular")]
    assert prefill_chunk(tiny, {0: "float32"}, 20000, "auto") == MIN_CHUNK, "never below the floor"


@pytest.mark.parametrize("asked,expected", [(0, 0), (64, 64), ("48", 48)])
def test_a_chunk_asked_for_is_used(asked, expected):
    assert prefill_chunk([host(0)], {0: "bfloat16"}, 640, asked) == expected


@pytest.mark.parametrize("asked", [-1, "many", 2.5, True])
def test_a_chunk_that_is_no_number_of_positions_is_refused(asked):
    with pytest.raises(TestbedError, match="prefill_chunk must be auto or a number of positions"):
        prefill_chunk([host(0)], {0: "bfloat16"}, 640, asked)


def test_the_local_testbeds_unshaped_hosts_get_the_defaults(tmp_path, monkeypatch):
    """Loopback hosts have no rate: auto sends them bfloat16 and does not chunk (a CI run failed here: their
    profile label was looked up as a link profile)."""
    from local.testbed import LocalTestbed

    monkeypatch.setenv("JARVIS_STATE", str(tmp_path))
    bed = LocalTestbed("jv-wire-choice")
    hosts = bed.up(2)
    try:
        dtypes = wire_dtypes(hosts, "auto")
        assert dtypes == {0: AUTO_UNCOMPRESSED, 1: AUTO_UNCOMPRESSED, 2: AUTO_UNCOMPRESSED}
        assert prefill_chunk(hosts, dtypes, 640, "auto") == 0
    finally:
        bed.down()
