"""HTTPS on the public listener (`server.tls`), with certificates that rotate without a
restart.

The listening socket keeps one `ssl.SSLContext` for its whole life; its `sni_callback`
(run during every handshake, whether or not the client sent a server name) hands the
connection the newest context. `TlsReloader.watch` checks the files' modification times
every few seconds; when they change and read well (`config.tls.tls_file_problems`), a new
context is built and swapped in: new connections get the new certificate (and client CA),
open ones keep theirs. Files that do not read well (a half-written rotation) are logged and
the current context stays until they change again.

Mutual TLS (`client_ca`): the handshake requires a certificate signed by one of the CA
file's certificates and nothing else (the system's trust store is not loaded).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import ssl

import structlog
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from sidecar.config.model import TlsConfig
from sidecar.config.tls import tls_file_problems

log = structlog.get_logger("sidecar.tls")

TLS_POLL = 3.0  # seconds between checks of the certificate files' modification times

Stamp = tuple[tuple[int, int, int] | None, ...]


def build_context(tls: TlsConfig) -> ssl.SSLContext:
    """A server context from `tls`'s files (TLS 1.2 or later)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(tls.cert, tls.key)
    if tls.client_ca is not None:
        context.load_verify_locations(cafile=tls.client_ca)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def _stamp(tls: TlsConfig) -> Stamp:
    """What changes when a file is rewritten or replaced (a renamed or re-linked file,
    as a Kubernetes secret volume rotates them, has a new inode)."""
    stamps: list[tuple[int, int, int] | None] = []
    for path in (tls.cert, tls.key, tls.client_ca):
        try:
            st = os.stat(path) if path is not None else None
        except OSError:
            st = None
        stamps.append((st.st_mtime_ns, st.st_size, st.st_ino) if st is not None else None)
    return tuple(stamps)


def _describe(path: str) -> dict[str, str]:
    """The serial number and SHA-256 fingerprint of the first certificate of `path`."""
    try:
        with open(path, "rb") as f:
            cert = x509.load_pem_x509_certificates(f.read())[0]
    except (OSError, ValueError):
        return {}
    der = cert.public_bytes(serialization.Encoding.DER)
    return {"serial": format(cert.serial_number, "x"), "sha256": hashlib.sha256(der).hexdigest()}


class TlsReloader:
    """The listener's context (`context`) and the newest one built from the files."""

    def __init__(self, tls: TlsConfig) -> None:
        self.tls = tls
        self._stamp = _stamp(tls)
        self.context = build_context(tls)
        self.current = self.context
        self.context.sni_callback = self._pick
        self.reloads = 0

    def _pick(self, ssl_object: ssl.SSLObject, server_name: str | None, _: ssl.SSLContext) -> None:
        current = self.current
        if ssl_object.context is not current:
            ssl_object.context = current

    def check(self) -> bool:
        """Build and swap in a new context when the files changed and read well."""
        stamp = _stamp(self.tls)
        if stamp == self._stamp:
            return False
        self._stamp = stamp
        problems = tls_file_problems(self.tls)
        try:
            if problems:
                raise ValueError("; ".join(f"server.tls.{key}: {msg}" for key, msg in problems))
            context = build_context(self.tls)
        except (OSError, ssl.SSLError, ValueError) as error:
            log.error(
                "the TLS files changed but cannot be used; the current certificate stays "
                "until they change again",
                problem=str(error),
            )
            return False
        self.current = context
        self.reloads += 1
        log.info("TLS certificate reloaded", cert=self.tls.cert, **_describe(self.tls.cert))
        return True

    async def watch(self, interval: float = TLS_POLL) -> None:
        while True:
            await asyncio.sleep(interval)
            self.check()
