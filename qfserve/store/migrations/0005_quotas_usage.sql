-- Per-app quotas over all services (0: unlimited): requests per second, requests per day.
ALTER TABLE apps ADD COLUMN qps INTEGER NOT NULL DEFAULT 0;
ALTER TABLE apps ADD COLUMN daily_requests INTEGER NOT NULL DEFAULT 0;

-- What each app used, per service and day (YYYY-MM-DD in the quota time zone), for reporting:
-- answered requests and their tokens, added in batches by the server. Limits never read it, except
-- the in-process limiter restoring today's count after a restart.
CREATE TABLE usage (
    app_id            INTEGER NOT NULL REFERENCES apps(id) ON DELETE CASCADE,
    api_path          TEXT    NOT NULL,
    day               TEXT    NOT NULL,
    requests          INTEGER NOT NULL DEFAULT 0,
    prompt_tokens     INTEGER NOT NULL DEFAULT 0,
    completion_tokens INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (app_id, day, api_path)
);
