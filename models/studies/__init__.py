"""Benchmarks run end to end through ``neopain synth`` / ``train`` / ``evaluate``: the fusion question
(fusion vs early fusion with power, issue 14 item 5) and the learning curve (item 2).

Why a package of its own: a study is hours of CPU made of many runs, so it must be resumable and its
numbers must come from the same code a user runs. Each study drives the CLI in subprocesses
(:mod:`models.studies.runner`), reads the files those write, and turns them into a Markdown report, PNG
plots and a JSON of every number (:mod:`models.studies.paired` holds the statistics).
"""
