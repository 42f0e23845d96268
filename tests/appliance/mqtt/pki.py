"""A throwaway PKI from the ``openssl`` CLI: a CA, a server certificate for 127.0.0.1 and a client certificate.

Why a plain module: the MQTT TLS test, the station's HTTPS test and the reliability suite's secure broker all
need the same certificates, so they import ``make_pki`` from here.
"""
from __future__ import annotations

import subprocess
from pathlib import Path


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_pki(d: Path, name: str) -> None:
    """A CA, a server certificate for 127.0.0.1 (IP SAN: hostname checking stays on) and a client certificate."""
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    _openssl("req", "-x509", *ec, "-keyout", f"{name}-ca.key", "-out", f"{name}-ca.crt", "-days", "2",
             "-subj", f"/CN={name} test CA", cwd=d)
    for who, ext in (("server", "subjectAltName=IP:127.0.0.1"), ("client", "extendedKeyUsage=clientAuth")):
        (d / f"{who}.ext").write_text(ext + "\n")
        _openssl("req", *ec, "-keyout", f"{name}-{who}.key", "-out", f"{name}-{who}.csr", "-subj", f"/CN={who}",
                 cwd=d)
        _openssl("x509", "-req", "-in", f"{name}-{who}.csr", "-CA", f"{name}-ca.crt", "-CAkey", f"{name}-ca.key",
                 "-CAcreateserial", "-out", f"{name}-{who}.crt", "-days", "2", "-extfile", f"{who}.ext", cwd=d)
