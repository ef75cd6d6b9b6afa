"""The SQLite store: one file in the data directory, WAL mode, owner-only, versioned schema.

Migrations are the numbered `migrations/NNNN_name.sql` files, applied in order inside one
transaction each; `PRAGMA user_version` records the last one applied. Other modules use the
functions of this package, never SQL of their own.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from contextlib import contextmanager
from importlib import resources
from pathlib import Path
from typing import Iterator

from qfserve.store.secret_box import SecretBox, is_sealed, load_secret_box

DB_NAME = "qfserve.db"


def _migrations() -> list[tuple[int, str, str]]:
    folder = resources.files("qfserve.store").joinpath("migrations")
    found = []
    for entry in folder.iterdir():
        name = entry.name
        if name.endswith(".sql") and name[:4].isdigit():
            found.append((int(name[:4]), name, entry.read_text(encoding="utf-8")))
    return sorted(found)


class Store:
    """A handle on the data directory's database; one SQLite connection per thread."""

    def __init__(self, data_dir: str | os.PathLike):
        self.data_dir = Path(data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.data_dir, 0o700)  # the database and the secret key live here: owner only
        self.path = self.data_dir / DB_NAME
        if not self.path.exists():
            # Create the file owner-only before SQLite opens it: it holds secrets.
            os.close(os.open(self.path, os.O_CREAT | os.O_WRONLY, 0o600))
        os.chmod(self.path, 0o600)
        self._local = threading.local()
        self.migrate()
        self.secrets = self._open_secrets()

    def connection(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=10.0, isolation_level=None)
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA foreign_keys=ON")
            conn.execute("PRAGMA synchronous=NORMAL")
            # Deleted rows (a rotated secret, a revoked token) are zeroed, not left in free pages.
            conn.execute("PRAGMA secure_delete=ON")
            self._local.conn = conn
        return conn

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        conn = self.connection()
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def schema_version(self) -> int:
        return self.connection().execute("PRAGMA user_version").fetchone()[0]

    def migrate(self) -> int:
        """Apply pending migrations; returns the resulting version."""
        with self.transaction() as conn:
            current = conn.execute("PRAGMA user_version").fetchone()[0]
            for version, _name, sql in _migrations():
                if version <= current:
                    continue
                for statement in _split(sql):
                    conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {version}")
                current = version
        for suffix in ("-wal", "-shm"):
            side = Path(str(self.path) + suffix)
            if side.exists():
                os.chmod(side, 0o600)
        return current

    def _open_secrets(self) -> SecretBox:
        """The box for secrets at rest; seals any plaintext ones left from before encryption."""
        conn = self.connection()
        rows = conn.execute("SELECT id, secret_access_key FROM apps").fetchall()
        box = load_secret_box(self.data_dir, sealed_rows_exist=any(is_sealed(r[1]) for r in rows))
        plain = [(box.seal(r[1]), r[0]) for r in rows if not is_sealed(r[1])]
        if plain:
            with self.transaction() as tx:
                tx.executemany("UPDATE apps SET secret_access_key = ? WHERE id = ?", plain)
        return box

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None


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
