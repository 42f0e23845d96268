"""Dataset layout, synthetic neonatal cohort, and the loader that turns recordings into windows.

See docs/dataset.md. ``layout`` validates a dataset on disk, ``synth`` writes a synthetic cohort in
that layout (``neopain synth``), ``loader`` yields aligned, labelled :class:`~models.data.loader.Window`s.
"""

from models.data.layout import DatasetError, Subject, read_dataset
from models.data.loader import NipsLabel, Presence, VitalsSegment, Window, iter_windows, load_recording_windows, load_windows
from models.data.synth import SynthOptions, add_synth_arguments, cli_synth, run_synth, synth_cohort

__all__ = [
    "DatasetError", "Subject", "read_dataset",
    "Window", "NipsLabel", "Presence", "VitalsSegment", "iter_windows", "load_windows", "load_recording_windows",
    "SynthOptions", "synth_cohort", "add_synth_arguments", "run_synth", "cli_synth",
]
