"""The words every layer shares: the NIPS scale, its items and the three modalities, defined once.

Why in models/ and why pure Python: models/ is the bottom layer, so the networks, the dataset tools, the
device's pipeline, the MQTT messages, the station and the calibration tools can all import from here
without an upward import, and nothing heavy (torch, numpy) is loaded by ``neopain config check`` or the
station.
"""
from __future__ import annotations

#: NIPS total range (Lawrence et al. 1993): 0-7.
NIPS_MAX = 7
#: ``intensity`` published beside ``nips``: nips x INTENSITY_MAX / NIPS_MAX.
INTENSITY_MAX = 10

#: NIPS items in scoring order with the number of classes of each (cry 0-2, every other item 0-1).
NIPS_ITEMS: tuple[tuple[str, int], ...] = (
    ("facial", 2),
    ("cry", 3),
    ("breathing", 2),
    ("arms", 2),
    ("legs", 2),
    ("arousal", 2),
)

#: The item names of the published messages (the MQTT schema's spelling of the same items).
NIPS_ITEM_MESSAGE_NAMES: dict[str, str] = {
    "facial": "facial_expression",
    "cry": "cry",
    "breathing": "breathing",
    "arms": "arms",
    "legs": "legs",
    "arousal": "state_of_arousal",
}

#: Message item name -> the item's maximum (cry 2, every other item 1; they add up to NIPS_MAX).
NIPS_ITEM_MAXIMA: dict[str, int] = {NIPS_ITEM_MESSAGE_NAMES[name]: classes - 1 for name, classes in NIPS_ITEMS}

#: The three input modalities, in the order of the model's presence mask.
MODALITIES: tuple[str, str, str] = ("video", "audio", "vitals")
