"""`server.tls` and `server.admin_port` in the config (issue 17, items 1 and 3): paths
resolved against the config file, the PEM files read at load time, and every bad file a
located problem naming the file, its line and its key."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from sidecar.config.loader import load_config
from sidecar.errors import ConfigError
from tests.support.certs import Authority

BASE = """\
database: {url: postgresql://localhost/app}
auth: {jwt: {secret: abc}}
collections:
  todos: {table: todo_items, read: "owner_id = :sub"}
server:
  port: 8443
"""


def _load(tmp_path: Path, server: str):  # type: ignore[no-untyped-def]
    path = tmp_path / "sidecar.yaml"
    path.write_text(BASE + textwrap.indent(textwrap.dedent(server), "  "))
    return load_config(path, env={})


def _problems(tmp_path: Path, server: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        _load(tmp_path, server)
    return [str(p) for p in caught.value.problems]


@pytest.fixture
def pki(tmp_path: Path) -> tuple[Authority, Path]:
    ca = Authority(tmp_path, "devices")
    ca.issue(tmp_path / "server", "127.0.0.1", server=True)
    return ca, tmp_path


def test_tls_paths_resolve_against_the_config_file(pki: tuple[Authority, Path]) -> None:
    _, tmp = pki
    config = _load(
        tmp,
        """
        tls: {cert: server.crt, key: server.key, client_ca: devices-ca.crt, bind_claim: device_id}
        admin_port: 9090
        """,
    )
    tls = config.server.tls
    assert tls is not None
    assert tls.cert == str(tmp / "server.crt") and tls.key == str(tmp / "server.key")
    assert tls.client_ca == str(tmp / "devices-ca.crt") and tls.bind_claim == "device_id"
    assert config.server.admin_port == 9090 and config.server.admin_host == "127.0.0.1"


def test_no_tls_and_no_admin_port_by_default(tmp_path: Path) -> None:
    config = _load(tmp_path, "")
    assert config.server.tls is None and config.server.admin_port is None


def test_a_missing_file_is_named_with_its_line_and_key(pki: tuple[Authority, Path]) -> None:
    _, tmp = pki
    problems = _problems(tmp, "tls:\n  cert: server.crt\n  key: nowhere.key\n")
    assert len(problems) == 1, problems
    (problem,) = problems
    assert f"sidecar.yaml:9: server.tls.key: {tmp / 'nowhere.key'}: no such file" in problem


def test_garbage_files_and_a_mismatched_key(pki: tuple[Authority, Path]) -> None:
    ca, tmp = pki
    (tmp / "junk.pem").write_text("not a certificate\n")
    problems = _problems(tmp, "tls:\n  cert: junk.pem\n  key: junk.pem\n  client_ca: junk.pem\n")
    assert any(":8: server.tls.cert:" in p and "no PEM certificate" in p for p in problems)
    assert any(":9: server.tls.key:" in p and "no PEM private key" in p for p in problems)
    assert any(":10: server.tls.client_ca:" in p for p in problems), problems
    other = ca.issue(tmp / "other", "127.0.0.1", server=True)
    problems = _problems(tmp, f"tls:\n  cert: server.crt\n  key: {other.key}\n")
    assert len(problems) == 1 and "server.tls.key:" in problems[0]
    assert "does not match" in problems[0] and "server.crt" in problems[0]


def test_bind_claim_needs_a_client_ca_and_admin_port_its_own_port(
    pki: tuple[Authority, Path],
) -> None:
    _, tmp = pki
    problems = _problems(
        tmp,
        """
        tls: {cert: server.crt, key: server.key, bind_claim: device_id}
        admin_port: 8443
        """,
    )
    assert any("server.tls.bind_claim: needs server.tls.client_ca" in p for p in problems)
    assert any("server.admin_port: 8443 is server.port" in p for p in problems), problems
