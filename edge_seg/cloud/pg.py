"""PostgreSQL connections of the fleet store: one-line errors, and "the server went away" told apart.

``connect(url, migrate=...)`` opens an autocommit connection (each statement its own transaction
unless inside ``con.transaction()``), applies or checks the schema (``edge_seg.cloud.migrations``)
and raises ``StoreError`` with one line for a bad URL, an unreachable server, a refused login or a
schema at another version. ``guard(con)`` turns errors that mean the server is gone (connection
lost, shut down, out of resources) into ``StoreUnavailableError``: the consumer must then stop
acknowledging; everything else (a message the database rejects) stays a normal error.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from edge_seg.cloud import migrations
from edge_seg.errors import StoreError, StoreUnavailableError

# SQLSTATE classes that mean the server, not the statement, is the problem
UNAVAILABLE_CLASSES = ("08", "53", "57", "58")


def where(url: str) -> str:
    """``postgresql://host:port/dbname`` of a URL, without user or password."""
    from psycopg.conninfo import conninfo_to_dict

    try:
        info = conninfo_to_dict(url)
    except Exception:  # noqa: BLE001 - a URL libpq cannot parse: name no part of it (it may hold a password)
        return "postgresql://(unparsable URL)"
    return f"postgresql://{info.get('host', 'localhost')}:{info.get('port', 5432)}/{info.get('dbname', '')}"


def first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return " ".join(text[0].split())[:300] if text else type(err).__name__


def connect(url: str, *, migrate: bool = False, application: str = "edge-seg"):
    """An autocommit connection to a database at the current schema version (see the module docstring)."""
    import psycopg

    place = where(url)
    try:
        con = psycopg.connect(url, autocommit=True, connect_timeout=5, application_name=application)
    except psycopg.ProgrammingError as err:
        raise StoreError(f"bad PostgreSQL URL ({first_line(err)}): postgresql://user@host:5432/dbname") from None
    except psycopg.OperationalError as err:
        raise StoreError(f"cannot connect to PostgreSQL at {place}: {first_line(err)}") from None
    try:
        if migrate:
            migrations.migrate(con)
        migrations.check(con, place)
    except BaseException:
        con.close()
        raise
    return con


def is_unavailable(con, err: BaseException) -> bool:
    """True when ``err`` means the server is gone or cannot work, not that a statement was wrong."""
    import psycopg

    if not isinstance(err, psycopg.Error):
        return False
    return bool(con.closed or con.broken or isinstance(err, psycopg.InterfaceError)
                or (err.sqlstate or "")[:2] in UNAVAILABLE_CLASSES)


@contextmanager
def guard(con, place: str) -> Iterator[None]:
    """Raise ``StoreUnavailableError`` for errors that mean the server went away (see ``is_unavailable``)."""
    try:
        yield
    except Exception as err:
        if is_unavailable(con, err):
            raise StoreUnavailableError(f"PostgreSQL at {place} went away: {first_line(err)}") from None
        raise


__all__ = ["connect", "first_line", "guard", "is_unavailable", "where"]
