"""The NIPS items as a nurse reads them (Lawrence et al. 1993): a short label per item and the words of each
level, for the rating form and the chart's item rows. The item names and maxima themselves come from
``models.vocabulary`` (via ``messages.NIPS_ITEMS``); ``check_items`` refuses a form that does not match them.
"""
from __future__ import annotations

from typing import Mapping

from appliance.mqtt.messages import NIPS_ITEMS

#: Message item name -> (label, words of level 0, 1[, 2]).
ITEM_TEXT: dict[str, tuple[str, ...]] = {
    "facial_expression": ("Face", "relaxed muscles", "grimace"),
    "cry": ("Cry", "no cry", "whimper", "vigorous cry"),
    "breathing": ("Breathing", "relaxed", "change in breathing"),
    "arms": ("Arms", "relaxed / restrained", "flexed / extended"),
    "legs": ("Legs", "relaxed / restrained", "flexed / extended"),
    "state_of_arousal": ("Arousal", "sleeping / awake", "fussy"),
}
assert all(len(ITEM_TEXT[name]) == NIPS_ITEMS[name] + 2 for name in NIPS_ITEMS), "ITEM_TEXT must match NIPS_ITEMS"


def label(name: str) -> str:
    return ITEM_TEXT[name][0]


def levels(name: str) -> list[tuple[int, str]]:
    """``[(0, words), (1, words), ...]`` up to the item's maximum."""
    return list(enumerate(ITEM_TEXT[name][1:]))


def check_items(form: Mapping[str, object]) -> dict[str, int]:
    """The six item scores of a rating form as integers within each item's range; ValueError naming the item."""
    items: dict[str, int] = {}
    for name, top in NIPS_ITEMS.items():
        raw = form.get(name)
        if raw is None or raw == "":
            raise ValueError(f"{label(name)} ({name}): not scored; choose 0-{top}")
        try:
            value = int(str(raw))
        except ValueError:
            raise ValueError(f"{label(name)} ({name}): {str(raw)[:20]!r} is not a whole number 0-{top}") from None
        if not 0 <= value <= top:
            raise ValueError(f"{label(name)} ({name}): {value} is outside 0-{top}")
        items[name] = value
    return items
