"""A locked-down mosquitto for the security tests: TLS listener, password file, ACL, no anonymous clients.

Why this shape: it is the deployment issue 8 asks for, so the tests prove the device's behaviour against the
broker policy a hospital would run, not against an open test broker. The throwaway PKI comes from the MQTT
tests' ``make_pki`` (``tests/appliance/mqtt/pki.py``, ``openssl`` CLI: a CA, a server certificate for
127.0.0.1, a client certificate) and a second, unrelated CA stands for "a certificate the device must not
trust".

Users: ``station`` (the central station: reads every bed, is the only one allowed to write ``cmd`` topics and
the delivery confirmations ``confirm/<station-id>``), ``bed-12`` and ``bed-13`` (each writes only its own
score/status/health/vitals and reads only its own ``cmd/#`` and ``confirm/+``, so a bed can neither forge a
confirmation for itself or another bed nor read another bed's). The fixture's plain listener shares the same
global password file and ACL (``per_listener_settings false``), so even the plain port refuses anonymous clients.
"""
from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

from tests.appliance.mqtt.pki import make_pki

SITE = "sec"
BEDS = ("bed-12", "bed-13")
STATION = ("station", "st4tion-pw")
#: Leaves a bed publishes under ``neopain/<site>/<bed>/`` (appliance/mqtt/publisher.py).
BED_LEAVES = ("score", "status", "health", "vitals")


def password(user: str) -> str:
    return f"{user}-pw-0123"


def acl_text(site: str = SITE, beds: tuple[str, ...] = BEDS) -> str:
    """The broker ACL: the station reads all and writes commands and confirmations; a bed writes its own leaves,
    reads its cmd and its confirmations. (A site may tie each station's id to its user instead:
    ``pattern write neopain/+/+/confirm/%u``.)"""
    lines = ["user station", "topic read neopain/#", "topic write neopain/+/+/cmd/#",
             "topic write neopain/+/+/confirm/+", ""]
    for bed in beds:
        lines.append(f"user {bed}")
        lines += [f"topic write neopain/{site}/{bed}/{leaf}" for leaf in BED_LEAVES]
        lines += [f"topic read neopain/{site}/{bed}/cmd/#", f"topic read neopain/{site}/{bed}/confirm/+", ""]
    return "\n".join(lines)


@dataclass(frozen=True)
class SecureBrokerFiles:
    pki: Path
    passwd: Path
    acl: Path
    tls_port: int

    @property
    def ca(self) -> Path:
        return self.pki / "good-ca.crt"

    @property
    def wrong_ca(self) -> Path:
        return self.pki / "other-ca.crt"

    def broker_lines(self) -> list[str]:
        """Extra mosquitto.conf lines for ``broker_factory`` (which adds the plain listener first)."""
        return ["per_listener_settings false", "allow_anonymous false", f"password_file {self.passwd}",
                f"acl_file {self.acl}", f"listener {self.tls_port} 127.0.0.1", f"cafile {self.ca}",
                f"certfile {self.pki}/good-server.crt", f"keyfile {self.pki}/good-server.key"]


def make_secure_broker_files(workdir: Path, tls_port: int) -> SecureBrokerFiles:
    """PKI (two CAs), password file (station + beds) and ACL in ``workdir``."""
    pki = workdir / "pki"
    pki.mkdir(parents=True)
    make_pki(pki, "good")
    make_pki(pki, "other")
    passwd = workdir / "mosquitto.passwd"
    users = [STATION, *((bed, password(bed)) for bed in BEDS)]
    for i, (user, pw) in enumerate(users):
        subprocess.run(["mosquitto_passwd", *(["-c"] if i == 0 else []), "-b", str(passwd), user, pw],
                       check=True, capture_output=True)
    acl = workdir / "mosquitto.acl"
    acl.write_text(acl_text())
    return SecureBrokerFiles(pki=pki, passwd=passwd, acl=acl, tls_port=tls_port)
