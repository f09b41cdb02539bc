"""Secret values in the config (`auth.jwt.secret`, `store.encryption_key`): a `${VAR}`
there stays text whatever it looks like, and a message about a secret never quotes it."""

from __future__ import annotations

import pytest

from sidecar.config.loader import load_config_text
from sidecar.errors import ConfigError

BASE = """
database: {{url: "postgresql://sidecar@localhost/app"}}
store:
  path: /tmp/never-opened.db
  encryption_key: {key}
auth:
  jwt:
    secret: {secret}
collections:
  notes: {{table: notes, read: "true"}}
"""


def test_a_numeric_secret_from_the_environment_stays_a_string() -> None:
    env = {"KEY": "0918273645", "SECRET": "12345678901234567890123456789012345"}
    config = load_config_text(BASE.format(key="${KEY}", secret="${SECRET}"), file="t.yaml", env=env)
    assert config.store.encryption_key == "0918273645"  # the leading zero kept
    assert config.auth.jwt.secret == "12345678901234567890123456789012345"


@pytest.mark.parametrize(
    ("key", "secret"),
    [
        ("5647382910564738", "918273645546372819283746192837465"),  # numbers to YAML
        ("[5647382910564738]", "{918273645546372819283746192837465: 1}"),  # a list, a mapping
    ],
)
def test_a_problem_with_a_secret_does_not_show_it(key: str, secret: str) -> None:
    with pytest.raises(ConfigError) as refused:
        load_config_text(BASE.format(key=key, secret=secret), file="t.yaml", env={})
    text = str(refused.value)
    assert "store.encryption_key: expected a string" in text
    assert "auth.jwt.secret: expected a string" in text
    assert "5647382910564738" not in text and "918273645546372819283746192837465" not in text
    assert "its value is not shown" in text


def test_secrets_lists_the_store_key_and_both_passwords() -> None:
    text = BASE.format(key='"the-store-key"', secret='"jwt-secret-0123456789-0123456789-xx"')
    text = text.replace(
        'store:\n  path: /tmp/never-opened.db\n  encryption_key: "the-store-key"\n',
        'store: {url: "postgresql://st:store-pw@otherhost/s"}\n',
    ).replace("sidecar@localhost", "sidecar:app-pw@localhost")
    config = load_config_text(text, file="t.yaml", env={})
    assert set(config.secrets()) == {"jwt-secret-0123456789-0123456789-xx", "app-pw", "store-pw"}
    encrypted = load_config_text(
        BASE.format(key='"the-store-key"', secret='"jwt-secret-0123456789-0123456789-xx"'),
        file="t.yaml",
        env={},
    )
    assert "the-store-key" in encrypted.secrets()
    assert "the-store-key" not in repr(encrypted)  # a config printed whole shows no key
