"""Certificates and users files for the TLS and users tests, made per run (no key is ever
committed), after tests/tls/test_tls.py of the repository.

make_certs(directory) writes, with the openssl command: a CA ("ca") and a second CA the daemon
does not trust ("other_ca"); a server certificate for localhost and 127.0.0.1 ("server"); a
client certificate the CA signed ("client"). Each NAME has NAME.pem and NAME.key.
"""
from __future__ import annotations

import base64
import hashlib
import json
import os
import ssl
import subprocess
from typing import Callable, Dict, List, Optional

from harness import keylockd_path


def _run(*args: str, cwd: str) -> None:
    subprocess.run(args, cwd=cwd, check=True, capture_output=True, timeout=60)


def _make_key_and_csr(cwd: str, name: str, subject: str) -> None:
    _run("openssl", "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
         "-keyout", name + ".key", "-out", name + ".csr", "-subj", subject, cwd=cwd)


def _sign(cwd: str, name: str, ca: str, extensions: str) -> None:
    with open(os.path.join(cwd, name + ".ext"), "w") as f:
        f.write(extensions)
    _run("openssl", "x509", "-req", "-in", name + ".csr", "-CA", ca + ".pem", "-CAkey",
         ca + ".key", "-CAcreateserial", "-out", name + ".pem", "-days", "2", "-extfile",
         name + ".ext", cwd=cwd)


def make_certs(directory: str) -> Callable[[str], str]:
    """Writes the test PKI into ``directory``; returns name -> path ("ca.pem" -> ...)."""
    for ca in ("ca", "other_ca"):
        _run("openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
             "-nodes", "-keyout", ca + ".key", "-out", ca + ".pem", "-days", "2", "-subj",
             "/CN=keylock python test " + ca, cwd=directory)
    _make_key_and_csr(directory, "server", "/CN=server")
    _sign(directory, "server", "ca",
          "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n")
    _make_key_and_csr(directory, "client", "/CN=client")
    _sign(directory, "client", "ca", "extendedKeyUsage=clientAuth\n")
    return lambda name: os.path.join(directory, name)


def tls_args(certs: Callable[[str], str], port: int = 0, mutual: bool = False) -> List[str]:
    """keylockd flags for a TLS listener on 127.0.0.1:port with the server certificate;
    ``mutual``: clients must present a certificate the CA signed."""
    args = ["--listen-tls", f"127.0.0.1:{port}", "--tls-cert-file", certs("server.pem"),
            "--tls-key-file", certs("server.key")]
    if mutual:
        args += ["--tls-ca-file", certs("ca.pem")]
    return args


def client_context(
    certs: Callable[[str], str], ca: str = "ca", cert: Optional[str] = None
) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=certs(ca + ".pem"))
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if cert:
        ctx.load_cert_chain(certs(cert + ".pem"), certs(cert + ".key"))
    return ctx


def hashed_secret(secret: str, iterations: int = 1000) -> str:
    """A users_file secret: pbkdf2-sha256$ITER$SALT_B64$HASH_B64."""
    salt = os.urandom(16)
    digest = hashlib.pbkdf2_hmac("sha256", secret.encode(), salt, iterations)
    return "pbkdf2-sha256$%d$%s$%s" % (
        iterations, base64.b64encode(salt).decode(), base64.b64encode(digest).decode()
    )


def write_users_file(path: str, users: Dict[str, dict]) -> str:
    """Writes a users_file: ``users`` maps a name to {"secret": plain text, "rules": [...]}."""
    doc = {
        "users": [
            {"name": name, "secret": hashed_secret(u["secret"]), "rules": u["rules"]}
            for name, u in users.items()
        ]
    }
    with open(path, "w") as f:
        json.dump(doc, f)
    return path


def daemon_has_users_file() -> bool:
    """Whether this keylockd knows --users-file (the daemon side lands in parallel)."""
    out = subprocess.run([keylockd_path(), "--help"], capture_output=True, text=True, timeout=30)
    return "users-file" in out.stdout + out.stderr
