-- squidmesh schema version 1 (SQLite).
-- Must equal squidmesh/storage/tables.py; tests/contract compares the two.
-- Timestamps (DATETIME) hold UTC text; AUTOINCREMENT keeps ids from being reused.

CREATE TABLE squidmesh_runs (
    id VARCHAR(36) NOT NULL,
    workflow TEXT NOT NULL,
    "trigger" TEXT NOT NULL,
    status TEXT NOT NULL,
    payload JSON NOT NULL,
    result JSON,
    error JSON,
    reason TEXT,
    current_steps JSON NOT NULL,
    waiting_on JSON NOT NULL,
    replayed_from_run_id VARCHAR(36),
    forked_from_run_id VARCHAR(36),
    idempotency_key TEXT,
    schedule JSON,
    cancel_request JSON,
    pending_outcome JSON,
    version INTEGER NOT NULL,
    created_at DATETIME NOT NULL,
    updated_at DATETIME NOT NULL,
    PRIMARY KEY (id),
    CONSTRAINT squidmesh_runs_idempotency_key UNIQUE (workflow, idempotency_key)
);
-- list_runs: newest first, optionally filtered by status or by workflow.
CREATE INDEX squidmesh_runs_status_idx ON squidmesh_runs (status, created_at, id);
CREATE INDEX squidmesh_runs_workflow_idx ON squidmesh_runs (workflow, created_at, id);
CREATE INDEX squidmesh_runs_created_idx ON squidmesh_runs (created_at, id);

CREATE TABLE squidmesh_entries (
    run_id VARCHAR(36) NOT NULL,
    seq INTEGER NOT NULL,
    kind TEXT NOT NULL,
    name TEXT NOT NULL,
    status TEXT NOT NULL,
    input JSON,
    result JSON,
    error JSON,
    parent INTEGER,
    ord INTEGER,
    attempts INTEGER NOT NULL,
    meta JSON NOT NULL,
    compensation JSON,
    loc TEXT,
    wake_at TEXT,
    created_at TEXT,
    started_at TEXT,
    completed_at TEXT,
    PRIMARY KEY (run_id, seq),
    FOREIGN KEY (run_id) REFERENCES squidmesh_runs (id) ON DELETE CASCADE
);

CREATE TABLE squidmesh_attempts (
    run_id VARCHAR(36) NOT NULL,
    seq INTEGER NOT NULL,
    number INTEGER NOT NULL,
    status TEXT NOT NULL,
    error JSON,
    started_at TEXT,
    finished_at TEXT,
    PRIMARY KEY (run_id, seq, number),
    FOREIGN KEY (run_id) REFERENCES squidmesh_runs (id) ON DELETE CASCADE
);

CREATE TABLE squidmesh_audit_events (
    id INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT,
    run_id VARCHAR(36) NOT NULL,
    type TEXT NOT NULL,
    step TEXT,
    actor TEXT,
    comment TEXT,
    metadata JSON,
    at TEXT,
    FOREIGN KEY (run_id) REFERENCES squidmesh_runs (id) ON DELETE CASCADE
);
CREATE INDEX squidmesh_audit_events_run_idx ON squidmesh_audit_events (run_id, id);

-- Events sent to a run before it waited for them.
CREATE TABLE squidmesh_events (
    id INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT,
    run_id VARCHAR(36) NOT NULL,
    name TEXT NOT NULL,
    data JSON,
    created_at DATETIME NOT NULL,
    FOREIGN KEY (run_id) REFERENCES squidmesh_runs (id) ON DELETE CASCADE
);
CREATE INDEX squidmesh_events_run_idx ON squidmesh_events (run_id, id);

-- The database executor's queue. No foreign key: cron jobs have no run.
CREATE TABLE squidmesh_jobs (
    id INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    run_id VARCHAR(36),
    seq INTEGER,
    attempt INTEGER,
    run_at DATETIME NOT NULL,
    data JSON,
    worker TEXT,
    lease_until DATETIME,
    created_at DATETIME NOT NULL
);
CREATE INDEX squidmesh_jobs_run_at_idx ON squidmesh_jobs (run_at, id);

-- One row per cron fire time that started a run: a tick fires once.
CREATE TABLE squidmesh_cron_ticks (
    id INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT,
    workflow TEXT NOT NULL,
    "trigger" TEXT NOT NULL,
    fire_time DATETIME NOT NULL,
    run_id VARCHAR(36),
    CONSTRAINT squidmesh_cron_ticks_tick UNIQUE (workflow, "trigger", fire_time)
);
