"""Command line: `sidecar run | check | init | drop | status | backup | migrate-store | rekey |
demo`.

Every failure the user can fix prints a message and exits non-zero, never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
from collections.abc import Sequence
from typing import Any

import psycopg

from sidecar.config.loader import load_config
from sidecar.errors import SidecarError
from sidecar.observability import Redactor, configure_logging

EXIT_OK, EXIT_FAIL = 0, 1


def _default_config() -> str:
    return os.environ.get("SIDECAR_CONFIG", "sidecar.yaml")


def cmd_run(args: argparse.Namespace) -> int:
    from sidecar.serve import serve

    config = load_config(args.config)
    configure_logging(config.log.level, config.log.format, secrets=config.secrets())
    asyncio.run(serve(config))
    return EXIT_OK


def cmd_check(args: argparse.Namespace) -> int:
    from sidecar.service import preflight

    config = load_config(args.config)
    report = preflight(config)
    for w in report.warnings:
        print(f"warning: {w}")
    if report.ok and args.strict and report.warnings:
        print(f"{args.config}: {len(report.warnings)} warning(s) (--strict)", file=sys.stderr)
        return EXIT_FAIL
    if report.ok:
        print(f"{args.config}: ok ({len(config.collections)} collections)")
        return EXIT_OK
    print(f"{args.config}: {len(report.problems)} problem(s):", file=sys.stderr)
    for p in report.problems:
        print(f"  - {p}", file=sys.stderr)
    return EXIT_FAIL


def _print_steps(steps: Sequence[Any]) -> None:
    for step in steps:
        if step.needed:
            print(f"{step.statement};  -- {step.why}")
        else:
            print(f"-- skipped ({step.why}): {step.statement};")


def cmd_init(args: argparse.Namespace) -> int:
    from sidecar import admin

    config = load_config(args.config)
    steps = admin.init_steps(config)
    _print_steps(steps)
    if args.dry_run:
        print("-- dry run: nothing was changed")
        return EXIT_OK
    admin.run_steps(config, steps)
    print("-- done. `sidecar run` makes its initial copy from a slot it has not used yet by")
    print("-- recreating it with an exported snapshot (the slot name stays the same).")
    return EXIT_OK


def cmd_drop(args: argparse.Namespace) -> int:
    from sidecar import admin

    config = load_config(args.config)
    steps = admin.drop_steps(config, keep_publication=args.keep_publication)
    todo = [s for s in steps if s.needed]
    _print_steps(steps)
    if not todo:
        print("-- nothing to drop")
        return EXIT_OK
    if args.dry_run:
        print("-- dry run: nothing was changed")
        return EXIT_OK
    if not args.yes:
        if not sys.stdin.isatty():
            print("sidecar drop: not a terminal; pass --yes to confirm", file=sys.stderr)
            return EXIT_FAIL
        answer = input(f"Drop {config.database.slot!r}? Clients will resync. Type yes: ")
        if answer.strip().lower() != "yes":
            print("sidecar drop: cancelled", file=sys.stderr)
            return EXIT_FAIL
    admin.run_steps(config, steps)
    from sidecar.store.open import store_name

    where = store_name(config.store)
    print(f"-- dropped. The store at {where} is rebuilt by the next `sidecar run`.")
    return EXIT_OK


def cmd_status(args: argparse.Namespace) -> int:
    import orjson

    from sidecar import admin

    config = load_config(args.config)
    info = admin.status(config)
    if args.json:
        print(orjson.dumps(info, option=orjson.OPT_INDENT_2).decode())
        return EXIT_OK
    slot = info["slot"]
    if slot.get("exists") is False:
        print(f"slot         {slot['name']}: missing (the next run rebuilds the store)")
    else:
        state = "active" if slot["active"] else "inactive"
        print(
            f"slot         {slot['name']}: {state}, wal_status {slot['wal_status']}, "
            f"confirmed {slot['confirmed_flush_lsn']}, lag {slot['lag_bytes'] or 0:,} bytes, "
            f"retained WAL {slot['retained_bytes'] or 0:,} bytes"
        )
    pub = info["publication"]
    print(f"publication  {pub['name']}: {'exists' if pub['exists'] else 'missing'}")
    from sidecar.store.open import store_name

    store = info["store"]
    if store is None:
        print(f"store        {store_name(config.store)}: none yet")
    elif "error" in store:
        print(f"store        {store_name(config.store)}: {store['error']}")
    else:
        copy = "done" if store["initial_copy_done"] else "not done"
        print(
            f"store        {store['path']}: {store['bytes']:,} bytes, {store['rows']:,} rows, "
            f"{store['tombstones']:,} tombstones, {store['mutations']:,} mutation ids, "
            f"initial copy {copy}, version {store['version']}"
        )
        for r in store.get("replicas", ()):  # a PostgreSQL store shared by replicas
            print(
                f"replica      {r['id']}: {r['role']}, term {r['term'] or '-'}, "
                f"store at {r['lsn']}, lag {r['lag_seconds']:.1f}s, since {r['started_at']}, "
                f"heartbeat {r['heartbeat_at']}"
            )
    service = info["service"]
    if service is None:
        print(f"service      not reachable on port {config.server.port}")
    else:
        print(
            f"service      up: {int(service.get('sidecar_live_requests', 0))} live clients, "
            f"capture lag {int(service.get('sidecar_capture_lag_bytes', 0)):,} bytes"
        )
    return EXIT_OK


def cmd_backup(args: argparse.Namespace) -> int:
    from pathlib import Path

    from sidecar.store.open import store_name
    from sidecar.store.transfer import TransferError, backup_sqlite

    config = load_config(args.config)
    if config.store.url is not None:
        print(
            f"sidecar backup: the store is in PostgreSQL ({store_name(config.store)}): back "
            f"it up with that server's backups, or `pg_dump -n {config.store.schema} -Fc "
            "-f FILE` on its database (see docs/ops.md, Backups)",
            file=sys.stderr,
        )
        return EXIT_FAIL
    try:
        done = backup_sqlite(
            Path(config.store.path),
            Path(args.to),
            key=config.store.encryption_key,
            force=args.force,
        )
    except TransferError as exc:
        print(f"sidecar backup: {exc}", file=sys.stderr)
        return EXIT_FAIL
    rows = ", ".join(f"{n:,} {t}" for t, n in done.tables.items())
    print(
        f"backed up {config.store.path} to {args.to}: epoch {done.epoch}, "
        f"version {done.version}, {rows}"
    )
    return EXIT_OK


def cmd_migrate_store(args: argparse.Namespace) -> int:
    from pathlib import Path

    from sidecar.store.open import store_name
    from sidecar.store.transfer import TransferError, migrate_sqlite_to_pg

    config = load_config(args.config)
    if config.store.url is None:
        print(
            "sidecar migrate-store: the config's store is not a PostgreSQL store "
            "(set store.url in the config the sidecar will run with)",
            file=sys.stderr,
        )
        return EXIT_FAIL
    try:
        key = os.environ.get(args.from_key_env) if args.from_key_env else None
        done = migrate_sqlite_to_pg(
            Path(args.source), config.store.url, config.store.schema, key=key, force=args.force
        )
    except TransferError as exc:
        print(f"sidecar migrate-store: {exc}", file=sys.stderr)
        return EXIT_FAIL
    rows = ", ".join(f"{n:,} {t}" for t, n in done.tables.items())
    print(
        f"copied {args.source} into {store_name(config.store)}: epoch {done.epoch}, "
        f"version {done.version}, {rows}. Clients keep their cursors; start the "
        "sidecar with this config."
    )
    return EXIT_OK


def cmd_rekey(args: argparse.Namespace) -> int:
    from pathlib import Path

    from sidecar.store.sqlite_files import rekey

    config = load_config(args.config)
    if config.store.url is not None:
        print(
            "sidecar rekey: store.url is a PostgreSQL store: it is not encrypted by the "
            "sidecar (docs/ops.md)",
            file=sys.stderr,
        )
        return EXIT_FAIL
    new_key = os.environ.get(args.new_key_env)
    if not new_key:
        print(
            f"sidecar rekey: the environment variable {args.new_key_env} (the new key) is "
            "not set or empty",
            file=sys.stderr,
        )
        return EXIT_FAIL
    done = rekey(Path(config.store.path), config.store.encryption_key, new_key)
    print(f"rekeyed: {', '.join(str(p) for p in done)}")
    print(f"-- set store.encryption_key to the value of {args.new_key_env} before the next run")
    return EXIT_OK


def cmd_demo(args: argparse.Namespace) -> int:
    from sidecar.demo.tour import run_demo

    return run_demo(port=args.port, keep=args.keep)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sidecar",
        description="Offline-first sync beside an existing PostgreSQL database.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("run", help="capture changes and serve the sync API")
    p.add_argument("--config", "-c", default=_default_config(), help="YAML config file")
    p.set_defaults(func=cmd_run)
    p = sub.add_parser("check", help="validate the config and check the database")
    p.add_argument("--config", "-c", default=_default_config(), help="YAML config file")
    p.add_argument("--strict", action="store_true", help="exit 1 when there are warnings")
    p.set_defaults(func=cmd_check)
    p = sub.add_parser("init", help="create the publication and the slot (prints the SQL)")
    p.add_argument("--config", "-c", default=_default_config(), help="YAML config file")
    p.add_argument("--dry-run", action="store_true", help="print the SQL, change nothing")
    p.set_defaults(func=cmd_init)
    p = sub.add_parser("drop", help="drop the slot and the publication (no WAL stays pinned)")
    p.add_argument("--config", "-c", default=_default_config(), help="YAML config file")
    p.add_argument("--yes", "-y", action="store_true", help="do not ask for confirmation")
    p.add_argument("--dry-run", action="store_true", help="print the SQL, change nothing")
    p.add_argument(
        "--keep-publication", action="store_true", help="drop only the slot (a DBA's publication)"
    )
    p.set_defaults(func=cmd_drop)
    p = sub.add_parser("status", help="slot, WAL retained, lag, store and live clients")
    p.add_argument("--config", "-c", default=_default_config(), help="YAML config file")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_status)
    p = sub.add_parser(
        "backup", help="copy the SQLite store to a file while the sidecar runs (VACUUM INTO)"
    )
    p.add_argument("--config", "-c", default=_default_config(), help="YAML config file")
    p.add_argument("--to", required=True, help="the backup file (and <file>.pending)")
    p.add_argument("--force", action="store_true", help="replace an existing backup file")
    p.set_defaults(func=cmd_backup)
    p = sub.add_parser(
        "migrate-store",
        help="copy an SQLite store into the config's PostgreSQL store (cursors stay valid)",
    )
    p.add_argument("--config", "-c", default=_default_config(), help="the config with store.url")
    p.add_argument("--from", dest="source", required=True, help="the SQLite store file to copy")
    p.add_argument(
        "--from-key-env",
        metavar="VAR",
        help="environment variable holding the key of an encrypted SQLite store",
    )
    p.add_argument("--force", action="store_true", help="replace what the target store holds")
    p.set_defaults(func=cmd_migrate_store)
    p = sub.add_parser(
        "rekey", help="change the key of the encrypted SQLite store (the sidecar stopped)"
    )
    p.add_argument("--config", "-c", default=_default_config(), help="YAML config file")
    p.add_argument(
        "--new-key-env",
        required=True,
        metavar="VAR",
        help="environment variable holding the new key (a key is never an argument)",
    )
    p.set_defaults(func=cmd_rekey)
    p = sub.add_parser("demo", help="start a private PostgreSQL with a demo app and sync it")
    p.add_argument("--port", type=int, default=8080, help="HTTP port (default 8080)")
    p.add_argument("--keep", action="store_true", help="keep the demo data directory")
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except SidecarError as exc:
        _fail(args.command, exc.detail)
        return EXIT_FAIL
    except KeyboardInterrupt:
        return EXIT_OK
    except psycopg.OperationalError as exc:
        _fail(args.command, f"cannot reach the database: {exc}")
        return EXIT_FAIL
    except OSError as exc:
        _fail(args.command, str(exc))
        return EXIT_FAIL


def _fail(command: str, message: str) -> None:
    """A failure on stderr, redacted as log lines are (tokens, passwords in URLs)."""
    print(f"sidecar {command}: {Redactor().text(message)}", file=sys.stderr)


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())
