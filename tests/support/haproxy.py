"""A real load balancer (HAProxy) on loopback in front of several `sidecar run` replicas.

`LoadBalancer(tmp_path, backends)` writes an HAProxy config (HTTP mode, round robin, each
backend checked on `/readyz` every 500 ms, timeouts long enough for long-polls and SSE),
starts `haproxy -db` in the foreground and stops it with SIGTERM. A replica that stops
answering is taken out of rotation by the checks; a request that fails to connect is
redispatched to another replica (`option redispatch`, `retries`), as a production balancer
would be configured. CI installs HAProxy (`.ci/run`); without it the test fails saying so.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType

from sidecar.embedded import free_port


def _haproxy() -> str:
    found = shutil.which("haproxy") or (
        "/usr/sbin/haproxy" if Path("/usr/sbin/haproxy").exists() else None
    )
    if found is None:
        raise AssertionError(
            "HAProxy is needed for the load-balancer tests (apt-get install haproxy)"
        )
    return found


class LoadBalancer:
    """http://127.0.0.1:<port> → the replicas' ports, round robin."""

    def __init__(self, tmp_path: Path, backends: list[int]) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.config = tmp_path / "haproxy.cfg"
        self.log = tmp_path / "haproxy.log"
        servers = "\n".join(
            f"    server r{i} 127.0.0.1:{port} check inter 500ms fall 2 rise 1"
            for i, port in enumerate(backends)
        )
        self.config.write_text(
            f"""
global
    maxconn 4096

defaults
    mode http
    timeout connect 2s
    timeout client 120s
    timeout server 120s
    timeout tunnel 300s
    retries 3
    option redispatch
    option http-server-close

frontend sync
    bind 127.0.0.1:{self.port}
    default_backend replicas

backend replicas
    balance roundrobin
    option httpchk GET /readyz
    http-check expect status 200
{servers}
"""
        )
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 10) -> LoadBalancer:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [_haproxy(), "-db", "-f", str(self.config)],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log.read_text(errors="replace")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return self
            except OSError:
                time.sleep(0.05)
        raise AssertionError("HAProxy did not listen:\n" + self.log.read_text(errors="replace"))

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def __enter__(self) -> LoadBalancer:
        return self.start()

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
