"""``neopain calibrate start|stop|rate``: the engineer's commands over the device's calibration sessions store.

The store itself (:mod:`appliance.scoring.ratings`) lives with the daemon, which records scores and MQTT
ratings into it at run time; these commands open the same SQLite file from a shell on the device.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from appliance.scoring.ratings import DEFAULT_DB, SessionError, SessionStore


# -------------------------------------------------------------------------------------------------- CLI
def _db_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--db", type=Path, default=DEFAULT_DB, help=f"sessions database (default {DEFAULT_DB})")


def add_rate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--nips", type=int, required=True, help="the nurse's NIPS total, 0-7")
    parser.add_argument("--rater", required=True, help="rater id (pseudonymous staff id)")
    parser.add_argument("--at", default=None, help="observation time, ISO 8601 or epoch s (default: now)")
    _db_argument(parser)


def run_rate(args: argparse.Namespace) -> int:
    store = SessionStore(args.db)
    try:
        store.rate(args.nips, args.rater, at=args.at)
    except SessionError as exc:
        print(f"neopain calibrate rate: refused: {exc}", file=sys.stderr)
        return 2
    finally:
        store.close()
    print(f"rating NIPS {args.nips} by {args.rater} stored")
    return 0


def add_start_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--infant", required=True, help="pseudonymous infant id")
    parser.add_argument("--by", default=None, help="who started the session")
    _db_argument(parser)


def run_start(args: argparse.Namespace) -> int:
    store = SessionStore(args.db)
    try:
        s = store.start(args.infant, started_by=args.by)
    except SessionError as exc:
        print(f"neopain calibrate start: refused: {exc}", file=sys.stderr)
        return 2
    finally:
        store.close()
    print(f"session {s.id} started for infant {s.infant}")
    return 0


def add_stop_arguments(parser: argparse.ArgumentParser) -> None:
    _db_argument(parser)


def run_stop(args: argparse.Namespace) -> int:
    store = SessionStore(args.db)
    try:
        s = store.stop()
    except SessionError as exc:
        print(f"neopain calibrate stop: {exc}", file=sys.stderr)
        return 2
    finally:
        store.close()
    print(f"session {s.id} ({s.infant}) stopped")
    return 0
