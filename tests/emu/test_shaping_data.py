"""Shaping as data: the plan, the userspace shaper config, netem argv lists and ssh files, before anything runs."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from testbed.profiles import LinkProfile
from testbed.interface import TestbedError
from emu.plan import make_plan, tag_for
from testbed.profiles import load_profiles, profile_from_dict
from emu.shaper import Direction, DirectionConfig
from emu.shaping import netem_commands, shaper_config
from testbed.netem import netem_argv, netem_limit
from emu.sshd import client_config, endpoints, sshd_config

PLAN = make_plan("jv-demo", 7, 2, Path("/tmp/jarvis-emu/jv-demo"))


class TestPlan:
    def test_user_node_then_layer_nodes_with_addresses_in_the_slot_subnets(self):
        assert [n.name for n in PLAN.nodes] == ["user", "node1", "node2"]
        assert [n.data_ip for n in PLAN.nodes] == ["10.213.7.10", "10.213.7.11", "10.213.7.12"]
        assert [n.mgmt_ip for n in PLAN.nodes] == ["10.214.7.10", "10.214.7.11", "10.214.7.12"]
        assert PLAN.gateway_ip == "10.215.7.2" and PLAN.gateway_root_ip == "10.215.7.1"

    def test_everything_is_named_with_the_prefix_or_its_tag(self):
        assert PLAN.namespaces == ["jv-demo-gw", "jv-demo-user", "jv-demo-node1", "jv-demo-node2"]
        assert all(link.startswith(tag_for("jv-demo")) and len(link) <= 15 for link in PLAN.root_links)

    def test_two_prefixes_get_distinct_root_interfaces(self):
        other = make_plan("jv-other", 8, 2, Path("/tmp/x"))
        assert not set(other.root_links) & set(PLAN.root_links)

    def test_bad_prefix_and_node_count_are_refused(self):
        with pytest.raises(TestbedError, match="bad emu prefix"):
            make_plan("Bad Prefix", 0, 1, Path("/tmp"))
        with pytest.raises(TestbedError, match="1..200 layer nodes"):
            make_plan("jv-x", 0, 0, Path("/tmp"))


class TestShaperConfig:
    def test_one_port_per_node_with_both_directions_and_partition_group(self):
        profiles = {0: load_profiles()["wifi"], 1: load_profiles()["cellular"], 2: load_profiles()["server"]}
        config = shaper_config(PLAN, profiles, {2: 1}, generation=3)
        assert config["generation"] == 3 and config["preserve_order"] is True
        cell = config["ports"][1]
        assert cell["ifname"] == PLAN.nodes[1].root_if and cell["mac"] == PLAN.nodes[1].mac
        assert cell["uplink"] == {"delay_ms": 88.0, "jitter_ms": 0.0, "distribution": "normal", "loss_pct": 0.0,
                                  "rate_mbit": 2.64, "queue_pkts": 130, "trace": None}
        assert cell["downlink"]["delay_ms"] == 130.0
        assert [p["group"] for p in config["ports"]] == [0, 0, 1]


class TestNetem:
    def test_one_direction_as_tc_argv(self):
        profile = LinkProfile("x", delay_ms=20, jitter_ms=2, loss_pct=5, rate_mbit=20, queue_pkts=100)
        assert netem_argv("data0", profile, netns="ns1") == [
            "tc", "-n", "ns1", "qdisc", "replace", "dev", "data0", "root", "netem", "limit", str(netem_limit(profile)),
            "delay", "20000us", "2000us", "distribution", "normal", "loss", "random", "5%", "rate", "20000000bit"]

    def test_limit_covers_the_queue_and_the_packets_in_the_delay_line(self):
        profile = LinkProfile("x", delay_ms=100, rate_mbit=12.112, queue_pkts=50)
        assert netem_limit(profile) == 50 + 100  # 12.112 Mbit/s * 100 ms = 100 full frames in flight

    def test_jitter_without_a_rate_still_keeps_fifo_order_with_a_line_rate(self):
        argv = netem_argv("d", LinkProfile("x", delay_ms=5, jitter_ms=1))
        assert argv[-2:] == ["rate", "10000000000bit"]
        assert "rate" not in netem_argv("d", LinkProfile("x", delay_ms=5, jitter_ms=1), preserve_order=False)

    def test_uplink_on_the_node_side_downlink_on_the_switch_side_and_partition_by_bridge(self):
        profiles = {i: load_profiles()["cellular"] for i in range(3)}
        commands = netem_commands(PLAN, profiles, {1: 1}, only={1})
        node = PLAN.nodes[1]
        assert commands[0][:7] == ["tc", "-n", node.namespace, "qdisc", "replace", "dev", "data0"]
        assert "88000us" in commands[0] and "130000us" in commands[1]
        assert commands[1][:6] == ["tc", "qdisc", "replace", "dev", node.root_if, "root"]
        assert commands[2] == ["ip", "link", "set", node.root_if, "master", f"{PLAN.tag}pb"]
        assert len(commands) == 3


class TestSsh:
    def test_nodes_are_reached_through_the_gateway_with_strict_host_keys(self):
        text = client_config(PLAN, Path("/k/id"), Path("/k/known_hosts"))
        assert "Host jv-demo-node1\n  HostName 10.214.7.11\n  Port 22001\n  ProxyJump jv-demo-gw" in text
        assert "Host jv-demo-gw\n  HostName 10.215.7.2\n  Port 2222" in text
        assert text.count("StrictHostKeyChecking yes") == 4

    def test_each_sshd_has_its_own_port_key_and_pid_file(self):
        gw, user, *_ = endpoints(PLAN)
        config = sshd_config(user, Path("/k/authorized_keys"))
        assert f"Port {user.port}\nListenAddress {user.address}\nHostKey {user.host_key}" in config
        assert "PasswordAuthentication no" in config and "Subsystem sftp internal-sftp" in config
        assert gw.port == 2222 and user.host_key != gw.host_key


class TestDirection:
    """The userspace pipeline with a seeded generator and a caller-supplied clock."""

    def test_delay_only_adds_the_delay(self):
        d = Direction(DirectionConfig(delay_ms=10), random.Random(1))
        assert d.admit(1.0, 100) == pytest.approx(1.010)

    def test_rate_serialises_back_to_back_frames(self):
        d = Direction(DirectionConfig(rate_mbit=8), random.Random(1))  # 1000 bytes take 1 ms at 8 Mbit/s
        assert [d.admit(0.0, 1000) for _ in range(3)] == pytest.approx([0.001, 0.002, 0.003])

    def test_droptail_queue_drops_beyond_the_limit_and_drains_with_time(self):
        d = Direction(DirectionConfig(rate_mbit=8, queue_pkts=2), random.Random(1))
        assert [d.admit(0.0, 1000) is None for _ in range(3)] == [False, False, True]
        assert d.dropped_queue == 1
        assert d.admit(0.0015, 1000) == pytest.approx(0.003)

    def test_jitter_never_reorders_when_preserving_order(self):
        d = Direction(DirectionConfig(delay_ms=10, jitter_ms=5), random.Random(7))
        times = [d.admit(i * 0.0001, 100) for i in range(2000)]
        assert times == sorted(times)

    def test_jitter_may_reorder_when_allowed_and_has_the_configured_spread(self):
        d = Direction(DirectionConfig(delay_ms=50, jitter_ms=5), random.Random(7), preserve_order=False)
        delays = [(d.admit(float(i), 100) - i) * 1000 for i in range(4000)]
        mean = sum(delays) / len(delays)
        std = (sum((x - mean) ** 2 for x in delays) / len(delays)) ** 0.5
        assert mean == pytest.approx(50, abs=0.3) and std == pytest.approx(5, rel=0.05)

    def test_uniform_jitter_stays_within_the_bounds(self):
        d = Direction(DirectionConfig(delay_ms=10, jitter_ms=2, distribution="uniform"), random.Random(3),
                      preserve_order=False)
        delays = [(d.admit(float(i), 100) - i) * 1000 for i in range(1000)]
        assert 8 <= min(delays) and max(delays) <= 12

    def test_loss_drops_the_configured_share(self):
        d = Direction(DirectionConfig(loss_pct=10), random.Random(5))
        dropped = sum(d.admit(float(i), 100) is None for i in range(10000))
        assert 900 <= dropped <= 1100 and d.dropped_loss == dropped

    def test_reconfigure_changes_new_frames_only(self):
        d = Direction(DirectionConfig(delay_ms=10), random.Random(1))
        first = d.admit(0.0, 100)
        d.configure(DirectionConfig(delay_ms=1))
        assert first == pytest.approx(0.010)
        assert d.admit(0.001, 100) == pytest.approx(0.010)  # FIFO: not before the frame ahead of it
        assert d.admit(0.020, 100) == pytest.approx(0.021)


def test_profiles_from_inline_dicts_feed_the_same_pipeline():
    profile = profile_from_dict("p", {"delay_ms": 4, "uplink": {"rate_mbit": 8}})
    config = shaper_config(PLAN, {0: profile, 1: profile, 2: profile}, {}, generation=1)
    up = Direction(DirectionConfig.from_dict(config["ports"][0]["uplink"]), random.Random(1))
    assert up.admit(0.0, 1000) == pytest.approx(0.005)
