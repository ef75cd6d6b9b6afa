-- The v2 surface (Qianfan v2, OpenAI-compatible): each app gets an API key in Qianfan's
-- `bce-v3/ALTAK-…/…` shape, sent as `Authorization: Bearer …`. Like the Secret Key it is only ever
-- compared, so only its sha256 is kept. Apps created before this migration have none until
-- `qfserve app rotate`.
ALTER TABLE apps ADD COLUMN v2_key_hash TEXT;
CREATE UNIQUE INDEX apps_v2_key ON apps(v2_key_hash);

-- Bearer tokens issued by `GET /v1/BCE-BEARER/token` (signed with the app's IAM AK/SK), stored as
-- sha256 of the token text, each with its own expiry.
CREATE TABLE bearer_tokens (
    token_hash TEXT    PRIMARY KEY,
    app_id     INTEGER NOT NULL REFERENCES apps(id) ON DELETE CASCADE,
    expires_at INTEGER NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE INDEX bearer_tokens_app ON bearer_tokens(app_id);

-- A v2 key retired by `app rotate --grace` stays valid with the rest of the old credentials.
ALTER TABLE retired_credentials ADD COLUMN v2_key_hash TEXT;
CREATE INDEX retired_v2_key ON retired_credentials(v2_key_hash);
