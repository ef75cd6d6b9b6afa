-- Apps hold two credential pairs: API Key / Secret Key (for access tokens) and an IAM
-- Access Key / Secret Access Key (for bce-auth-v1 signatures). The Secret Key is only ever
-- compared, so it is stored hashed; the Secret Access Key keys an HMAC, so it must be kept.
CREATE TABLE apps (
    id                INTEGER PRIMARY KEY,
    name              TEXT    NOT NULL UNIQUE,
    api_key           TEXT    NOT NULL UNIQUE,
    secret_key_hash   TEXT    NOT NULL,
    access_key        TEXT    NOT NULL UNIQUE,
    secret_access_key TEXT    NOT NULL,
    all_services      INTEGER NOT NULL DEFAULT 1,
    created_at        INTEGER NOT NULL
);

-- Services an app may call when all_services is 0.
CREATE TABLE grants (
    app_id   INTEGER NOT NULL REFERENCES apps(id) ON DELETE CASCADE,
    api_path TEXT    NOT NULL,
    PRIMARY KEY (app_id, api_path)
);

-- Access tokens, stored as sha256 of the token text.
CREATE TABLE tokens (
    token_hash TEXT    PRIMARY KEY,
    app_id     INTEGER NOT NULL REFERENCES apps(id) ON DELETE CASCADE,
    expires_at INTEGER NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE INDEX tokens_app ON tokens(app_id);

CREATE TABLE services (
    id         INTEGER PRIMARY KEY,
    api_path   TEXT    NOT NULL UNIQUE,
    model      TEXT    NOT NULL,           -- "default" or a GGUF path
    adapter    TEXT,                       -- adapter folder, or NULL for the base model
    profile    TEXT    NOT NULL,
    rpm        INTEGER NOT NULL,
    tpm        INTEGER NOT NULL,
    safety     TEXT    NOT NULL DEFAULT 'default',
    created_at INTEGER NOT NULL
);
