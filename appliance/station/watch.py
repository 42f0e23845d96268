"""``neopain watch``: a live table of every bed on the ward broker, for the central station.

Glue only, so each layer stays testable on its own: ``StationConnection`` feeds every message into a
``Board`` on paho's thread, and this loop draws ``render_table`` of a snapshot every ``--refresh`` seconds (or
once, with ``--once``, for logs and tests). While the broker is gone the title says NOT CONNECTED, so an old
table is never mistaken for a live one; the scores themselves turn stale by age (see ``table``). Each score on
the board is confirmed to its device (``station.confirm``: per bed, retained, at most once a second) unless
``--no-confirm``.

Layout: the wide table when it fits the terminal, else the narrow one that fits it (80 columns on a classic
terminal; ``--narrow`` / ``--wide`` force one). ``--health full`` prints each bed's whole health text on its own
line(s) below the bed; the table's health is grouped (``board.health_view``), so a modality that comes and
goes shows as a count of changes, not as an alarm.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import time
from datetime import datetime, timezone
from typing import Any, Callable

from appliance.mqtt import topics
from appliance.station.board import STALE_AFTER_S, Board, ScorePoint
from appliance.station.confirm import Confirmer, add_confirm_arguments, station_id_from_args
from appliance.station.connection import BrokerOptions, StationConnection, add_broker_arguments
from appliance.station.table import HEALTH_MODES, NARROW_WIDTH, render_table


def add_watch_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``neopain watch``: the broker group plus how to display."""
    add_broker_arguments(parser)
    g = parser.add_argument_group("display")
    g.add_argument("--stale-after", type=float, default=STALE_AFTER_S, metavar="S",
                   help=f"a score older than S seconds is shown as stale (default: {STALE_AFTER_S:g})")
    g.add_argument("--trend-window", type=float, default=300.0, metavar="S",
                   help="trend arrow from the NIPS slope over the last S seconds (default: 300)")
    g.add_argument("--refresh", type=float, default=1.0, metavar="S", help="redraw every S seconds (default: 1)")
    g.add_argument("--once", type=float, metavar="S",
                   help="print the table once after listening S seconds, then exit (for logs and tests)")
    g.add_argument("--plain", action="store_true", help="no ANSI colours or screen redraw")
    size = g.add_mutually_exclusive_group()
    size.add_argument("--narrow", dest="layout", action="store_const", const="narrow", default="auto",
                      help="the narrow table (fits the terminal's width, 80 columns when unknown); default: narrow "
                           "only when the wide one does not fit")
    size.add_argument("--wide", dest="layout", action="store_const", const="wide",
                      help="the wide table (every column) however wide the terminal")
    g.add_argument("--health", choices=HEALTH_MODES, default="short",
                   help="full: each bed's whole health text on its own line(s) below it (default: short, in the "
                        "HEALTH column)")
    g.add_argument("--connect-timeout", type=float, default=10.0, metavar="S",
                   help="give up when the broker does not accept us within S seconds (default: 10)")
    add_confirm_arguments(parser, "watch")


def _confirm_to(confirmer: Confirmer | None) -> Callable[[str, str, ScorePoint, bool], None] | None:
    """The board's ``on_stored``: hand each sequenced score to the confirmer (None: confirmations off)."""
    if confirmer is None:
        return None

    def stored(site: str, bed: str, point: ScorePoint, new: bool) -> None:
        if point.device_id is not None and point.sequence is not None:
            confirmer.stored(site, bed, point.device_id, point.sequence, new=new)

    return stored


def run_watch(args: argparse.Namespace, *, out: Any = None) -> int:
    """``neopain watch``: returns 0, or 2 with one error line when the broker cannot be used."""
    out = out or sys.stdout
    for name in ("stale_after", "trend_window", "refresh", "connect_timeout"):
        if not getattr(args, name) > 0:
            print(f"neopain watch: --{name.replace('_', '-')} must be > 0", file=sys.stderr)
            return 2
    try:
        options = BrokerOptions.from_args(args)
        filters = topics.station_filters(args.site, name="--site")
        station_id = station_id_from_args(args, "watch")
        confirmer = None if station_id is None else Confirmer(
            station_id, lambda topic, payload: conn.publish_retained(topic, payload),
            min_interval_s=args.confirm_interval)
        board = Board(on_stored=_confirm_to(confirmer))
        conn = StationConnection(options, filters, lambda msg, gen: board.ingest(
            msg.topic, bytes(msg.payload), datetime.now(timezone.utc)),
            on_ready=None if confirmer is None else confirmer.resend_all)
    except (ValueError, OSError) as exc:
        print(f"neopain watch: {exc}", file=sys.stderr)
        return 2
    if confirmer is not None:
        confirmer.start()
    conn.start()
    try:
        conn.wait_ready(args.connect_timeout)
    except ConnectionError as exc:
        print(f"neopain watch: {exc}", file=sys.stderr)
        if confirmer is not None:
            confirmer.stop()
        conn.stop()
        return 2

    def draw(color: bool) -> str:
        title = "neopain watch" + ("" if conn.connected.is_set() else f"  [NOT CONNECTED: {conn.error or 'reconnecting'}]")
        width = shutil.get_terminal_size((NARROW_WIDTH, 24)).columns
        return render_table(board.snapshot(), now=datetime.now(timezone.utc), stale_after_s=args.stale_after,
                            trend_window_s=args.trend_window, color=color, title=title, layout=args.layout,
                            width=width, health=args.health)

    try:
        if args.once is not None:
            time.sleep(max(0.0, args.once))
            out.write(draw(color=False))
            out.flush()
            return 0
        while True:
            text = draw(color=not args.plain)
            out.write(text + "\n" if args.plain else "\x1b[H\x1b[2J" + text)
            out.flush()
            time.sleep(args.refresh)
    except KeyboardInterrupt:
        return 0
    finally:
        if confirmer is not None:
            confirmer.stop()  # a last flush while still connected
        conn.stop()
