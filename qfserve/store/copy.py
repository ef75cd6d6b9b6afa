"""`qfserve db copy`: every table of one store into another (SQLite → PostgreSQL), checked by row counts.

The target is brought to the newest schema first and must be empty (a half-filled target would
mix two histories), but for the one-row state the schema seeds itself (the app id mark), which the
source's replaces. Encrypted secrets are copied as they are: the target must be opened with the
same secret key (`secret.key` in the data dir, or QFSERVE_SECRET_KEY). Rows go in foreign-key order, in one transaction on the target, ids kept;
PostgreSQL's id sequences are then moved past the copied ids, so new rows do not collide.
"""

from __future__ import annotations

from sqlalchemy import delete, func, insert, select, text

from qfserve.store import schema
from qfserve.store.db import Store

BATCH = 1000
# Tables the schema itself fills (one-row state): the source's row replaces the target's.
SEEDED = ("app_id_high_water",)


class CopyError(RuntimeError):
    pass


def row_counts(store: Store) -> dict[str, int]:
    with store.engine.connect() as conn:
        return {t.name: conn.execute(select(func.count()).select_from(t)).scalar_one()
                for t in schema.metadata.sorted_tables}


def copy_store(source: Store, target: Store) -> dict[str, int]:
    """Copy every row; returns the row count of each table (equal on both sides, or CopyError)."""
    busy = {name: n for name, n in row_counts(target).items() if n and name not in SEEDED}
    if busy:
        raise CopyError("the target database is not empty (" + ", ".join(f"{k}: {v} rows" for k, v in busy.items())
                        + "): copy into a new database")
    with source.engine.connect() as src, target.engine.begin() as dst:
        for table in schema.metadata.sorted_tables:
            if table.name in SEEDED:
                dst.execute(delete(table))
            batch = []
            for row in src.execute(select(table)).mappings():
                batch.append(dict(row))
                if len(batch) >= BATCH:
                    dst.execute(insert(table), batch)
                    batch = []
            if batch:
                dst.execute(insert(table), batch)
        if target.dialect == "postgresql":
            for table in schema.metadata.sorted_tables:
                if "id" in table.c and table.c.id.primary_key:
                    dst.execute(text(
                        f"SELECT setval(pg_get_serial_sequence('{table.name}', 'id'), "
                        f"COALESCE((SELECT MAX(id) FROM {table.name}), 0) + 1, false)"))
    copied, expected = row_counts(target), row_counts(source)
    if copied != expected:
        differ = {k: (expected[k], copied.get(k)) for k in expected if expected[k] != copied.get(k)}
        raise CopyError(f"row counts differ after the copy (source, target): {differ}")
    return copied
