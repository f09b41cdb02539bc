"""`server.tls`'s PEM files, read when the config is loaded: every problem located at the
key that names the file (a missing or unreadable file, no certificate in it, a key that is
not a private key, is encrypted, or does not match the certificate).

`tls_file_problems` is also what the running listener's reload uses to say why new files
were not taken (`sidecar.http.tls`).
"""

from __future__ import annotations

import ssl

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization

from sidecar.config.model import TlsConfig

__all__ = ["tls_file_problems"]


def _read(path: str) -> tuple[bytes | None, str | None]:
    try:
        with open(path, "rb") as f:
            return f.read(), None
    except FileNotFoundError:
        return None, f"{path}: no such file"
    except IsADirectoryError:
        return None, f"{path}: is a directory, not a PEM file"
    except OSError as error:
        return None, f"{path}: cannot be read ({error.strerror or error})"


def _certificates(path: str) -> str | None:
    data, problem = _read(path)
    if data is None:
        return problem
    try:
        x509.load_pem_x509_certificates(data)
    except ValueError:
        return f"{path}: no PEM certificate in it (expected -----BEGIN CERTIFICATE-----)"
    return None


def _private_key(path: str) -> str | None:
    data, problem = _read(path)
    if data is None:
        return problem
    try:
        serialization.load_pem_private_key(data, password=None)
    except TypeError:
        return f"{path}: the key is encrypted; give an unencrypted key (protect the file)"
    except (ValueError, UnsupportedAlgorithm):
        return f"{path}: no PEM private key in it (expected -----BEGIN PRIVATE KEY-----)"
    return None


def tls_file_problems(tls: TlsConfig) -> list[tuple[str, str]]:
    """Problems of the files `tls` names, as (key, message): key is `cert`, `key` or
    `client_ca`. Empty when a server context can be built from them."""
    problems: list[tuple[str, str]] = []
    cert, key = _certificates(tls.cert), _private_key(tls.key)
    if cert:
        problems.append(("cert", cert))
    if key:
        problems.append(("key", key))
    if not cert and not key:
        try:
            ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(tls.cert, tls.key)
        except ssl.SSLError as error:
            reason = error.reason or str(error)
            problems.append(("key", f"{tls.key}: does not match {tls.cert} ({reason})"))
        except OSError as error:  # changed meanwhile
            problems.append(("cert", f"{tls.cert}: {error}"))
    if tls.client_ca is not None:
        ca = _certificates(tls.client_ca)
        if ca:
            problems.append(("client_ca", ca))
    return problems
