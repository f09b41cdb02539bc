"""A private PostgreSQL server from the system's binaries, for `sidecar demo` and the tests.

It runs in a temporary directory with `wal_level=logical`, listens on loopback and on a
Unix socket in that directory, trusts local connections, and is stopped (and the directory
removed) by `stop()`. When the process runs as root, the server runs as the `postgres` OS
user, because PostgreSQL refuses to run as root.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from sidecar.errors import SidecarError


class EmbeddedPostgresError(SidecarError):
    code, status, title = "embedded_postgres", 500, "Cannot start PostgreSQL"


def find_bindir() -> Path:
    """The directory of `initdb`/`pg_ctl`: $PG_BINDIR, then Debian's layout, then PATH."""
    env = os.environ.get("PG_BINDIR")
    candidates = [env] if env else []
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)
    on_path = shutil.which("initdb")
    if on_path:
        candidates.append(str(Path(on_path).parent))
    for c in candidates:
        if c and (Path(c) / "initdb").exists() and (Path(c) / "pg_ctl").exists():
            return Path(c)
    raise EmbeddedPostgresError(
        "PostgreSQL server binaries (initdb, pg_ctl) not found; install them "
        "(Debian/Ubuntu: apt-get install postgresql) or set PG_BINDIR"
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class EmbeddedPostgres:
    """Start with `start()`, stop with `stop()`; or use it as a context manager."""

    port: int = 0
    settings: dict[str, str] = field(default_factory=dict)
    timezone: str = "UTC"
    root: Path | None = None
    _run_as: str | None = None

    def __post_init__(self) -> None:
        self.bindir = find_bindir()
        if not self.port:
            self.port = free_port()

    @property
    def datadir(self) -> Path:
        assert self.root is not None
        return self.root / "data"

    @property
    def sockdir(self) -> Path:
        assert self.root is not None
        return self.root

    @property
    def superuser(self) -> str:
        return "postgres"

    def dsn(self, dbname: str = "postgres", user: str | None = None) -> str:
        return f"host=127.0.0.1 port={self.port} dbname={dbname} user={user or self.superuser}"

    def url(self, dbname: str = "postgres", user: str | None = None) -> str:
        return f"postgresql://{user or self.superuser}@127.0.0.1:{self.port}/{dbname}"

    def _cmd(self, *args: str) -> list[str]:
        if self._run_as:
            return ["runuser", "-u", self._run_as, "--", *args]
        return list(args)

    def _run(self, *args: str) -> None:
        proc = subprocess.run(self._cmd(*args), capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise EmbeddedPostgresError(
                f"{Path(args[0]).name} failed ({proc.returncode}): "
                f"{(proc.stderr or proc.stdout).strip()[-2000:]}"
            )

    def start(self) -> EmbeddedPostgres:
        self.root = Path(tempfile.mkdtemp(prefix="sidecar-pg-"))
        if os.geteuid() == 0:
            try:
                pw = pwd.getpwnam("postgres")
            except KeyError as exc:
                raise EmbeddedPostgresError(
                    "running as root needs an OS user 'postgres' to run the server "
                    "(the postgresql package creates it)"
                ) from exc
            self._run_as = "postgres"
            os.chown(self.root, pw.pw_uid, pw.pw_gid)
        self._run(
            str(self.bindir / "initdb"),
            "-D",
            str(self.datadir),
            "-U",
            self.superuser,
            "--auth=trust",
            "--no-locale",
            "--encoding=UTF8",
            "--no-sync",
        )
        conf = {
            "listen_addresses": "'127.0.0.1'",
            "port": str(self.port),
            "unix_socket_directories": f"'{self.sockdir}'",
            "wal_level": "logical",
            "max_wal_senders": "20",
            "max_replication_slots": "20",
            "fsync": "off",
            "full_page_writes": "off",
            "timezone": f"'{self.timezone}'",
            "log_min_messages": "warning",
            "shared_buffers": "128MB",
            "max_connections": "200",
        }
        conf.update(self.settings)
        with open(self.datadir / "postgresql.conf", "a", encoding="utf-8") as fh:
            fh.write("\n# sidecar embedded server\n")
            for key, value in conf.items():
                fh.write(f"{key} = {value}\n")
        with open(self.datadir / "pg_hba.conf", "w", encoding="utf-8") as fh:
            fh.write("local all all trust\nlocal replication all trust\n")
            fh.write("host all all 127.0.0.1/32 trust\nhost replication all 127.0.0.1/32 trust\n")
        self._run(
            str(self.bindir / "pg_ctl"),
            "-D",
            str(self.datadir),
            "-l",
            str(self.root / "server.log"),
            "-w",
            "-t",
            "60",
            "start",
        )
        self._wait_ready()
        return self

    def _wait_ready(self, timeout: float = 30.0) -> None:
        import psycopg

        deadline = time.monotonic() + timeout
        while True:
            try:
                with psycopg.connect(self.dsn(), connect_timeout=2):
                    return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def stop(self) -> None:
        if self.root is None:
            return
        if (self.datadir / "postmaster.pid").exists():
            subprocess.run(
                self._cmd(
                    str(self.bindir / "pg_ctl"),
                    "-D",
                    str(self.datadir),
                    "-m",
                    "immediate",
                    "-w",
                    "stop",
                ),
                capture_output=True,
                check=False,
            )
        shutil.rmtree(self.root, ignore_errors=True)
        self.root = None

    def __enter__(self) -> EmbeddedPostgres:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
