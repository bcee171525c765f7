-- squidmesh schema version 3 (SQLite).
--
-- 1. Stored values round-trip exactly: JSON columns are declared TEXT. Declared JSON,
--    they had NUMERIC affinity, which turned a stored 1.0 into the integer 1 and an
--    integer beyond 64 bits into a float. SQLite cannot change a column's type, so each
--    table is rebuilt (the migration runs with foreign keys off; see sql_migrate.py).
-- 2. Jobs can be found by run and carry how often performing them failed.
-- 3. Workers register themselves; an attempt records the worker running it and its last
--    heartbeat.

CREATE TABLE squidmesh_runs_v3 (
    id VARCHAR(36) NOT NULL,
    workflow TEXT NOT NULL,
    "trigger" TEXT NOT NULL,
    status TEXT NOT NULL,
    payload TEXT NOT NULL,
    result TEXT,
    error TEXT,
    reason TEXT,
    current_steps TEXT NOT NULL,
    waiting_on TEXT NOT NULL,
    replayed_from_run_id VARCHAR(36),
    forked_from_run_id VARCHAR(36),
    idempotency_key TEXT,
    schedule TEXT,
    cancel_request TEXT,
    pending_outcome TEXT,
    version INTEGER NOT NULL,
    created_at DATETIME NOT NULL,
    updated_at DATETIME NOT NULL,
    PRIMARY KEY (id),
    CONSTRAINT squidmesh_runs_idempotency_key UNIQUE (workflow, idempotency_key)
);
INSERT INTO squidmesh_runs_v3 SELECT id, workflow, "trigger", status, payload, result, error,
    reason, current_steps, waiting_on, replayed_from_run_id, forked_from_run_id,
    idempotency_key, schedule, cancel_request, pending_outcome, version, created_at,
    updated_at FROM squidmesh_runs;
DROP TABLE squidmesh_runs;
ALTER TABLE squidmesh_runs_v3 RENAME TO squidmesh_runs;
CREATE INDEX squidmesh_runs_status_idx ON squidmesh_runs (status, created_at, id);
CREATE INDEX squidmesh_runs_workflow_idx ON squidmesh_runs (workflow, created_at, id);
CREATE INDEX squidmesh_runs_created_idx ON squidmesh_runs (created_at, id);

CREATE TABLE squidmesh_entries_v3 (
    run_id VARCHAR(36) NOT NULL,
    seq INTEGER NOT NULL,
    kind TEXT NOT NULL,
    name TEXT NOT NULL,
    status TEXT NOT NULL,
    input TEXT,
    result TEXT,
    error TEXT,
    parent INTEGER,
    ord INTEGER,
    attempts INTEGER NOT NULL,
    meta TEXT NOT NULL,
    compensation TEXT,
    loc TEXT,
    wake_at TEXT,
    created_at TEXT,
    started_at TEXT,
    completed_at TEXT,
    PRIMARY KEY (run_id, seq),
    FOREIGN KEY (run_id) REFERENCES squidmesh_runs (id) ON DELETE CASCADE
);
INSERT INTO squidmesh_entries_v3 SELECT run_id, seq, kind, name, status, input, result, error,
    parent, ord, attempts, meta, compensation, loc, wake_at, created_at, started_at,
    completed_at FROM squidmesh_entries;
DROP TABLE squidmesh_entries;
ALTER TABLE squidmesh_entries_v3 RENAME TO squidmesh_entries;

CREATE TABLE squidmesh_attempts_v3 (
    run_id VARCHAR(36) NOT NULL,
    seq INTEGER NOT NULL,
    number INTEGER NOT NULL,
    status TEXT NOT NULL,
    error TEXT,
    started_at TEXT,
    finished_at TEXT,
    worker TEXT,
    heartbeat TEXT,
    PRIMARY KEY (run_id, seq, number),
    FOREIGN KEY (run_id) REFERENCES squidmesh_runs (id) ON DELETE CASCADE
);
INSERT INTO squidmesh_attempts_v3 (run_id, seq, number, status, error, started_at, finished_at)
    SELECT run_id, seq, number, status, error, started_at, finished_at FROM squidmesh_attempts;
DROP TABLE squidmesh_attempts;
ALTER TABLE squidmesh_attempts_v3 RENAME TO squidmesh_attempts;

CREATE TABLE squidmesh_audit_events_v3 (
    id INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT,
    run_id VARCHAR(36) NOT NULL,
    type TEXT NOT NULL,
    step TEXT,
    actor TEXT,
    comment TEXT,
    metadata TEXT,
    at TEXT,
    FOREIGN KEY (run_id) REFERENCES squidmesh_runs (id) ON DELETE CASCADE
);
INSERT INTO squidmesh_audit_events_v3 SELECT id, run_id, type, step, actor, comment, metadata,
    at FROM squidmesh_audit_events;
-- Keep AUTOINCREMENT's high-water mark: ids of deleted rows are never reused.
DELETE FROM sqlite_sequence WHERE name = 'squidmesh_audit_events_v3';
INSERT INTO sqlite_sequence (name, seq)
    SELECT 'squidmesh_audit_events_v3', seq FROM sqlite_sequence WHERE name = 'squidmesh_audit_events';
DROP TABLE squidmesh_audit_events;
ALTER TABLE squidmesh_audit_events_v3 RENAME TO squidmesh_audit_events;
CREATE INDEX squidmesh_audit_events_run_idx ON squidmesh_audit_events (run_id, id);

CREATE TABLE squidmesh_events_v3 (
    id INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT,
    run_id VARCHAR(36) NOT NULL,
    name TEXT NOT NULL,
    data TEXT,
    created_at DATETIME NOT NULL,
    FOREIGN KEY (run_id) REFERENCES squidmesh_runs (id) ON DELETE CASCADE
);
INSERT INTO squidmesh_events_v3 SELECT id, run_id, name, data, created_at FROM squidmesh_events;
-- Keep AUTOINCREMENT's high-water mark: ids of deleted rows are never reused.
DELETE FROM sqlite_sequence WHERE name = 'squidmesh_events_v3';
INSERT INTO sqlite_sequence (name, seq)
    SELECT 'squidmesh_events_v3', seq FROM sqlite_sequence WHERE name = 'squidmesh_events';
DROP TABLE squidmesh_events;
ALTER TABLE squidmesh_events_v3 RENAME TO squidmesh_events;
CREATE INDEX squidmesh_events_run_idx ON squidmesh_events (run_id, id);

CREATE TABLE squidmesh_jobs_v3 (
    id INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    run_id VARCHAR(36),
    seq INTEGER,
    attempt INTEGER,
    run_at DATETIME NOT NULL,
    data TEXT,
    worker TEXT,
    lease_until DATETIME,
    created_at DATETIME NOT NULL,
    failures INTEGER DEFAULT 0 NOT NULL,
    last_error TEXT
);
INSERT INTO squidmesh_jobs_v3 (id, kind, run_id, seq, attempt, run_at, data, worker,
    lease_until, created_at) SELECT id, kind, run_id, seq, attempt, run_at, data, worker,
    lease_until, created_at FROM squidmesh_jobs;
-- Keep AUTOINCREMENT's high-water mark: ids of deleted rows are never reused.
DELETE FROM sqlite_sequence WHERE name = 'squidmesh_jobs_v3';
INSERT INTO sqlite_sequence (name, seq)
    SELECT 'squidmesh_jobs_v3', seq FROM sqlite_sequence WHERE name = 'squidmesh_jobs';
DROP TABLE squidmesh_jobs;
ALTER TABLE squidmesh_jobs_v3 RENAME TO squidmesh_jobs;
CREATE INDEX squidmesh_jobs_run_at_idx ON squidmesh_jobs (run_at, id);
CREATE INDEX squidmesh_jobs_run_idx ON squidmesh_jobs (run_id);

CREATE TABLE squidmesh_workers (
    id TEXT NOT NULL,
    host TEXT NOT NULL,
    pid INTEGER NOT NULL,
    started_at DATETIME NOT NULL,
    heartbeat_at DATETIME NOT NULL,
    stopped_at DATETIME,
    PRIMARY KEY (id)
);
