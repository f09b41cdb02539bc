"""The SQLite store's files on disk: who may read them, and how they are opened.

Permissions: the store's directory is created `0700` and every file of the store (the
database, its `-wal` and `-shm`, the pending file `<store>.pending` and its own `-wal`
and `-shm`, the empty lock file `<store>.lock`) `0600`. SQLite gives a database's `-wal`
and `-shm` the mode of the database file, so creating that file `0600` before SQLite
opens it is enough; a file of an older run with a wider mode is tightened (it is the
sidecar's own). A directory that exists already is not the sidecar's to change (it may
be shared, e.g. `/var/lib` or a volume): a wider mode than `0700` is logged as a
warning, once per directory, and left as it is.

Encryption (`store.encryption_key`): every connection, the writer's, each reader's, the
pending file's and `sidecar status`'s, is opened through SQLCipher (the `sqlcipher3`
binding, a self-contained wheel: the `encryption` extra) and keyed with `PRAGMA key`
before anything is read. A wrong key (or a store made without one, or one made with one
opened without it) is `StoreKeyInvalid`, not a traceback. `rekey` changes the key of the
store and of its pending file (`PRAGMA rekey`); `sidecar rekey` calls it.
"""

from __future__ import annotations

import fcntl
import importlib
import os
import sqlite3
import stat
from pathlib import Path
from types import ModuleType
from typing import Any, cast

import structlog

from sidecar.errors import EncryptionUnavailable, StoreInUse, StoreKeyInvalid

log = structlog.get_logger(__name__)

FILE_MODE = 0o600
DIR_MODE = 0o700
_SUFFIXES = ("", "-wal", "-shm", "-journal")
_NOTADB = 26  # SQLITE_NOTADB: what a wrong key (or none) looks like
_warned: set[Path] = set()


def _cipher() -> ModuleType | None:
    try:
        return importlib.import_module("sqlcipher3.dbapi2")
    except ImportError:
        return None


_CIPHER = _cipher()
# Every error either module raises: `except ERRORS` where sqlite3.Error was meant.
ERRORS: tuple[type[Exception], ...] = (sqlite3.Error,) + (
    (cast(type[Exception], _CIPHER.Error),) if _CIPHER is not None else ()
)
DATABASE_ERRORS: tuple[type[Exception], ...] = (sqlite3.DatabaseError,) + (
    (cast(type[Exception], _CIPHER.DatabaseError),) if _CIPHER is not None else ()
)


def encryption_available() -> bool:
    """The SQLCipher binding is installed."""
    return _CIPHER is not None


def store_files(path: Path) -> list[Path]:
    """The files of the store at `path` that exist now (database, pending file, theirs)."""
    bases = [path, path.with_name(path.name + ".pending")]
    found = [Path(f"{b}{s}") for b in bases for s in _SUFFIXES]
    return [p for p in [*found, lock_path(path)] if p.exists()]


def prepare(path: Path) -> None:
    """Before SQLite opens the database at `path`: its directory (made `0700` if missing,
    a warning if it lets others in), the file made `0600` (or tightened to it), and any
    `-wal`/`-shm` of an earlier run tightened too."""
    directory = path.parent
    if not directory.exists():
        directory.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
        os.chmod(directory, DIR_MODE)  # mkdir's mode passes through the umask
    elif directory not in _warned:
        mode = stat.S_IMODE(directory.stat().st_mode)
        if mode & 0o077:
            _warned.add(directory)
            log.warning(
                "store_directory_open_to_others",
                directory=str(directory),
                mode=oct(mode),
                hint="the store's files are 0600; chmod 700 the directory to hide their names",
            )
    _create(path)
    for suffix in _SUFFIXES:
        tighten(Path(f"{path}{suffix}"))


def _create(path: Path) -> None:
    """`path` made `0600` if it does not exist. An existing database file is never opened
    here: closing any descriptor of a file drops the POSIX locks SQLite holds on it in
    this process."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
    except FileExistsError:
        return
    os.close(fd)


def tighten(path: Path) -> None:
    """`path` (if it exists and is ours) made `0600`."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return
    if st.st_uid == os.geteuid() and stat.S_IMODE(st.st_mode) & 0o177:
        os.chmod(path, FILE_MODE)


def lock_path(path: Path) -> Path:
    """The lock file of the store at `path` (`<store>.lock`, empty)."""
    return path.with_name(path.name + ".lock")


def _lock_file(path: Path) -> int:
    lock = lock_path(path)
    fd = os.open(lock, os.O_RDONLY | os.O_CREAT, FILE_MODE)
    tighten(lock)
    return fd


def hold(path: Path) -> int:
    """A shared `flock` on the lock file of the store at `path` while a store has it open
    (a file descriptor to close): `rekey` takes it exclusively, so it never runs beside a
    sidecar. (A file of its own: the database file is only ever opened by SQLite.)"""
    fd = _lock_file(path)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise StoreInUse(
            f"the store at {path} is being rekeyed: wait for `sidecar rekey`"
        ) from None
    return fd


def _quote(key: str) -> str:
    return "'" + key.replace("'", "''") + "'"


def connect(
    path: Path, key: str | None, *, readonly: bool = False, what: str = "store", **kwargs: Any
) -> sqlite3.Connection:
    """A connection to the database at `path` (read-only: `readonly`), through SQLCipher
    and keyed when `key` is set, checked readable: `StoreKeyInvalid` if it is not."""
    target, uri = (f"file:{path}?mode=ro", True) if readonly else (str(path), False)
    if key is None:
        conn = sqlite3.connect(target, uri=uri, **kwargs)
    else:
        if _CIPHER is None:
            raise EncryptionUnavailable(
                "store.encryption_key is set but the SQLCipher binding is not installed: "
                "pip install 'sidecar[encryption]' (the sqlcipher3 wheel)"
            )
        conn = cast(sqlite3.Connection, _CIPHER.connect(target, uri=uri, **kwargs))
        conn.execute("PRAGMA cipher_log_level = NONE")  # no stderr lines of its own
        conn.execute(f"PRAGMA key = {_quote(key)}")
    try:
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except DATABASE_ERRORS as exc:
        conn.close()
        if getattr(exc, "sqlite_errorcode", None) != _NOTADB:
            raise
        if key is None:
            detail = (
                f"the {what} at {path} cannot be read: it is encrypted (set "
                "store.encryption_key) or not a SQLite database"
            )
        else:
            detail = (
                f"the {what} at {path} cannot be read with store.encryption_key: a wrong "
                "key, or a store made without encryption (remove it: the next run rebuilds it)"
            )
        raise StoreKeyInvalid(detail) from None
    return conn


def rekey(path: Path, key: str | None, new_key: str) -> list[Path]:
    """Change the key of the store at `path` and of its pending file from `key` to
    `new_key`; the files rekeyed. The sidecar must not be running (its connections keep
    the old key): `sidecar rekey` is run with it stopped."""
    if not new_key:
        raise StoreKeyInvalid("the new store key is empty")
    if key is None:
        raise StoreKeyInvalid(
            "store.encryption_key is not set: a store made without a key cannot be rekeyed "
            "(set the key and remove the store: the next run rebuilds it encrypted)"
        )
    if not path.exists():
        raise StoreKeyInvalid(f"there is no store at {path} to rekey")
    fd = _lock_file(path)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StoreInUse(
                f"the store at {path} is open in a running sidecar: stop it, then rekey"
            ) from None
        bases = [path, path.with_name(path.name + ".pending")]
        conns = [
            connect(b, key, what="store" if b == path else "pending file")
            for b in bases
            if b.exists()
        ]  # both read with the old key before either changes
        try:
            for conn in conns:
                conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                conn.execute(f"PRAGMA rekey = {_quote(new_key)}")
                conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            for conn in conns:
                conn.close()
        return [b for b in bases if b.exists()]
    finally:
        os.close(fd)  # the lock goes with it
