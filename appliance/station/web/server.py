"""``neopain station run`` (the web station) and ``neopain station user`` (its users).

Glue only: the broker connection of ``neopain watch`` (``station.connection``: same options, TLS and
credentials), a ``Board``, the history, the users, the live hub and the FastAPI app, served by uvicorn.
Binds 127.0.0.1 unless ``--bind`` says otherwise; serves HTTPS when ``--https-cert``/``--https-key`` are given
(then the session cookie is ``Secure``). Passwords are read from the terminal (or the first line of stdin),
never from the command line, where other users could see them in the process list.
"""
from __future__ import annotations

import argparse
import getpass
import logging
import os
import sys
import threading
from pathlib import Path
from typing import Any

from appliance.config import ConfigError, station_key_file
from appliance.mqtt import topics
from appliance.station.board import STALE_AFTER_S, Board
from appliance.station.confirm import Confirmer, add_confirm_arguments, station_id_from_args
from appliance.station.connection import BrokerOptions, StationConnection, add_broker_arguments

log = logging.getLogger(__name__)

DEFAULT_STATE_DIR = Path("/var/lib/neopain-station")
DEFAULT_HTTP_PORT = 8080
HISTORY_FILE, USERS_FILE = "history.sqlite3", "users.sqlite3"
#: How long the broker keeps the station's subscription and queues scores while the station is away.
PERSISTENT_SESSION_S = 24 * 3600


def _state_dir_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR,
                        help=f"where the history and the users are kept (default {DEFAULT_STATE_DIR})")


# ------------------------------------------------------------------------------------------------- users
def add_user_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=("add", "passwd", "remove", "list"),
                        help="add a user, change a password, remove a user, or list the users")
    parser.add_argument("name", nargs="?", help="the user name (recorded as the rater of that user's ratings)")
    _state_dir_argument(parser)


def read_new_password(name: str, stream: Any = None) -> str:
    """From the terminal, asked twice; else the first line of stdin (for scripts: ``... < file``)."""
    stream = stream or sys.stdin
    if stream.isatty():
        first = getpass.getpass(f"password for {name}: ")
        if getpass.getpass("again: ") != first:
            raise ValueError("password: the two entries differ")
        return first
    line = stream.readline()
    if not line:
        raise ValueError("password: stdin is empty (give the password on the first line, or run in a terminal)")
    return line.rstrip("\r\n")


def run_user(args: argparse.Namespace) -> int:
    """``neopain station user add|passwd|remove|list [NAME]``: exit 0, or 2 with one line naming the problem."""
    from appliance.station.web.auth import UserError, UserStore, check_name

    os.umask(0o077)
    if args.action != "list" and not args.name:
        print(f"neopain station user {args.action}: NAME is required", file=sys.stderr)
        return 2
    try:
        if args.name:
            check_name(args.name)
        users = UserStore(Path(args.state_dir) / USERS_FILE)
    except (UserError, OSError) as exc:
        print(f"neopain station user: {exc}", file=sys.stderr)
        return 2
    try:
        if args.action == "list":
            print("\n".join(users.names()) or "(no users)")
            return 0
        if args.action == "remove":
            users.remove(args.name)
        else:
            password = read_new_password(args.name)
            (users.add if args.action == "add" else users.set_password)(args.name, password)
    except (UserError, ValueError) as exc:
        print(f"neopain station user {args.action}: {exc}", file=sys.stderr)
        return 2
    finally:
        users.close()
    done = {"add": "added", "passwd": "password changed", "remove": "removed"}[args.action]
    print(f"user {args.name}: {done} ({users.path})")
    return 0


# ------------------------------------------------------------------------------------------------- server
def add_station_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``neopain station run``: the broker group of ``watch``, the web server, the history."""
    from appliance.station.web.history import DEFAULT_RETENTION_H

    add_broker_arguments(parser)
    parser.add_argument("--client-id", help="MQTT client id; enables a persistent session, so scores published "
                                            "while the station is down are delivered when it returns")
    g = parser.add_argument_group("web server")
    g.add_argument("--bind", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    g.add_argument("--http-port", type=int, default=DEFAULT_HTTP_PORT,
                   help=f"port to listen on (default {DEFAULT_HTTP_PORT})")
    g.add_argument("--https-cert", help="certificate (PEM) for HTTPS, with --https-key; the session cookie is then "
                                        "Secure")
    g.add_argument("--https-key", help="private key (PEM) of --https-cert")
    s = parser.add_argument_group("station")
    _state_dir_argument(s)
    s.add_argument("--retention-hours", type=float, default=DEFAULT_RETENTION_H, metavar="H",
                   help=f"keep the score history this long (default {DEFAULT_RETENTION_H:g} h; charts show up to 24 h)")
    s.add_argument("--stale-after", type=float, default=STALE_AFTER_S, metavar="S",
                   help=f"a score older than S seconds is shown as stale (default {STALE_AFTER_S:g})")
    s.add_argument("--command-key-file", metavar="FILE",
                   help="the station key (hex, 0600; the devices' mqtt.command_key_file): ratings are sent signed")
    s.add_argument("--patients", metavar="DB", help="the patient registry of `neopain adt` (bed -> patient), "
                                                    "read to show each bed's patient")
    s.add_argument("--connect-timeout", type=float, default=10.0, metavar="S",
                   help="give up when the broker does not accept us within S seconds (default: 10)")
    add_confirm_arguments(parser, "station")


def _patient_lookup(path: str | None) -> Any:
    """``() -> {"site/bed": PatientView}`` from the ADT registry, or None without ``--patients``."""
    if not path:
        return None
    from appliance.station.patients import PatientRegistry
    from appliance.station.web.view import PatientView

    registry = PatientRegistry(path)

    def lookup() -> dict[str, PatientView]:
        return {bed: PatientView(p.display(), p.mrn) for bed, p in registry.assignments().items()}

    return lookup


def run_station(args: argparse.Namespace) -> int:
    """``neopain station run``: serve until SIGINT/SIGTERM; 2 with one error line for bad options or a broker
    that cannot be used."""
    import uvicorn

    from appliance.station.web.app import Station, create_app
    from appliance.station.web.auth import UserStore
    from appliance.station.web.commands import send
    from appliance.station.web.history import HistoryStore
    from appliance.station.web.ingest import Ingest
    from appliance.station.web.live import Hub

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    os.umask(0o077)  # history and users: readable by the station's own user only
    for name in ("stale_after", "retention_hours", "connect_timeout"):
        if not getattr(args, name) > 0:
            print(f"neopain station: --{name.replace('_', '-')} must be > 0, got {getattr(args, name)}",
                  file=sys.stderr)
            return 2
    if (args.https_cert is None) != (args.https_key is None):
        print("neopain station: --https-cert/--https-key: give both or neither", file=sys.stderr)
        return 2
    try:
        if not 0 < args.http_port < 65536:
            raise ValueError(f"--http-port: {args.http_port} is not a TCP port")
        for option, value in (("--https-cert", args.https_cert), ("--https-key", args.https_key)):
            if value is not None and not Path(value).is_file():
                raise ValueError(f"{option} {value}: no such file")
        options = BrokerOptions.from_args(args)
        filters = topics.station_filters(args.site, name="--site")
        key = station_key_file(Path(args.command_key_file), "--command-key-file") if args.command_key_file else None
        station_id = station_id_from_args(args, "station", args.client_id)
        state = Path(args.state_dir)
        history = HistoryStore(state / HISTORY_FILE, retention_s=args.retention_hours * 3600.0)
        users = UserStore(state / USERS_FILE)
        patients = _patient_lookup(args.patients)
    except ConfigError as exc:
        print(f"neopain station: --command-key-file: {exc.message}", file=sys.stderr)
        return 2
    except (ValueError, OSError) as exc:
        print(f"neopain station: {exc}", file=sys.stderr)
        return 2
    if not users.names():
        print(f"neopain station: no users in {users.path}; add one first: neopain station user add NAME "
              f"--state-dir {state}", file=sys.stderr)
        return 2
    hub, board = Hub(), Board()
    holder: dict[str, StationConnection] = {}
    confirmer = None if station_id is None else Confirmer(
        station_id, lambda topic, payload: holder["conn"].publish_retained(topic, payload),
        min_interval_s=args.confirm_interval)
    ingest = Ingest(board, history, hub, stale_after_s=args.stale_after, confirmer=confirmer,
                    ack=lambda mid, qos, gen: holder["conn"].ack(mid, qos, gen), patients=patients)
    conn = holder["conn"] = StationConnection(
        options, filters, ingest.on_message, manual_ack=True,
        persistent_session_s=PERSISTENT_SESSION_S if args.client_id else 0,
        on_ready=None if confirmer is None else confirmer.resend_all)
    stopped = threading.Event()

    def stop() -> None:
        """In order: stop taking messages, store what is queued (then ack it), confirm it, close the files."""
        if stopped.is_set():
            return
        stopped.set()
        conn.client.on_message = None
        ingest.stop()
        if confirmer is not None:
            confirmer.stop()
        conn.stop()
        history.close()
        users.close()
        log.info("station: stopped; %d score(s) stored in this run", ingest.stored)

    seeded = ingest.seed()
    ingest.start()
    if confirmer is not None:
        confirmer.start()
    conn.start()
    try:
        conn.wait_ready(args.connect_timeout)
    except ConnectionError as exc:
        print(f"neopain station: {exc}", file=sys.stderr)
        stop()
        return 2
    station = Station(ingest=ingest, history=history, users=users, hub=hub, send=lambda c: send(conn, c),
                      connected=lambda: (conn.connected.is_set(), conn.error), command_key=key,
                      tls=args.https_cert is not None, station_id=station_id, on_shutdown=stop)
    scheme = "https" if station.tls else "http"
    print(f"neopain station: {scheme}://{args.bind}:{args.http_port}/  (broker {options.host}:{options.port}, "
          f"history {history.path}: {seeded} bed(s) restored, ratings {'signed' if key else 'unsigned'})", flush=True)
    server = uvicorn.Server(uvicorn.Config(
        create_app(station), host=args.bind, port=args.http_port, ssl_certfile=args.https_cert,
        ssl_keyfile=args.https_key, log_level="warning", access_log=False, timeout_graceful_shutdown=3,
        lifespan="on"))
    try:
        server.run()
    finally:
        stop()
    return 0 if server.started else 2
