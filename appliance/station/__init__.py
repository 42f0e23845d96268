"""The central station: reads every bed from the ward broker and never talks to a bedside device directly.

``board`` (what is known about each bed) -> ``table`` (that, as text) -> ``watch`` (the live command);
``bridge`` (scores -> FHIR / HL7 via ``fhir`` and ``hl7``); ``connection`` opens the broker for both.
``web`` is ``neopain station``, the same board as a web page with a history, trends and nurse ratings (sent to
a device as its calibration command, through the broker).
"""
