-- The web console (/console/): one-time sign-in links, browser sessions, uploaded data sets and
-- fine-tuning jobs. Tokens are kept as sha256 hashes only: the database never holds a usable link
-- or cookie.
CREATE TABLE console_signin_tokens (
    token_hash TEXT    PRIMARY KEY,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL
);

CREATE TABLE console_sessions (
    token_hash TEXT    PRIMARY KEY,
    csrf_token TEXT    NOT NULL,      -- sent back by the page on every state-changing request
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL
);

-- Uploaded Qianfan-format JSONL files that passed validation; the file lives in the data dir.
CREATE TABLE console_datasets (
    id            INTEGER PRIMARY KEY,
    name          TEXT    NOT NULL,
    path          TEXT    NOT NULL,
    conversations INTEGER NOT NULL,
    created_at    INTEGER NOT NULL
);

-- Fine-tuning jobs started from the console: a `qfserve sft train` process writing into out_dir.
CREATE TABLE console_jobs (
    id          INTEGER PRIMARY KEY,
    name        TEXT    NOT NULL UNIQUE,
    dataset_id  INTEGER NOT NULL REFERENCES console_datasets(id),
    out_dir     TEXT    NOT NULL,
    config      TEXT    NOT NULL,     -- JSON: the TrainConfig fields given
    status      TEXT    NOT NULL,     -- queued, running, succeeded, failed, cancelled
    pid         INTEGER,
    error       TEXT,
    eval_status TEXT,                 -- NULL, running, succeeded, failed
    eval_result TEXT,                 -- JSON from `qfserve sft eval --json`, or the error
    service     TEXT,                 -- api_path it was published at
    created_at  INTEGER NOT NULL,
    finished_at INTEGER
);
