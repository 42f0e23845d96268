"""The topic vocabulary: device prefixes, station filters and parsing agree, and no name can become a wildcard."""
from __future__ import annotations

import pytest

from appliance.mqtt import topics


def test_bed_prefix_and_leaf() -> None:
    prefix = topics.bed_prefix("nicu-a", "b3")
    assert prefix == "neopain/nicu-a/b3"
    assert topics.topic(prefix, topics.SCORE) == "neopain/nicu-a/b3/score"
    assert topics.topic(prefix, f"{topics.CMD}/#") == "neopain/nicu-a/b3/cmd/#"
    assert [topics.topic(prefix, leaf) for leaf in (topics.STATUS, topics.HEALTH, topics.VITALS)] == [
        "neopain/nicu-a/b3/status", "neopain/nicu-a/b3/health", "neopain/nicu-a/b3/vitals"]


@pytest.mark.parametrize("bad", ["", "a/b", "+", "#", "x+y", "x#", "nul\0"])
def test_a_name_that_is_not_one_level_is_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="site"):
        topics.bed_prefix(bad, "b3")
    with pytest.raises(ValueError, match="bed"):
        topics.bed_prefix("nicu", bad)
    with pytest.raises(ValueError, match="mqtt.site"):
        topics.check_level("mqtt.site", bad)
    with pytest.raises(ValueError, match="--site"):
        topics.station_filters(bad, name="--site")


def test_station_filters() -> None:
    assert topics.station_filters(None) == ["neopain/+/+/score", "neopain/+/+/status", "neopain/+/+/health"]
    assert topics.station_filters("nicu", (topics.SCORE,)) == ["neopain/nicu/+/score"]


def test_parse_topic_reads_back_what_the_device_publishes() -> None:
    prefix = topics.bed_prefix("nicu", "7")
    for leaf in topics.STATION_LEAVES:
        assert topics.parse_topic(topics.topic(prefix, leaf)) == ("nicu", "7", leaf)
    assert topics.parse_topic(topics.topic(prefix, topics.VITALS)) is None
    assert topics.parse_topic(topics.topic(prefix, topics.VITALS), (topics.VITALS,)) == ("nicu", "7", "vitals")
    for other in ("other/nicu/7/score", "neopain//7/score", "neopain/nicu//score", "neopain/nicu/7/cmd/x",
                  "neopain/nicu/7"):
        assert topics.parse_topic(other) is None
