"""Where a study lives: storage URLs (passwords hidden), SQLite in write-ahead-log mode, heartbeats, and the
retries of workers that meet a new database at the same moment."""

from __future__ import annotations

import contextlib
import sqlite3
import time
from pathlib import Path
from typing import Any

import optuna

from wattless.errors import StorageError
from wattless.search.quiet import quiet
from wattless.search.resume import requeue_stale

__all__ = ["default_storage", "shown_url", "open_storage"]


def default_storage(out: str | Path) -> str:
    return f"sqlite:///{(Path(out) / 'study.db').resolve()}"


def shown_url(url: str) -> str:
    """The URL with any password hidden, for messages and files."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - a malformed URL is shown as given (it has no password to hide)
        return url


def _sqlite_wal(url: str) -> None:
    """Put a SQLite study in write-ahead-log mode (kept in the file): readers (a report, a second worker) never
    block the writer, and a process killed mid-write leaves the last committed state readable."""
    from sqlalchemy.engine import make_url

    database = make_url(url).database
    if database and database != ":memory:":
        with contextlib.closing(sqlite3.connect(database, timeout=60)) as con:
            con.execute("PRAGMA journal_mode=WAL")


def _engine_options(url: str) -> dict[str, Any]:
    """SQLAlchemy engine options per database (SQLite is put in WAL mode here)."""
    if url.startswith("sqlite"):
        try:
            _sqlite_wal(url)
        except (sqlite3.Error, ValueError, ImportError) as exc:
            raise StorageError(f"cannot open the study storage {shown_url(url)}: {type(exc).__name__}: {exc}. "
                               "Check that its folder exists and is writable") from None
        return {"connect_args": {"timeout": 60}}
    if url.startswith("postgresql"):
        return {"connect_args": {"connect_timeout": 10}, "pool_pre_ping": True}
    return {}


def _connect(url: str, engine: dict[str, Any]) -> optuna.storages.RDBStorage:
    from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError

    for attempt in range(5):
        try:
            with quiet():
                return optuna.storages.RDBStorage(url, engine_kwargs=engine, heartbeat_interval=30,
                                                  grace_period=120, heartbeat_stale_trial_callback=requeue_stale)
        except (IntegrityError, ProgrammingError, OperationalError) as exc:
            # workers meeting a new database create Optuna's tables at the same moment: one wins, the
            # others find the tables on the next try (SQLite says "table ... already exists")
            if attempt == 4 or (isinstance(exc, OperationalError) and "already exists" not in str(exc)):
                raise
            time.sleep(0.5 + attempt)


def with_driver(url: str) -> str:
    """``postgresql://`` (the form the docs give) with the driver that is installed: SQLAlchemy 2.1 reads the
    bare form as psycopg 3, and many machines have psycopg2 only."""
    import importlib.util

    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in ("postgresql", "postgres"):
        return url
    for module, dialect in (("psycopg", "postgresql+psycopg"), ("psycopg2", "postgresql+psycopg2")):
        if importlib.util.find_spec(module) is not None:
            return f"{dialect}://{rest}"
    return url  # neither: the error below says which driver to install


def open_storage(url: str) -> optuna.storages.RDBStorage:
    """An RDB storage with heartbeats (a worker that dies mid-trial has the trial retried elsewhere)."""
    from sqlalchemy.exc import SQLAlchemyError

    url = with_driver(url)
    engine = _engine_options(url)
    try:
        return _connect(url, engine)
    except (SQLAlchemyError, ImportError, ValueError, OSError, RuntimeError) as exc:
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise StorageError(
            f"cannot open the study storage {shown_url(url)}: {type(exc).__name__}: {detail}. Check the URL, that "
            "the database server is running and reachable from here, and that its driver is installed "
            "(PostgreSQL: pip install psycopg2-binary)"
        ) from None
