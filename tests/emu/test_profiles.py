"""Link profiles as data: the shipped file, user files, inline dicts, validation, --links specs."""

from __future__ import annotations

import pytest

from testbed.profiles import LinkProfile
from testbed.profiles import DuplexProfile, ProfileError, directions, load_profiles, parse_links_spec, profile_from_dict, profile_to_dict, resolve


class TestShipped:
    def test_ships_wifi_cellular_and_server_each_with_a_source(self):
        profiles = load_profiles()
        for name in ("wifi", "cellular", "server"):
            assert isinstance(profiles[name], LinkProfile)
            assert profiles[name].source, f"{name} must cite where its numbers come from"

    def test_wifi_is_flagged_as_folklore(self):
        assert "FOLKLORE" in load_profiles()["wifi"].source

    def test_cellular_uses_pantheon_figures_per_direction(self):
        up, down = directions(load_profiles()["cellular"])
        assert (up.delay_ms, up.rate_mbit, up.queue_pkts) == (88, 2.64, 130)
        assert (down.delay_ms, down.rate_mbit, down.queue_pkts) == (130, 3.04, 426)
        assert "Pantheon" in load_profiles()["cellular"].source

    def test_server_is_gigabit_without_impairment(self):
        server = load_profiles()["server"]
        assert (server.rate_mbit, server.delay_ms, server.loss_pct) == (1000, 0, 0)


class TestUserProfiles:
    def test_a_user_file_adds_and_overrides_by_name(self, tmp_path):
        path = tmp_path / "mine.yaml"
        path.write_text("lab:\n  delay_ms: 5\n  source: my ping\nwifi:\n  delay_ms: 1\n")
        profiles = load_profiles(path)
        assert profiles["lab"].delay_ms == 5 and profiles["lab"].source == "my ping"
        assert profiles["wifi"].delay_ms == 1
        assert "cellular" in profiles

    def test_an_inline_dict_with_per_direction_overrides_becomes_duplex(self):
        profile = resolve({"name": "odd", "delay_ms": 10, "uplink": {"loss_pct": 2}})
        assert isinstance(profile, DuplexProfile)
        up, down = directions(profile)
        assert (up.delay_ms, up.loss_pct, down.delay_ms, down.loss_pct) == (10, 2, 10, 0)

    def test_symmetric_profiles_stay_plain_link_profiles(self):
        assert type(profile_from_dict("s", {"delay_ms": 3})) is LinkProfile

    def test_to_dict_round_trips(self):
        cellular = load_profiles()["cellular"]
        assert profile_from_dict("cellular", profile_to_dict(cellular)) == cellular


class TestValidation:
    @pytest.mark.parametrize("fields, words", [
        ({"delay": 5}, "unknown keys ['delay']"),
        ({"delay_ms": -1}, "delay_ms must be a number"),
        ({"loss_pct": 150}, "loss_pct must be a number between 0.0 and 100.0"),
        ({"rate_mbit": 0}, "rate_mbit must be > 0"),
        ({"queue_pkts": 2.5}, "queue_pkts must be an integer"),
        ({"distribution": "pareto"}, "distribution must be one of"),
        ({"uplink": {"rate": 1}}, "unknown uplink keys ['rate']"),
        ({"jitter_ms": "2ms"}, "jitter_ms must be a number"),
    ])
    def test_bad_fields_are_named_in_the_error(self, fields, words):
        with pytest.raises(ProfileError, match="profile 'bad'") as err:
            profile_from_dict("bad", fields)
        assert words in str(err.value)

    def test_unknown_profile_lists_the_known_ones(self):
        with pytest.raises(ProfileError, match=r"unknown link profile 'lte'; known: \[.*'wifi'"):
            resolve("lte")

    def test_an_unreadable_or_malformed_file_says_which(self, tmp_path):
        with pytest.raises(ProfileError, match="cannot read profile file"):
            load_profiles(tmp_path / "missing.yaml")
        (tmp_path / "bad.yaml").write_text("- just\n- a list\n")
        with pytest.raises(ProfileError, match="must map profile names"):
            load_profiles(tmp_path / "bad.yaml")


class TestLinksSpec:
    def test_default_is_wifi_for_every_node(self):
        assert {p.name for p in parse_links_spec(None, 3).values()} == {"wifi"}

    def test_indices_and_ranges_override_the_default(self):
        links = parse_links_spec("1=wifi,2=cellular,3-5=server", 5)
        assert [links[i].name for i in range(6)] == ["wifi", "wifi", "cellular", "server", "server", "server"]

    def test_a_bare_name_sets_the_default_anywhere_in_the_list(self):
        links = parse_links_spec("0=cellular,server", 2)
        assert [links[i].name for i in range(3)] == ["cellular", "server", "server"]

    @pytest.mark.parametrize("spec, words", [
        ("7=wifi", "must lie in 0..3"),
        ("3-1=wifi", "must lie in 0..3"),
        ("1:wifi", "bad --links item"),
        ("1=nope", "unknown link profile 'nope'"),
    ])
    def test_bad_specs_are_explained(self, spec, words):
        with pytest.raises(ProfileError, match=words):
            parse_links_spec(spec, 3)
