"""The store: SQLite in the data directory (the embedded default) or PostgreSQL (`--database-url`).

One schema (`schema.py`, SQLAlchemy Core) and one migration history (Alembic, `schema_history/`)
serve both. A SQLite data directory made before Alembic (its version in `PRAGMA user_version`,
from the numbered `migrations/NNNN_*.sql`) is first brought to the last numbered version, then
marked as Alembic's baseline: it upgrades in place with nothing lost.

Other modules use the functions of this package, never SQL of their own. Their statements are
portable SQL with `?` parameters (`ON CONFLICT`, `RETURNING`: both databases have them); each
thread holds one connection, in autocommit, and `transaction()` wraps a block in one transaction
(SQLite: `BEGIN IMMEDIATE`, taking the write lock up front).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import sqlite3
import threading
from contextlib import contextmanager
from importlib import resources
from pathlib import Path
from typing import Callable, Iterator, TypeVar

from sqlalchemy import create_engine, event, exc, text
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from qfserve.store.secret_box import SecretBox, is_sealed, load_secret_box

T = TypeVar("T")

DB_NAME = "qfserve.db"
BASELINE = "0007"  # the Alembic revision equal to the last numbered SQL migration
MIGRATION_LOCK = 0x7166736572  # PostgreSQL advisory lock key ("qfser") held while migrating


def _migrations() -> list[tuple[int, str, str]]:
    """The numbered SQL migrations of SQLite data dirs made before Alembic (frozen history)."""
    folder = resources.files("qfserve.store").joinpath("migrations")
    found = []
    for entry in folder.iterdir():
        name = entry.name
        if name.endswith(".sql") and name[:4].isdigit():
            found.append((int(name[:4]), name, entry.read_text(encoding="utf-8")))
    return sorted(found)


def normalize_url(url: str) -> str:
    """`postgresql://…` means the psycopg (3) driver; SQLAlchemy alone would pick psycopg2."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    return url


def display_url(url: str) -> str:
    return make_url(url).render_as_string(hide_password=True)


class Row:
    """A result row addressed by position or by column name (as sqlite3.Row is)."""

    __slots__ = ("_values", "_index")

    def __init__(self, values: tuple, index: dict[str, int]):
        self._values = values
        self._index = index

    def __getitem__(self, key):
        if isinstance(key, str):
            return self._values[self._index[key]]
        return self._values[key]

    def keys(self) -> list[str]:
        return list(self._index)

    def __iter__(self):
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __eq__(self, other) -> bool:
        return tuple(self) == tuple(other) if isinstance(other, (Row, tuple)) else NotImplemented

    def __repr__(self) -> str:
        return f"Row({dict(zip(self._index, self._values))!r})"


class Result:
    def __init__(self, result):
        self._result = result
        self.rowcount = result.rowcount
        self._index = {k: i for i, k in enumerate(result.keys())} if result.returns_rows else {}

    def fetchone(self) -> Row | None:
        row = self._result.fetchone()
        return None if row is None else Row(tuple(row), self._index)

    def fetchall(self) -> list[Row]:
        return [Row(tuple(r), self._index) for r in self._result.fetchall()]

    def __iter__(self):
        for row in self._result:
            yield Row(tuple(row), self._index)

    @property
    def lastrowid(self):
        return self._result.lastrowid


@functools.lru_cache(maxsize=1024)
def _statement(sql: str):
    """`?` placeholders (outside quotes) → named ones, as SQLAlchemy's text() takes them."""
    out, n, quote = [], 0, None
    for ch in sql:
        if quote:
            quote = None if ch == quote else quote
        elif ch in ("'", '"'):
            quote = ch
        elif ch == "?":
            out.append(f":p{n}")
            n += 1
            continue
        out.append(ch)
    return text("".join(out)), n


def _params(params, n: int) -> dict:
    if isinstance(params, dict):
        return params
    values = tuple(params or ())
    if len(values) != n:
        raise ValueError(f"the statement takes {n} parameters, {len(values)} given")
    return {f"p{i}": v for i, v in enumerate(values)}


class Connection:
    """One thread's connection: `execute(sql, params)` with `?` placeholders, rows by name."""

    def __init__(self, store: "Store"):
        self._store = store
        self._sa = store.engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        self.in_transaction = False

    def execute(self, sql: str, params=()) -> Result:
        statement, n = _statement(sql)
        try:
            return Result(self._sa.execute(statement, _params(params, n)))
        except exc.DBAPIError as error:
            if error.connection_invalidated:
                self._store._forget(self)
            raise

    def executemany(self, sql: str, seq) -> Result | None:
        statement, n = _statement(sql)
        rows = [_params(p, n) for p in seq]
        if not rows:
            return None
        return Result(self._sa.execute(statement, rows))

    def iterdump(self):
        """SQLite only: the database as SQL text."""
        return self._sa.connection.dbapi_connection.iterdump()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._sa.close()


class Store:
    """A handle on the database; one connection per thread."""

    def __init__(self, data_dir: str | os.PathLike, database_url: str | None = None):
        self.data_dir = Path(data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.data_dir, 0o700)  # the database and the secret key live here: owner only
        self.url = normalize_url(database_url) if database_url else None
        self.path: Path | None = None
        if self.url is None:
            self.path = self.data_dir / DB_NAME
            if not self.path.exists():
                # Create the file owner-only before SQLite opens it: it holds secrets.
                os.close(os.open(self.path, os.O_CREAT | os.O_WRONLY, 0o600))
            os.chmod(self.path, 0o600)
            self.engine = create_engine(f"sqlite:///{self.path}", poolclass=NullPool,
                                        connect_args={"timeout": 10.0, "isolation_level": None})
            event.listen(self.engine, "connect", _sqlite_pragmas)
        else:
            self.engine = create_engine(self.url, poolclass=NullPool)
        self.dialect = self.engine.dialect.name
        self.location = str(self.path) if self.path else display_url(self.url)
        self._local = threading.local()
        self._connections: set[Connection] = set()
        self._lock = threading.Lock()
        self.migrate()
        self.secrets = self._open_secrets()

    # ---- connections ---------------------------------------------------------------------------

    def connection(self) -> Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = Connection(self)
            self._local.conn = conn
            with self._lock:
                self._connections.add(conn)
        return conn

    async def read(self, look_up: Callable[..., T], *args) -> T:
        """Run a point read from the event loop: inline on SQLite, in the thread pool otherwise.

        A SQLite lookup by key takes tens of microseconds and, in WAL mode, never waits for a
        writer; a trip through the thread pool costs more than that, and under a flood its answer
        waits behind every other request's work on the event loop. (Measured in bench/flood.py: a
        refusal went through two such trips before it knew it was a refusal.) A PostgreSQL read
        crosses the network, so it goes to the pool."""
        if self.dialect == "sqlite":
            return look_up(*args)
        return await asyncio.to_thread(look_up, *args)

    def _forget(self, conn: Connection) -> None:
        """A connection the server dropped (a PostgreSQL restart): the next call opens a new one."""
        if getattr(self._local, "conn", None) is conn:
            self._local.conn = None
        with self._lock:
            self._connections.discard(conn)
        conn.close()

    @contextmanager
    def transaction(self) -> Iterator[Connection]:
        conn = self.connection()
        conn.execute("BEGIN IMMEDIATE" if self.dialect == "sqlite" else "BEGIN")
        conn.in_transaction = True
        try:
            yield conn
        except BaseException:
            with contextlib.suppress(Exception):
                conn.execute("ROLLBACK")
            raise
        finally:
            conn.in_transaction = False
        conn.execute("COMMIT")

    # ---- schema ------------------------------------------------------------------------------

    def schema_version(self) -> int:
        """The Alembic revision the database is at, as a number (it continues the numbered history)."""
        row = self.connection().execute("SELECT version_num FROM alembic_version").fetchone()
        return int(row[0]) if row else 0

    def migrate(self) -> int:
        """Bring the schema to the newest revision; returns it. Safe with several processes."""
        from alembic import command

        with self._migration_lock(), self.engine.connect() as conn:
            config = _alembic_config(conn)
            if self.dialect == "sqlite" and _legacy_version(conn) and not _has_alembic(conn):
                self._upgrade_numbered(conn)
                command.stamp(config, BASELINE)
            command.upgrade(config, "head")
            conn.commit()
        if self.path is not None:
            for suffix in ("-wal", "-shm"):
                side = Path(str(self.path) + suffix)
                if side.exists():
                    os.chmod(side, 0o600)
        return self.schema_version()

    def _upgrade_numbered(self, conn) -> None:
        """A SQLite data dir from before Alembic: the remaining numbered migrations, one transaction."""
        raw = conn.connection.dbapi_connection
        current = raw.execute("PRAGMA user_version").fetchone()[0]
        raw.execute("BEGIN IMMEDIATE")
        try:
            for version, _name, sql in _migrations():
                if current < version <= int(BASELINE):
                    for statement in _split(sql):
                        raw.execute(statement)
                    raw.execute(f"PRAGMA user_version = {version}")
            raw.execute("COMMIT")
        except BaseException:
            raw.execute("ROLLBACK")
            raise

    @contextmanager
    def _migration_lock(self):
        if self.dialect == "postgresql":
            with self.engine.connect() as conn:
                conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": MIGRATION_LOCK})
                try:
                    yield
                finally:
                    conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": MIGRATION_LOCK})
                    conn.commit()
            return
        import fcntl

        with open(self.data_dir / ".qfserve-migrate.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _open_secrets(self) -> SecretBox:
        """The box for secrets at rest; seals any plaintext ones left from before encryption."""
        conn = self.connection()
        rows = conn.execute("SELECT id, secret_access_key FROM apps").fetchall()
        sealed = [r[1] for r in rows if is_sealed(r[1])]
        box = load_secret_box(self.data_dir, sealed_rows_exist=bool(sealed))
        if sealed:
            box.open(sealed[0])  # the wrong key (another gateway's) fails here, at start, not per signature
        plain = [(box.seal(r[1]), r[0]) for r in rows if not is_sealed(r[1])]
        if plain:
            with self.transaction() as tx:
                tx.executemany("UPDATE apps SET secret_access_key = ? WHERE id = ?", plain)
        return box

    def close(self) -> None:
        with self._lock:
            connections, self._connections = list(self._connections), set()
        for conn in connections:
            conn.close()
        self._local = threading.local()
        self.engine.dispose()


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    dbapi_connection.execute("PRAGMA journal_mode=WAL")
    dbapi_connection.execute("PRAGMA foreign_keys=ON")
    dbapi_connection.execute("PRAGMA synchronous=NORMAL")
    # Deleted rows (a rotated secret, a revoked token) are zeroed, not left in free pages.
    dbapi_connection.execute("PRAGMA secure_delete=ON")


def _alembic_config(connection):
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(resources.files("qfserve.store").joinpath("schema_history")))
    config.attributes["connection"] = connection
    return config


def _legacy_version(conn) -> int:
    return conn.connection.dbapi_connection.execute("PRAGMA user_version").fetchone()[0]


def _has_alembic(conn) -> bool:
    found = conn.connection.dbapi_connection.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'alembic_version'").fetchone()
    return found is not None


def _split(sql: str) -> list[str]:
    """Split a migration file into statements (sqlite3 executes one at a time inside our transaction)."""
    statements, buffer = [], []
    for line in sql.splitlines():
        if line.strip().startswith("--"):
            continue
        buffer.append(line)
        joined = "\n".join(buffer)
        if sqlite3.complete_statement(joined):
            statements.append(joined.strip())
            buffer = []
    if "".join(buffer).strip():
        statements.append("\n".join(buffer).strip())
    return statements


def is_integrity_error(error: BaseException) -> bool:
    """A unique or foreign-key violation, from either database."""
    return isinstance(error, (exc.IntegrityError, sqlite3.IntegrityError))


__all__ = ["DB_NAME", "Store", "Connection", "Row", "normalize_url", "display_url", "is_integrity_error"]
