-- Security hardening (issue 16).
--
-- App ids are never reused: a deleted app's id would otherwise go to the next app created, which
-- would inherit its rate-limit windows and the `-<id>` suffix of its old access tokens. SQLite
-- reuses the highest rowid after a delete unless the table is AUTOINCREMENT, and rebuilding `apps`
-- to add that would cascade-delete every grant, token and memory (foreign keys are on inside this
-- migration's transaction). So a one-row high-water mark instead: create_app takes the next id
-- from it. Starting it at the current highest id is the best an upgrade can do.
CREATE TABLE app_id_high_water (
    id      INTEGER PRIMARY KEY CHECK (id = 1),
    last_id INTEGER NOT NULL
);
INSERT INTO app_id_high_water (id, last_id) SELECT 1, COALESCE(MAX(id), 0) FROM apps;

-- The adapter GGUF's sha256, pinned at publish: a file changed afterwards is refused at load.
-- NULL for services published before this migration (and for services without an adapter).
ALTER TABLE services ADD COLUMN adapter_sha256 TEXT;

-- Whatever inserts an app, the mark covers its id.
CREATE TRIGGER apps_id_high_water AFTER INSERT ON apps
BEGIN
    UPDATE app_id_high_water SET last_id = MAX(last_id, NEW.id) WHERE id = 1;
END;
