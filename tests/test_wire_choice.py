"""``wire_dtype: auto``: each node's output dtype from its uplink's configured rate (experiment/wire.py)."""

from __future__ import annotations

import pytest

from experiment.wire import AUTO_COMPRESSED, AUTO_UNCOMPRESSED, uplink_mbit, wire_dtypes
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
