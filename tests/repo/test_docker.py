"""The container files under docker/ stay sound and true to the code, without a Docker engine.

- docker/Dockerfile: hadolint-like rules read from the file (multi-stage, pinned bases,
  non-root numeric USER, HEALTHCHECK, no ADD of URLs, apt hygiene, exec-form ENTRYPOINT, every
  COPY source present in the build context);
- docker/compose.yaml: its structure (postgres with wal_level=logical and pg_isready, the
  sidecar waiting for it to be healthy, the store on a named volume, the observability profile)
  and every relative path it mounts or builds from exists; `docker compose config -q` when the
  CLI has the compose plugin;
- docker/sidecar.yaml loads with the project's own loader, given the environment compose sets;
- docker/entrypoint.sh, run with `sh` against a fake `sidecar`: it retries `check`, gives up
  after the bounded wait, execs `run -c <config>`, and passes verbs through;
- the Grafana dashboard only queries metrics that sidecar/observability.py defines.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from sidecar.config.loader import load_config_text
from sidecar.observability import Metrics

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
DOCKERFILE = DOCKER / "Dockerfile"
COMPOSE = DOCKER / "compose.yaml"
ENTRYPOINT = DOCKER / "entrypoint.sh"
SIDECAR_YAML = DOCKER / "sidecar.yaml"
DASHBOARDS = DOCKER / "grafana" / "dashboards"
PROVISIONING = DOCKER / "grafana" / "provisioning"
OBSERVABILITY = ROOT / "sidecar" / "observability.py"

STORE_DIR = "/var/lib/sidecar"
HTTP_PORT = 8080


# -------------------------------------------------------------------------- the Dockerfile


@dataclass(frozen=True)
class Instruction:
    keyword: str  # upper-cased: FROM, RUN, COPY...
    args: str  # the rest of the logical line, continuations joined
    line: int


@dataclass(frozen=True)
class Stage:
    image: str
    name: str | None
    instructions: tuple[Instruction, ...]

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]


def parse_dockerfile(text: str) -> list[Instruction]:
    """Logical lines: comments dropped, backslash continuations joined."""
    out: list[Instruction] = []
    pending: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue  # a comment inside a continued instruction
        if not pending:
            start = number
        continued = line.endswith("\\")
        pending.append(line[:-1].strip() if continued else line)
        if not continued:
            keyword, _, args = " ".join(p for p in pending if p).partition(" ")
            out.append(Instruction(keyword.upper(), args.strip(), start))
            pending = []
    assert not pending, "the Dockerfile ends inside a continued line"
    return out


def split_stages(instructions: list[Instruction]) -> list[Stage]:
    stages: list[Stage] = []
    for ins in instructions:
        if ins.keyword == "FROM":
            words = [w for w in ins.args.split() if not w.startswith("--")]
            name = words[2] if len(words) >= 3 and words[1].lower() == "as" else None
            stages.append(Stage(words[0], name, ()))
        else:
            assert stages, f"line {ins.line}: {ins.keyword} before the first FROM"
            last = stages[-1]
            stages[-1] = Stage(last.image, last.name, (*last.instructions, ins))
    return stages


def flags_and_words(args: str) -> tuple[dict[str, str], list[str]]:
    """`--from=builder --chmod=0755 a b` → ({'from': 'builder', 'chmod': '0755'}, [a, b])."""
    flags: dict[str, str] = {}
    words: list[str] = []
    for word in shlex.split(args):
        if word.startswith("--") and not words:
            key, _, value = word[2:].partition("=")
            flags[key] = value
        else:
            words.append(word)
    return flags, words


def image_is_pinned(image: str) -> bool:
    """An explicit tag with a version number (not `latest`), or a digest."""
    if "$" in image:
        return False  # an ARG can be anything
    if re.search(r"@sha256:[0-9a-f]{64}$", image):
        return True
    name_and_tag = image.rsplit("/", 1)[-1]
    if ":" not in name_and_tag:
        return False
    tag = name_and_tag.split(":", 1)[1]
    return tag != "latest" and re.search(r"\d", tag) is not None


@pytest.fixture(scope="module")
def stages() -> list[Stage]:
    return split_stages(parse_dockerfile(DOCKERFILE.read_text(encoding="utf-8")))


@pytest.fixture(scope="module")
def final(stages: list[Stage]) -> Stage:
    return stages[-1]


def test_dockerfile_parser_joins_continuations_and_drops_comments() -> None:
    text = "# c\nFROM a:1 AS b\nRUN x \\\n  # inner\n  && y\n\nUSER 1\n"
    got = [(i.keyword, i.args, i.line) for i in parse_dockerfile(text)]
    assert got == [("FROM", "a:1 AS b", 2), ("RUN", "x && y", 3), ("USER", "1", 7)]


@pytest.mark.parametrize(
    ("image", "pinned"),
    [
        ("python:3.11.11-slim-bookworm", True),
        ("python:3.11-slim@sha256:" + "a" * 64, True),
        ("registry.example.com:5000/team/img:1.2", True),
        ("python", False),
        ("python:latest", False),
        ("python:slim", False),
        ("registry.example.com:5000/img", False),
        ("python:${PY}", False),
    ],
)
def test_image_pin_rule(image: str, pinned: bool) -> None:
    assert image_is_pinned(image) is pinned


def test_dockerfile_is_multi_stage_with_a_builder(stages: list[Stage]) -> None:
    assert len(stages) >= 2
    assert "builder" in {s.name for s in stages[:-1]}


def test_every_base_image_is_pinned(stages: list[Stage]) -> None:
    names = {s.name for s in stages if s.name}
    for stage in stages:
        if stage.image in names:
            continue  # FROM an earlier stage
        assert image_is_pinned(stage.image), f"FROM {stage.image}: pin an explicit version tag"


def test_final_stage_copies_the_venv_from_the_builder(final: Stage) -> None:
    froms = [flags_and_words(i.args)[0].get("from") for i in final.all("COPY")]
    assert "builder" in froms, "the final stage must COPY --from=builder"


def test_final_stage_runs_as_a_numeric_non_root_user(final: Stage) -> None:
    users = final.all("USER")
    assert users, "the final stage needs a USER"
    user, _, group = users[-1].args.partition(":")
    assert user.isdigit() and int(user) != 0, f"USER {users[-1].args}: a numeric non-root uid"
    assert group == "" or (group.isdigit() and int(group) != 0)
    after = final.instructions[final.instructions.index(users[-1]) :]
    assert not [i for i in after if i.keyword == "RUN"], "RUN after USER runs as that user"


def test_healthcheck_asks_healthz_without_curl(final: Stage) -> None:
    checks = final.all("HEALTHCHECK")
    assert len(checks) == 1
    args = checks[0].args
    assert "CMD" in args and not args.upper().startswith("NONE")
    assert f"http://127.0.0.1:{HTTP_PORT}/healthz" in args
    assert "curl" not in args and "wget" not in args, "slim images have neither"


def test_volume_port_entrypoint_and_config(final: Stage) -> None:
    volumes = " ".join(i.args for i in final.all("VOLUME"))
    assert STORE_DIR in volumes
    assert str(HTTP_PORT) in " ".join(i.args for i in final.all("EXPOSE")).split()
    entrypoints = final.all("ENTRYPOINT")
    assert entrypoints, "the final stage needs an ENTRYPOINT"
    entrypoint = json.loads(entrypoints[-1].args)  # exec form (hadolint DL3025)
    copied = {
        words[-1]: words[:-1]
        for i in final.all("COPY")
        for words in [flags_and_words(i.args)[1]]
        if "from" not in flags_and_words(i.args)[0]
    }
    assert copied.get(entrypoint[0]) == ["docker/entrypoint.sh"]
    for cmd in final.all("CMD"):
        assert isinstance(json.loads(cmd.args), list), "CMD in exec form"
    env = " ".join(i.args for i in final.all("ENV"))
    config = re.search(r"SIDECAR_CONFIG=(\S+)", env)
    assert config, "ENV SIDECAR_CONFIG"
    assert copied.get(config[1]) == ["docker/sidecar.yaml"]


def test_no_add_of_urls_or_local_files(stages: list[Stage]) -> None:
    adds = [ins for stage in stages for ins in stage.all("ADD")]
    urls = [ins.line for ins in adds if re.search(r"\b(https?|ftp)://", ins.args)]
    assert not urls, f"lines {urls}: ADD <url> (download in a RUN and verify a checksum)"
    assert not adds, f"lines {[i.line for i in adds]}: COPY, not ADD, for local files (DL3020)"


def test_apt_installs_are_lean_and_clean(stages: list[Stage]) -> None:
    for stage in stages:
        for ins in stage.all("RUN"):
            if not re.search(r"\bapt(-get)?\s+install\b", ins.args):
                continue
            assert "apt-get install" in ins.args, f"line {ins.line}: apt-get, not apt (DL3027)"
            assert "--no-install-recommends" in ins.args, f"line {ins.line}: DL3015"
            assert re.search(r"\s-y\b|--yes|--assume-yes", ins.args), f"line {ins.line}: DL3014"
            assert "rm -rf /var/lib/apt/lists" in ins.args, f"line {ins.line}: DL3009"


def test_no_sudo_and_absolute_workdirs(stages: list[Stage]) -> None:
    for stage in stages:
        for ins in stage.all("RUN"):
            assert not re.search(r"\bsudo\b", ins.args), f"line {ins.line}: DL3004"
        for ins in stage.all("WORKDIR"):
            assert ins.args.startswith(("/", "$")), f"line {ins.line}: DL3000"


def test_copy_sources_exist_in_the_build_context(stages: list[Stage]) -> None:
    # compose builds with `context: ..` (the repository root).
    for stage in stages:
        for ins in stage.all("COPY"):
            flags, words = flags_and_words(ins.args)
            if "from" in flags:
                continue
            for source in words[:-1]:
                assert (ROOT / source).exists(), f"line {ins.line}: COPY {source}: missing"


# ---------------------------------------------------------------------------- compose.yaml

_INTERPOLATION = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?)([-?])([^}]*))?\}")


def interpolate(value: str, env: Mapping[str, str]) -> str:
    """Compose's interpolation: ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?err}, $$."""

    def replace(match: re.Match[str]) -> str:
        if match[0] == "$$":
            return "$"
        name, colon, op, word = match[1], match[2], match[3], match[4]
        current = env.get(name)
        missing = current is None or (colon == ":" and current == "")
        if op == "-" and missing:
            return word
        if op == "?" and missing:
            raise AssertionError(f"compose needs {name}: {word}")
        return current or ""

    return _INTERPOLATION.sub(replace, value)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, Any]:
    return compose["services"]


def service_env(service: Mapping[str, Any], host_env: Mapping[str, str]) -> dict[str, str]:
    """A service's `environment:` (mapping or list form) after compose's interpolation."""
    raw = service.get("environment") or {}
    if isinstance(raw, list):
        raw = dict(item.split("=", 1) for item in raw)
    return {k: interpolate(str(v), host_env) for k, v in raw.items()}


@dataclass(frozen=True)
class Mount:
    source: str
    target: str
    read_only: bool


def mounts(service: Mapping[str, Any]) -> list[Mount]:
    out: list[Mount] = []
    for item in service.get("volumes") or []:
        if isinstance(item, str):
            parts = item.split(":")
            mode = parts[2] if len(parts) > 2 else ""
            out.append(Mount(parts[0], parts[1], "ro" in mode.split(",")))
        else:
            out.append(Mount(item["source"], item["target"], bool(item.get("read_only"))))
    return out


def is_path(source: str) -> bool:
    return source.startswith((".", "/", "~"))


def test_compose_services_and_profiles(services: dict[str, Any]) -> None:
    assert {"postgres", "sidecar", "prometheus", "grafana"} <= set(services)
    assert "profiles" not in services["postgres"] and "profiles" not in services["sidecar"]
    for name in ("prometheus", "grafana"):
        assert services[name].get("profiles") == ["observability"], name
    for name, service in services.items():
        if "image" in service and "build" not in service:
            assert image_is_pinned(service["image"]), f"{name}: pin {service['image']}"


def test_postgres_has_logical_wal_a_healthcheck_and_the_demo_schema(
    services: dict[str, Any],
) -> None:
    postgres = services["postgres"]
    assert postgres["image"].startswith("postgres:15")
    command = postgres["command"]
    words = command if isinstance(command, list) else shlex.split(command)
    assert words[0] == "postgres"
    settings = {words[i + 1] for i, w in enumerate(words[:-1]) if w == "-c"}
    assert "wal_level=logical" in settings
    test = postgres["healthcheck"]["test"]
    assert "pg_isready" in (test if isinstance(test, str) else " ".join(test))
    inits = [m for m in mounts(postgres) if m.target.startswith("/docker-entrypoint-initdb.d/")]
    assert [(DOCKER / m.source).resolve() for m in inits] == [
        ROOT / "sidecar" / "demo" / "schema.sql"
    ]
    assert inits[0].target.endswith(".sql")


def test_sidecar_waits_for_a_healthy_postgres(services: dict[str, Any]) -> None:
    depends = services["sidecar"]["depends_on"]
    assert isinstance(depends, dict), "the long form: the short one does not wait for health"
    assert depends["postgres"]["condition"] == "service_healthy"


def test_sidecar_build_config_store_and_port(
    compose: dict[str, Any], services: dict[str, Any]
) -> None:
    sidecar = services["sidecar"]
    build = sidecar["build"]
    context = (DOCKER / build["context"]).resolve()
    assert context == ROOT
    assert (context / build["dockerfile"]).resolve() == DOCKERFILE
    env = service_env(sidecar, {"SIDECAR_JWT_SECRET": "s" * 40})
    by_target = {m.target: m for m in mounts(sidecar)}
    config = by_target[env["SIDECAR_CONFIG"]]
    assert (DOCKER / config.source).resolve() == SIDECAR_YAML and config.read_only
    store = by_target[STORE_DIR]
    assert not is_path(store.source), "the store belongs on a named volume"
    assert store.source in (compose.get("volumes") or {})
    ports = [str(p) for p in sidecar["ports"]]
    assert any(p.rsplit(":", 1)[-1] == str(HTTP_PORT) for p in ports)


def test_every_mounted_or_built_path_exists(services: dict[str, Any]) -> None:
    for name, service in services.items():
        build = service.get("build")
        if build is not None:
            context = build if isinstance(build, str) else build.get("context", ".")
            assert (DOCKER / context).is_dir(), f"{name}: build context {context}"
        for mount in mounts(service):
            if is_path(mount.source):
                assert (DOCKER / mount.source).exists(), f"{name}: {mount.source} is missing"


def test_named_volumes_are_declared(compose: dict[str, Any], services: dict[str, Any]) -> None:
    declared = set(compose.get("volumes") or {})
    for name, service in services.items():
        for mount in mounts(service):
            if not is_path(mount.source):
                assert mount.source in declared, f"{name}: volume {mount.source} undeclared"


def test_prometheus_scrapes_the_sidecar(services: dict[str, Any]) -> None:
    prometheus = services["prometheus"]
    config = next(m for m in mounts(prometheus) if m.target.endswith("prometheus.yml"))
    data = yaml.safe_load((DOCKER / config.source).read_text(encoding="utf-8"))
    targets = [
        t
        for job in data["scrape_configs"]
        for sc in job.get("static_configs", [])
        for t in sc["targets"]
    ]
    assert f"sidecar:{HTTP_PORT}" in targets
    jobs = {job.get("metrics_path", "/metrics") for job in data["scrape_configs"]}
    assert jobs == {"/metrics"}


def test_compose_interpolation_helper() -> None:
    env = {"SET": "x", "EMPTY": ""}
    assert interpolate("${SET:-d} ${EMPTY:-d} ${EMPTY-d} ${UNSET-d} ${UNSET} $$1", env) == (
        "x d  d  $1"
    )
    with pytest.raises(AssertionError, match="UNSET"):
        interpolate("${UNSET:?set it}", env)


def _docker_compose_available() -> bool:
    if shutil.which("docker") is None:
        return False
    try:
        probe = subprocess.run(
            ["docker", "compose", "version"], capture_output=True, timeout=20, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return probe.returncode == 0


def _compose_config(profile: list[str], env: Mapping[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["docker", "compose", "-f", str(COMPOSE), *profile, "config", "-q"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=env,
    )


@pytest.mark.skipif(not _docker_compose_available(), reason="no `docker compose` CLI plugin")
def test_docker_compose_config_validates() -> None:
    env = {**os.environ, "SIDECAR_JWT_SECRET": "s" * 40}
    for profile in ([], ["--profile", "observability"]):
        done = _compose_config(profile, env)
        assert done.returncode == 0, done.stderr


@pytest.mark.skipif(not _docker_compose_available(), reason="no `docker compose` CLI plugin")
def test_docker_compose_config_fails_without_a_jwt_secret() -> None:
    env = {k: v for k, v in os.environ.items() if k != "SIDECAR_JWT_SECRET"}
    done = _compose_config([], env)
    assert done.returncode != 0
    assert "SIDECAR_JWT_SECRET" in done.stderr


# The value the compose file used to fall back to (and sidecar/demo/demo.yaml still uses for
# the embedded demo): public, so it must not be a default of the container files.
DEMO_SECRET = "demo-secret-change-me"


def test_compose_refuses_to_start_without_an_operator_set_jwt_secret(
    services: dict[str, Any],
) -> None:
    raw = str(services["sidecar"]["environment"]["SIDECAR_JWT_SECRET"])
    assert re.fullmatch(r"\$\{SIDECAR_JWT_SECRET:\?[^}]+\}", raw), raw
    with pytest.raises(AssertionError, match="SIDECAR_JWT_SECRET"):
        service_env(services["sidecar"], {})
    with pytest.raises(AssertionError, match="SIDECAR_JWT_SECRET"):
        service_env(services["sidecar"], {"SIDECAR_JWT_SECRET": ""})  # `:?`: empty is unset
    env = service_env(services["sidecar"], {"SIDECAR_JWT_SECRET": "x" * 40})
    assert env["SIDECAR_JWT_SECRET"] == "x" * 40


def test_no_demo_secret_in_the_container_files() -> None:
    for path in DOCKER.rglob("*"):
        if path.is_file():
            text = path.read_text(encoding="utf-8", errors="replace")
            assert DEMO_SECRET not in text, f"{path.relative_to(ROOT)} holds the demo secret"


def _published(service: Mapping[str, Any], host_env: Mapping[str, str]) -> list[str]:
    out = []
    for port in service.get("ports") or []:
        assert isinstance(port, str), "short syntax, so the host address is in the string"
        out.append(interpolate(port, host_env))
    return out


def test_published_ports_bind_to_loopback_unless_told_otherwise(
    services: dict[str, Any],
) -> None:
    published = {n: _published(s, {}) for n, s in services.items() if s.get("ports")}
    assert "sidecar" in published
    for name, ports in published.items():
        for port in ports:
            # host-address:host-port:container-port, the address loopback
            assert port.count(":") == 2 and port.startswith("127.0.0.1:"), (name, port)
    told = {"SIDECAR_BIND": "0.0.0.0", "SIDECAR_PORT": "9000"}
    assert _published(services["sidecar"], told) == [f"0.0.0.0:9000:{HTTP_PORT}"]


# ---------------------------------------------------------------------------- sidecar.yaml


@pytest.mark.parametrize(
    "host_env",
    [{"SIDECAR_JWT_SECRET": "t" * 40}, {"SIDECAR_JWT_SECRET": "s" * 40, "POSTGRES_DB": "x"}],
)
def test_sidecar_yaml_loads_with_the_compose_environment(
    services: dict[str, Any], host_env: dict[str, str]
) -> None:
    env = service_env(services["sidecar"], host_env)
    pg_env = service_env(services["postgres"], host_env)
    config_path = env["SIDECAR_CONFIG"]
    config = load_config_text(SIDECAR_YAML.read_text(encoding="utf-8"), file=config_path, env=env)
    url = urlsplit(config.database.url)
    assert url.hostname == "postgres" and url.hostname in services
    assert (url.username, url.password) == (pg_env["POSTGRES_USER"], pg_env["POSTGRES_PASSWORD"])
    assert url.path == "/" + pg_env["POSTGRES_DB"]
    assert config.auth.jwt.secret == env["SIDECAR_JWT_SECRET"] == host_env["SIDECAR_JWT_SECRET"]
    assert Path(config.store.path).parent == Path(STORE_DIR)
    assert (config.server.host, config.server.port) == ("0.0.0.0", HTTP_PORT)


def test_sidecar_yaml_syncs_what_the_demo_syncs() -> None:
    ours = yaml.safe_load(SIDECAR_YAML.read_text(encoding="utf-8"))
    demo = yaml.safe_load((ROOT / "sidecar" / "demo" / "demo.yaml").read_text(encoding="utf-8"))
    assert ours["collections"] == demo["collections"]


def test_sidecar_yaml_needs_its_secrets() -> None:
    with pytest.raises(Exception, match="SIDECAR_JWT_SECRET"):
        load_config_text(
            SIDECAR_YAML.read_text(encoding="utf-8"),
            file="/etc/sidecar/sidecar.yaml",
            env={"SIDECAR_DB_PASSWORD": "pw"},
        )


# ---------------------------------------------------------------------------- entrypoint.sh

FAKE_SIDECAR = """#!/bin/sh
# A stand-in for the sidecar CLI: logs its pid and arguments; `check` fails FAIL_CHECKS times.
printf '%s %s\\n' "$$" "$*" >> "$FAKE_LOG"
if [ "$1" = check ]; then
    n=$(cat "$FAKE_COUNT" 2>/dev/null || echo 0)
    echo $((n + 1)) > "$FAKE_COUNT"
    if [ "$n" -lt "${FAIL_CHECKS:-0}" ]; then
        echo "sidecar check: cannot reach the database: attempt $((n + 1))" >&2
        exit 1
    fi
    echo "$3: ok (2 collections)"
fi
exit "${FAKE_EXIT:-0}"
"""


@dataclass
class Run:
    returncode: int
    pid: int
    stdout: str
    stderr: str
    calls: list[tuple[int, str]]  # (pid, arguments) of each call of the fake sidecar

    @property
    def verbs(self) -> list[str]:
        return [args.split(" ", 1)[0] for _, args in self.calls]


@pytest.fixture
def entrypoint(tmp_path: Path) -> Iterator[Any]:
    fake = tmp_path / "sidecar"
    fake.write_text(FAKE_SIDECAR, encoding="utf-8")
    fake.chmod(0o755)
    log = tmp_path / "calls.log"

    def run(*args: str, **env: str) -> Run:
        full_env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "SIDECAR_BIN": str(fake),
            "SIDECAR_CONFIG": "/etc/sidecar/sidecar.yaml",
            "SIDECAR_WAIT_INTERVAL": "0",
            "FAKE_LOG": str(log),
            "FAKE_COUNT": str(tmp_path / "count"),
            **env,
        }
        proc = subprocess.Popen(
            ["sh", str(ENTRYPOINT), *args],
            env=full_env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        out, err = proc.communicate(timeout=20)
        lines = log.read_text(encoding="utf-8").splitlines() if log.exists() else []
        calls = [(int(pid), rest) for pid, _, rest in (ln.partition(" ") for ln in lines)]
        return Run(proc.returncode, proc.pid, out, err, calls)

    yield run


def test_entrypoint_is_posix_sh_with_set_eu() -> None:
    text = ENTRYPOINT.read_text(encoding="utf-8")
    assert text.startswith("#!/bin/sh\n")
    assert re.search(r"^set -eu$", text, re.M)
    assert "[[" not in text and "function " not in text, "bashisms"
    subprocess.run(["sh", "-n", str(ENTRYPOINT)], check=True, timeout=10)


def test_entrypoint_retries_check_then_execs_run(entrypoint: Any) -> None:
    run = entrypoint(FAIL_CHECKS="2", SIDECAR_WAIT_SECONDS="10", SIDECAR_CONFIG="/c/s.yaml")
    assert run.returncode == 0, run.stderr
    assert [args for _, args in run.calls] == [
        "check -c /c/s.yaml",
        "check -c /c/s.yaml",
        "check -c /c/s.yaml",
        "run -c /c/s.yaml",
    ]
    assert run.calls[-1][0] == run.pid, "`run` must replace the shell (exec), for signals"
    assert run.stderr.count("retrying") == 2
    assert "cannot reach the database: attempt 2" in run.stderr
    assert "/c/s.yaml: ok" in run.stdout


@pytest.mark.parametrize("args", [(), ("run",)])
def test_entrypoint_waits_with_no_argument_or_a_bare_run(
    entrypoint: Any, args: tuple[str, ...]
) -> None:
    run = entrypoint(*args, SIDECAR_WAIT_SECONDS="5")
    assert run.returncode == 0, run.stderr
    assert run.verbs == ["check", "run"]
    assert run.calls[-1][1] == "run -c /etc/sidecar/sidecar.yaml"


def test_entrypoint_gives_up_after_the_bounded_wait(entrypoint: Any) -> None:
    # With a 0 s interval each attempt counts as one second: 3 s allow 4 checks.
    run = entrypoint(FAIL_CHECKS="1000", SIDECAR_WAIT_SECONDS="3")
    assert run.returncode != 0
    assert run.verbs == ["check"] * 4, "no `run` after giving up"
    assert "gave up after 4 check(s)" in run.stderr
    assert "cannot reach the database: attempt 4" in run.stderr  # the last check's message


def test_entrypoint_checks_once_with_no_wait(entrypoint: Any) -> None:
    run = entrypoint(FAIL_CHECKS="1", SIDECAR_WAIT_SECONDS="0")
    assert run.returncode != 0 and run.verbs == ["check"]


@pytest.mark.parametrize(
    "args",
    [
        ("check",),
        ("check", "-c", "/other.yaml"),
        ("demo", "--port", "9000"),
        ("run", "-c", "/other.yaml"),
        ("--help",),
    ],
)
def test_entrypoint_passes_verbs_and_options_through(
    entrypoint: Any, args: tuple[str, ...]
) -> None:
    run = entrypoint(*args, FAIL_CHECKS="1000", FAKE_EXIT="3", SIDECAR_WAIT_SECONDS="60")
    assert [a for _, a in run.calls] == [" ".join(args)], "one call, as given, no waiting"
    assert run.calls[0][0] == run.pid
    assert run.returncode == (1 if args[0] == "check" else 3), "the verb's own exit status"


def test_entrypoint_execs_other_commands(entrypoint: Any) -> None:
    run = entrypoint("echo", "hello")
    assert (run.returncode, run.stdout, run.calls) == (0, "hello\n", [])


@pytest.mark.parametrize("name", ["SIDECAR_WAIT_SECONDS", "SIDECAR_WAIT_INTERVAL"])
def test_entrypoint_rejects_a_bad_wait(entrypoint: Any, name: str) -> None:
    run = entrypoint(**{name: "soon"})
    assert run.returncode == 1 and run.calls == []
    assert name in run.stderr


# ---------------------------------------------------------------------- Grafana dashboards

_METRIC_CALL = re.compile(r"\b(Counter|Gauge|Histogram|Summary)\(\s*[\"']([a-zA-Z_:][\w:]*)[\"']")
_SIDECAR_NAME = re.compile(r"\bsidecar_[A-Za-z0-9_:]+")
_SUFFIXES = {
    "Counter": ("_total", "_created"),
    "Gauge": ("",),
    "Histogram": ("_bucket", "_sum", "_count", "_created"),
    "Summary": ("", "_sum", "_count", "_created"),
}


def defined_metrics() -> dict[str, str]:
    """name → kind, from the Counter/Gauge/Histogram("name", ...) calls of observability.py."""
    source = OBSERVABILITY.read_text(encoding="utf-8")
    return {
        name.removesuffix("_total") if kind == "Counter" else name: kind
        for kind, name in _METRIC_CALL.findall(source)
    }


def exposed_names(metrics: Mapping[str, str]) -> dict[str, str]:
    """Every series name Prometheus sees → the metric's base name."""
    return {base + suffix: base for base, kind in metrics.items() for suffix in _SUFFIXES[kind]}


def queries(node: Any) -> Iterator[str]:
    """Every PromQL string of a dashboard: panel targets and templating queries."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("expr", "query", "definition") and isinstance(value, str):
                yield value
            else:
                yield from queries(value)
    elif isinstance(node, list):
        for item in node:
            yield from queries(item)


def dashboards() -> list[Path]:
    return sorted(DASHBOARDS.glob("*.json"))


def test_metric_names_parsed_from_the_source_match_the_registry() -> None:
    metrics = defined_metrics()
    assert metrics, "no metric found in sidecar/observability.py"
    # Family names carry no _total suffix, as the parsed names.
    registered = {family.name: family.type for family in Metrics().registry.collect()}
    kinds = {"Counter": "counter", "Gauge": "gauge", "Histogram": "histogram"}
    assert {name: kinds.get(kind, kind) for name, kind in metrics.items()} == registered


def test_dashboards_are_valid_json_with_unique_panel_ids() -> None:
    assert dashboards(), "no dashboard JSON under docker/grafana/dashboards"
    for path in dashboards():
        data = json.loads(path.read_text(encoding="utf-8"))
        ids = [p["id"] for p in data["panels"]]
        assert len(ids) == len(set(ids)), path.name
        assert data.get("uid") and data.get("title"), path.name
        for panel in data["panels"]:
            assert panel.get("targets") and panel.get("gridPos"), panel.get("title")


def test_every_query_names_only_metrics_that_exist() -> None:
    exposed = exposed_names(defined_metrics())
    for path in dashboards():
        data = json.loads(path.read_text(encoding="utf-8"))
        for expr in queries(data):
            names = _SIDECAR_NAME.findall(expr)
            assert names, f"{path.name}: {expr!r} queries no sidecar metric"
            unknown = sorted(set(names) - set(exposed))
            assert not unknown, f"{path.name}: {expr!r} names unknown metrics {unknown}"


def test_the_dashboard_covers_the_main_metrics() -> None:
    exposed = exposed_names(defined_metrics())
    data = json.loads((DASHBOARDS / "sidecar.json").read_text(encoding="utf-8"))
    exprs = list(queries(data))
    used = {exposed[n] for e in exprs for n in _SIDECAR_NAME.findall(e)}
    assert {
        "sidecar_http_requests",
        "sidecar_http_request_seconds",
        "sidecar_capture_lag_bytes",
        "sidecar_capture_rows_applied",
        "sidecar_store_rows",
        "sidecar_store_bytes",
        "sidecar_live_waiters",
        "sidecar_live_requests",
        "sidecar_page_cache_hits",
        "sidecar_page_cache_misses",
    } <= used
    quantiles = [e for e in exprs if "histogram_quantile" in e]
    for q in ("0.5", "0.95"):
        assert any(
            f"histogram_quantile({q}," in e and "sidecar_http_request_seconds_bucket" in e
            for e in quantiles
        ), f"latency p{q}"
    assert any(
        "sidecar_page_cache_hits_total" in e and "sidecar_page_cache_misses_total" in e
        for e in exprs
    ), "page cache hit ratio"


def test_grafana_provisioning_matches_compose_and_dashboards(services: dict[str, Any]) -> None:
    grafana = services["grafana"]
    by_source = {(DOCKER / m.source).resolve(): m.target for m in mounts(grafana)}
    assert by_source[PROVISIONING.resolve()] == "/etc/grafana/provisioning"
    dashboards_target = by_source[DASHBOARDS.resolve()]
    providers = [
        provider
        for path in sorted((PROVISIONING / "dashboards").glob("*.y*ml"))
        for provider in yaml.safe_load(path.read_text(encoding="utf-8"))["providers"]
    ]
    assert [p["options"]["path"] for p in providers] == [dashboards_target]
    sources = [
        source
        for path in sorted((PROVISIONING / "datasources").glob("*.y*ml"))
        for source in yaml.safe_load(path.read_text(encoding="utf-8"))["datasources"]
    ]
    prometheus = [s for s in sources if s["type"] == "prometheus"]
    assert len(prometheus) == 1
    assert urlsplit(prometheus[0]["url"]).hostname == "prometheus" and "prometheus" in services
    uid = prometheus[0]["uid"]
    for path in dashboards():
        data = json.loads(path.read_text(encoding="utf-8"))
        for panel in data["panels"]:
            for ds in (panel.get("datasource"), *(t.get("datasource") for t in panel["targets"])):
                if ds is not None:
                    assert ds == {"type": "prometheus", "uid": uid}, panel["title"]


# ---------------------------------------------------------------------- the replicas profile

REPLICAS_YAML = DOCKER / "sidecar-replicas.yaml"
HAPROXY_CFG = DOCKER / "haproxy.cfg"


def test_the_replicas_profile_has_a_store_two_replicas_and_a_balancer(
    services: dict[str, Any],
) -> None:
    replicas = {"store", "replica-1", "replica-2", "lb"}
    assert replicas <= set(services)
    for name in replicas:
        assert services[name].get("profiles") == ["replicas"], name
    for name in ("replica-1", "replica-2"):
        depends = services[name]["depends_on"]
        assert {k: v["condition"] for k, v in depends.items()} == {
            "postgres": "service_healthy",
            "store": "service_healthy",
        }
        config = next(m for m in mounts(services[name]) if m.target == "/etc/sidecar/sidecar.yaml")
        assert (DOCKER / config.source).resolve() == REPLICAS_YAML and config.read_only
    # the balancer sends to both replicas, checks /readyz, and publishes on loopback
    cfg = HAPROXY_CFG.read_text(encoding="utf-8")
    assert "option httpchk GET /readyz" in cfg
    for name in ("replica-1", "replica-2"):
        assert f"server {name} {name}:{HTTP_PORT} check" in cfg
    lb = services["lb"]
    assert any(m.source == "./haproxy.cfg" and m.target.endswith("haproxy.cfg") for m in mounts(lb))
    assert [str(p) for p in lb["ports"]] == [
        "${SIDECAR_BIND:-127.0.0.1}:${SIDECAR_REPLICAS_PORT:-8090}:8080"
    ]


@pytest.mark.parametrize(
    "host_env",
    [
        {"SIDECAR_JWT_SECRET": "t" * 40},
        {"SIDECAR_JWT_SECRET": "s" * 40, "SIDECAR_STORE_PASSWORD": "pw", "SIDECAR_STORE_DB": "y"},
    ],
)
def test_the_replicas_config_loads_with_the_compose_environment(
    services: dict[str, Any], host_env: dict[str, str]
) -> None:
    env = service_env(services["replica-1"], host_env)
    store_env = service_env(services["store"], host_env)
    config = load_config_text(
        REPLICAS_YAML.read_text(encoding="utf-8"), file=env["SIDECAR_CONFIG"], env=env
    )
    assert config.store.url is not None
    url = urlsplit(config.store.url)
    assert url.hostname == "store" and url.hostname in services
    assert (url.username, url.password) == (
        store_env["POSTGRES_USER"],
        store_env["POSTGRES_PASSWORD"],
    )
    assert url.path == "/" + store_env["POSTGRES_DB"]
    single = load_config_text(
        SIDECAR_YAML.read_text(encoding="utf-8"),
        file="/etc/sidecar/sidecar.yaml",
        env=service_env(services["sidecar"], host_env),
    )
    # a slot of their own: the replicas run beside the single sidecar without a fight
    assert config.database.slot != single.database.slot
    assert config.collections.keys() == single.collections.keys()
