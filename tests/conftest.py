"""The suite's fixtures are pytest plugins in tests/fixtures/ (as psycopg's test suite
registers its own): `postgres` (`pg_server`, `pg_dbname`, `pg_dsn`, `pg_url`), `service`
(`sidecar_factory`) and `node` (`node_project`)."""

pytest_plugins = [
    "tests.fixtures.postgres",
    "tests.fixtures.service",
    "tests.fixtures.node",
]
