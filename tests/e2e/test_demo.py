"""`sidecar demo`, the README's first command: starts, serves scoped data, cleans up."""

from __future__ import annotations

import glob
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import pytest

from sidecar.embedded import free_port

pytestmark = [pytest.mark.pg, pytest.mark.slow]


def _pg_dirs(tmp: Path) -> set[str]:
    return set(glob.glob(os.path.join(tmp, "sidecar-pg-*")))


async def test_demo_runs_from_any_directory_and_cleans_up(tmp_path):
    # a temporary directory of its own, so other processes' servers don't count (beside
    # the system's, not under tmp_path: the server may run as another user)
    private_tmp = Path(tempfile.mkdtemp(prefix="sidecar-demo-test-"))
    private_tmp.chmod(0o1777)
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "sidecar.cli", "demo", "--port", str(port)],
        cwd=tmp_path,  # any working directory
        env={**os.environ, "TMPDIR": str(private_tmp)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        output = ""
        deadline = time.monotonic() + 60
        while "Press Ctrl-C" not in output:
            assert time.monotonic() < deadline, output
            line = proc.stdout.readline()
            assert line or proc.poll() is None, output
            output += line
        tokens = dict(re.findall(r"user (\d) token: (\S+)", output))
        assert f"http://127.0.0.1:{port}" in output and "curl" in output
        base = f"http://127.0.0.1:{port}"
        async with aiohttp.ClientSession() as http:
            seen = {}
            for user, tok in tokens.items():
                headers = {"Authorization": f"Bearer {tok}"}
                async with http.get(f"{base}/v1/pull", headers=headers) as r:
                    assert r.status == 200
                    body = await r.json()
                seen[user] = {(c["collection"], c["key"]["id"]) for c in body["changes"]}
            # the printed push commands, as printed: an insert applied, a stale edit refused
            bodies = re.findall(r"-d '(\{.*\})' ", output)
            assert len(bodies) == 2, output
            statuses = []
            headers = {"Authorization": f"Bearer {tokens['1']}", "Content-Type": "application/json"}
            for body in bodies:
                async with http.post(f"{base}/v1/push", data=body, headers=headers) as r:
                    assert r.status == 200, await r.text()
                    result = (await r.json())["results"][0]
                    statuses.append(result["status"])
            assert statuses == ["applied", "conflict"], statuses
            assert result["row"]["title"] == "Publish the notes"  # the server row
        todos1 = {k for k in seen["1"] if k[0] == "todos"}
        todos2 = {k for k in seen["2"] if k[0] == "todos"}
        assert len(todos1) == 3 and len(todos2) == 2 and not todos1 & todos2
        # projects: own ones plus the public one (id 1, owned by user 1)
        assert {k for k in seen["2"] if k[0] == "projects"} == {("projects", 1), ("projects", 3)}
        assert not (tmp_path / "data").exists()  # nothing written where it was started
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    assert proc.returncode == 0
    assert _pg_dirs(private_tmp) == set()  # the private server and its files are gone
    shutil.rmtree(private_tmp, ignore_errors=True)
