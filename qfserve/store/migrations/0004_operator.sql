-- Per-service sampling defaults the seed does not name; NULL means the engine's default.
ALTER TABLE services ADD COLUMN top_k INTEGER;
ALTER TABLE services ADD COLUMN min_p REAL;

-- Credentials replaced by `qfserve app rotate` stay valid until `valid_until` (the grace period),
-- so clients can switch without an outage. Same shapes as the columns of `apps`.
CREATE TABLE retired_credentials (
    id                INTEGER PRIMARY KEY,
    app_id            INTEGER NOT NULL REFERENCES apps(id) ON DELETE CASCADE,
    api_key           TEXT    NOT NULL,
    secret_key_hash   TEXT    NOT NULL,
    access_key        TEXT    NOT NULL,
    secret_access_key TEXT    NOT NULL,
    valid_until       INTEGER NOT NULL
);
CREATE INDEX retired_api_key ON retired_credentials(api_key);
CREATE INDEX retired_access_key ON retired_credentials(access_key);

-- A token issued before a rotation (or with retired credentials) is revoked at the end of the
-- grace period: from `revoked_at` on it answers 110, like a deleted token. NULL: not revoked.
ALTER TABLE tokens ADD COLUMN revoked_at INTEGER;
