-- squidmesh schema version 8 (SQLite): flow control (queues, rate limits).
--
-- A queued step's jobs carry {"queue", "flow_key", "priority"} in their data; generated
-- (virtual) columns expose them to the claim, so writes never name them. The partial
-- index serves the queue-aware claim. squidmesh_flow_starts holds one row per attempt
-- start of a rate-limited queue within its window; squidmesh_flow_keys when each key of
-- a queue was last given a slot (claims rotate across keys).
-- Must equal squidmesh/storage/tables.py; tests/contract compares the two.
ALTER TABLE squidmesh_jobs ADD COLUMN queue TEXT GENERATED ALWAYS AS (json_extract(data, '$.queue')) VIRTUAL;
ALTER TABLE squidmesh_jobs ADD COLUMN flow_key TEXT GENERATED ALWAYS AS (json_extract(data, '$.flow_key')) VIRTUAL;
ALTER TABLE squidmesh_jobs ADD COLUMN priority INTEGER GENERATED ALWAYS AS (CAST(json_extract(data, '$.priority') AS INTEGER)) VIRTUAL;
CREATE INDEX squidmesh_jobs_queue_idx ON squidmesh_jobs (queue, flow_key) WHERE queue IS NOT NULL;
CREATE TABLE squidmesh_flow_starts (
    id INTEGER NOT NULL PRIMARY KEY,
    queue TEXT NOT NULL,
    at DATETIME NOT NULL
);
CREATE INDEX squidmesh_flow_starts_queue_idx ON squidmesh_flow_starts (queue, at);
CREATE TABLE squidmesh_flow_keys (
    queue TEXT NOT NULL,
    flow_key TEXT NOT NULL,
    served_at DATETIME NOT NULL,
    PRIMARY KEY (queue, flow_key)
);
