"""The shared store's leadership helpers without a database: notification payloads and
the keepalives derived from store.takeover_timeout."""

from __future__ import annotations

from sidecar.config.loader import load_config_text
from sidecar.store.pg_lead import MAX_PAYLOAD, keepalives, lead_kwargs, payload, read_payload


def test_a_payload_names_the_scopes_or_none_when_too_big():
    assert read_payload(payload(7, {"b", "a"})) == (7, ["a", "b"])
    big = {f"scope-{i:06d}" for i in range(2000)}
    text = payload(9, big)
    assert len(text.encode()) <= MAX_PAYLOAD
    assert read_payload(text) == (9, None)  # every waiter wakes
    assert read_payload("not ours") == (0, None)


def test_keepalives_end_a_silent_session_within_the_takeover_bound():
    for bound in (3.0, 10.0, 60.0):
        idle, interval, count = keepalives(bound)
        assert idle + interval * count <= bound
        kwargs = lead_kwargs(bound)
        assert f"tcp_keepalives_idle={idle}" in kwargs["options"]
        assert kwargs["tcp_user_timeout"] <= bound * 1000


def _config(store: str):
    return load_config_text(
        f"""
database: {{url: "postgresql://app@db/app"}}
store: {store}
auth: {{jwt: {{secret: "0123456789abcdef0123456789abcdef"}}}}
collections:
  items: {{table: items, read: "true"}}
""",
        file="t.yaml",
        env={},
    )


def test_store_takeover_timeout_defaults_to_10s_and_is_read():
    assert _config('{url: "postgresql://s@db2/s"}').store.takeover_timeout == 10.0
    cfg = _config('{url: "postgresql://s@db2/s", takeover_timeout: 30s}')
    assert cfg.store.takeover_timeout == 30.0
