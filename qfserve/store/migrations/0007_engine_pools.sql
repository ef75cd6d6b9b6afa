-- Remote engine pools (issue 11): a name and the replica URLs of one OpenAI-compatible server
-- fleet (vLLM). `options` is JSON (context length, chat template for servers without
-- `/tokenize` over messages, timeouts, the declared base model's hash).
CREATE TABLE engine_pools (
    name        TEXT    PRIMARY KEY,
    urls        TEXT    NOT NULL,
    api_key_env TEXT,
    options     TEXT    NOT NULL DEFAULT '{}',
    created_at  INTEGER NOT NULL
);

-- The pool a service runs on; NULL is the embedded engine.
ALTER TABLE services ADD COLUMN engine TEXT;
