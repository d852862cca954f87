"""Scenarios and their presets as values."""

from __future__ import annotations

import pytest

from ingest.simulator.scenario import (
    CLOSE_FAULTS,
    FAULTS,
    HTTP_FAULTS,
    SCENARIOS,
    Scenario,
    scenario_from_name,
)


def test_presets() -> None:
    assert set(FAULTS) <= set(SCENARIOS)
    assert set(HTTP_FAULTS) | set(CLOSE_FAULTS) <= set(FAULTS)
    assert {"normal", "every_event", "wait", "flood", "silent"} <= set(SCENARIOS)
    assert SCENARIOS["every_event"].every_event and not SCENARIOS["normal"].every_event
    assert all(SCENARIOS[name].name == name for name in SCENARIOS)
    copy = scenario_from_name("normal")
    copy.user_turns.append("mutated")
    assert "mutated" not in SCENARIOS["normal"].user_turns
    assert scenario_from_name("drop").fault == "drop"


def test_a_normal_conversation_ends_with_a_ping_it_must_see_answered() -> None:
    normal = Scenario()
    assert (normal.end, normal.final_ping) == ("close", True)


def test_bad_names_and_values_are_refused() -> None:
    with pytest.raises(ValueError, match="valid: .*http_503"):
        scenario_from_name("explode")
    with pytest.raises(ValueError):
        Scenario(fault="explode")
    with pytest.raises(ValueError):
        Scenario(end="linger")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        Scenario(turn_gap=-1)
    with pytest.raises(ValueError):
        Scenario(flood_ping_every=0)
