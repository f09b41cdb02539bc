"""`sidecar run` as its own process: the real listening socket, logging and limits.

`SidecarRun(tmp_path, url, collections, extra)` writes a config (`server` on a free port),
starts `python -m sidecar.cli run` with its stdout and stderr in files of their own (not a
terminal: the process logs JSON), waits until `/readyz` answers 200, and stops with
SIGTERM (`start(wait_ready=False)` returns at once). `nofile` sets the child's RLIMIT_NOFILE;
`store` replaces the `store:` mapping (YAML flow text; e.g. a PostgreSQL store several runs
share as replicas), `env` is added to the child's environment.
"""

from __future__ import annotations

import asyncio
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import aiohttp

from sidecar.embedded import free_port
from tests.fixtures.service import SECRET


class SidecarRun:
    def __init__(
        self,
        tmp_path: Path,
        url: str,
        collections: str,
        extra: str = "",
        nofile: int | None = None,
        store: str | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.config = tmp_path / "sidecar.yaml"
        self.stdout = tmp_path / "sidecar.out"
        self.stderr = tmp_path / "sidecar.err"
        self.nofile = nofile
        self.env = env or {}
        store = store or f'{{path: "{tmp_path / "store.db"}"}}'
        self.config.write_text(
            f"""
database: {{url: "{url}", slot: run_test, publication: run_test}}
store: {store}
server: {{host: 127.0.0.1, port: {self.port}}}
auth: {{jwt: {{secret: "{SECRET}"}}}}
{extra}
collections:
{collections}
"""
        )
        self.proc: subprocess.Popen[bytes] | None = None

    def _limit(self) -> None:  # in the child, before exec
        if self.nofile is not None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (self.nofile, self.nofile))

    async def start(self, timeout: float = 60, wait_ready: bool = True) -> SidecarRun:
        """Start the process; wait until `/readyz` answers 200 (unless not `wait_ready`)."""
        env = dict(os.environ, PYTHONUNBUFFERED="1", **self.env)
        with self.stdout.open("ab") as out, self.stderr.open("ab") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "sidecar.cli", "run", "--config", str(self.config)],
                stdout=out,
                stderr=err,
                stdin=subprocess.DEVNULL,
                env=env,
                preexec_fn=self._limit,
            )
        if not wait_ready:
            return self
        deadline = time.monotonic() + timeout
        async with aiohttp.ClientSession() as http:
            while time.monotonic() < deadline:
                assert self.proc.poll() is None, self.output()
                try:
                    async with http.get(f"{self.base}/readyz") as r:
                        if r.status == 200:
                            return self
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.1)
        raise AssertionError("sidecar did not become ready:\n" + self.output()[-3000:])

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def output(self) -> str:
        """Everything the process wrote, stdout then stderr."""
        return "".join(
            p.read_text(errors="replace") for p in (self.stdout, self.stderr) if p.exists()
        )
