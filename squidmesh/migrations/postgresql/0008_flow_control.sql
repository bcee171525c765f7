-- squidmesh schema version 8 (PostgreSQL): flow control (queues, rate limits).
--
-- 1. A queued step's jobs carry {"queue", "flow_key", "priority"} in their data
--    (squidmesh/core/flow.py). Generated columns expose them to the claim, so the write
--    function (0005, 0007) is unchanged: it never names these columns. Jobs of no queue
--    have NULL there, and the usual claim takes only those (queue IS NULL).
-- 2. The partial index serves the queue-aware claim: running and waiting jobs per
--    (queue, key), leaving the index of unqueued jobs' claim untouched.
-- 3. squidmesh_flow_starts: one row per attempt start of a queue with a rate limit, in
--    the window every worker shares (rows older than the window are deleted by claims).
-- 4. squidmesh_flow_keys: when each key of a queue was last given a slot, so claims
--    rotate across keys (the least recently served first; rows a day old are pruned).
-- {schema} is replaced by the configured schema name (a plain lower-case identifier).
-- Must equal squidmesh/storage/tables.py; tests/contract compares the two.

ALTER TABLE {schema}.squidmesh_jobs
    ADD COLUMN queue TEXT GENERATED ALWAYS AS (data ->> 'queue') STORED,
    ADD COLUMN flow_key TEXT GENERATED ALWAYS AS (data ->> 'flow_key') STORED,
    ADD COLUMN priority INTEGER GENERATED ALWAYS AS (CAST(data ->> 'priority' AS INTEGER)) STORED;
CREATE INDEX squidmesh_jobs_queue_idx ON {schema}.squidmesh_jobs (queue, flow_key)
    WHERE queue IS NOT NULL;
CREATE TABLE {schema}.squidmesh_flow_starts (
    id BIGSERIAL NOT NULL,
    queue TEXT NOT NULL,
    at TIMESTAMP WITH TIME ZONE NOT NULL,
    PRIMARY KEY (id)
);
CREATE INDEX squidmesh_flow_starts_queue_idx ON {schema}.squidmesh_flow_starts (queue, at);
CREATE TABLE {schema}.squidmesh_flow_keys (
    queue TEXT NOT NULL,
    flow_key TEXT NOT NULL,
    served_at TIMESTAMP WITH TIME ZONE NOT NULL,
    PRIMARY KEY (queue, flow_key)
);
