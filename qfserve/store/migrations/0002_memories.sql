-- Long-term memories about the end users of an app's service (the chat body's user_id).
-- Scoped by (app, service, user): one app never sees another's users, and a user's memories in
-- one service are not recalled in another. Deleting the app deletes its users' memories.
--
-- `slot` names what a memory is about ("location", "name", "pref:咖啡", ...): a newer memory with
-- the same slot supersedes the older one, which is kept and pointed at the newer (superseded_by),
-- never overwritten. superseded_by has no foreign key on purpose: deleting the newer memory must
-- not turn the outdated one back into a current one (ON DELETE SET NULL would).
-- Times are unix seconds as REAL, so least-recently-used order is exact within a second.
CREATE TABLE memories (
    id            INTEGER PRIMARY KEY,
    app_id        INTEGER NOT NULL REFERENCES apps(id) ON DELETE CASCADE,
    api_path      TEXT    NOT NULL,
    user_id       TEXT    NOT NULL,
    slot          TEXT    NOT NULL,
    text          TEXT    NOT NULL,
    extractor     TEXT    NOT NULL,       -- "rules" (level 1) or "model" (level 2)
    request_id    TEXT    NOT NULL,       -- the chat request it was extracted from
    round         INTEGER NOT NULL,       -- which user turn of that conversation (1-based)
    created_at    REAL    NOT NULL,
    last_used_at  REAL    NOT NULL,       -- creation, then each time it is recalled
    superseded_by INTEGER
);
CREATE INDEX memories_owner ON memories(app_id, user_id, api_path);
