-- squidmesh schema version 1 (PostgreSQL).
-- {schema} is replaced by the configured schema name (a plain lower-case identifier).
-- Must equal squidmesh/storage/tables.py; tests/contract compares the two.

CREATE TABLE {schema}.squidmesh_runs (
    id VARCHAR(36) NOT NULL,
    workflow TEXT NOT NULL,
    trigger TEXT NOT NULL,
    status TEXT NOT NULL,
    payload JSONB NOT NULL,
    result JSONB,
    error JSONB,
    reason TEXT,
    current_steps JSONB NOT NULL,
    waiting_on JSONB NOT NULL,
    replayed_from_run_id VARCHAR(36),
    forked_from_run_id VARCHAR(36),
    idempotency_key TEXT,
    schedule JSONB,
    cancel_request JSONB,
    pending_outcome JSONB,
    version INTEGER NOT NULL,
    created_at TIMESTAMP WITH TIME ZONE NOT NULL,
    updated_at TIMESTAMP WITH TIME ZONE NOT NULL,
    PRIMARY KEY (id),
    CONSTRAINT squidmesh_runs_idempotency_key UNIQUE (workflow, idempotency_key)
);
-- list_runs: newest first, optionally filtered by status or by workflow.
CREATE INDEX squidmesh_runs_status_idx ON {schema}.squidmesh_runs (status, created_at, id);
CREATE INDEX squidmesh_runs_workflow_idx ON {schema}.squidmesh_runs (workflow, created_at, id);
CREATE INDEX squidmesh_runs_created_idx ON {schema}.squidmesh_runs (created_at, id);

CREATE TABLE {schema}.squidmesh_entries (
    run_id VARCHAR(36) NOT NULL,
    seq INTEGER NOT NULL,
    kind TEXT NOT NULL,
    name TEXT NOT NULL,
    status TEXT NOT NULL,
    input JSONB,
    result JSONB,
    error JSONB,
    parent INTEGER,
    ord INTEGER,
    attempts INTEGER NOT NULL,
    meta JSONB NOT NULL,
    compensation JSONB,
    loc TEXT,
    wake_at TEXT,
    created_at TEXT,
    started_at TEXT,
    completed_at TEXT,
    PRIMARY KEY (run_id, seq),
    FOREIGN KEY (run_id) REFERENCES {schema}.squidmesh_runs (id) ON DELETE CASCADE
);

CREATE TABLE {schema}.squidmesh_attempts (
    run_id VARCHAR(36) NOT NULL,
    seq INTEGER NOT NULL,
    number INTEGER NOT NULL,
    status TEXT NOT NULL,
    error JSONB,
    started_at TEXT,
    finished_at TEXT,
    PRIMARY KEY (run_id, seq, number),
    FOREIGN KEY (run_id) REFERENCES {schema}.squidmesh_runs (id) ON DELETE CASCADE
);

CREATE TABLE {schema}.squidmesh_audit_events (
    id BIGSERIAL NOT NULL,
    run_id VARCHAR(36) NOT NULL,
    type TEXT NOT NULL,
    step TEXT,
    actor TEXT,
    comment TEXT,
    metadata JSONB,
    at TEXT,
    PRIMARY KEY (id),
    FOREIGN KEY (run_id) REFERENCES {schema}.squidmesh_runs (id) ON DELETE CASCADE
);
CREATE INDEX squidmesh_audit_events_run_idx ON {schema}.squidmesh_audit_events (run_id, id);

-- Events sent to a run before it waited for them.
CREATE TABLE {schema}.squidmesh_events (
    id BIGSERIAL NOT NULL,
    run_id VARCHAR(36) NOT NULL,
    name TEXT NOT NULL,
    data JSONB,
    created_at TIMESTAMP WITH TIME ZONE NOT NULL,
    PRIMARY KEY (id),
    FOREIGN KEY (run_id) REFERENCES {schema}.squidmesh_runs (id) ON DELETE CASCADE
);
CREATE INDEX squidmesh_events_run_idx ON {schema}.squidmesh_events (run_id, id);

-- The database executor's queue. No foreign key: cron jobs have no run.
CREATE TABLE {schema}.squidmesh_jobs (
    id BIGSERIAL NOT NULL,
    kind TEXT NOT NULL,
    run_id VARCHAR(36),
    seq INTEGER,
    attempt INTEGER,
    run_at TIMESTAMP WITH TIME ZONE NOT NULL,
    data JSONB,
    worker TEXT,
    lease_until TIMESTAMP WITH TIME ZONE,
    created_at TIMESTAMP WITH TIME ZONE NOT NULL,
    PRIMARY KEY (id)
);
CREATE INDEX squidmesh_jobs_run_at_idx ON {schema}.squidmesh_jobs (run_at, id);

-- One row per cron fire time that started a run: a tick fires once.
CREATE TABLE {schema}.squidmesh_cron_ticks (
    id BIGSERIAL NOT NULL,
    workflow TEXT NOT NULL,
    trigger TEXT NOT NULL,
    fire_time TIMESTAMP WITH TIME ZONE NOT NULL,
    run_id VARCHAR(36),
    PRIMARY KEY (id),
    CONSTRAINT squidmesh_cron_ticks_tick UNIQUE (workflow, trigger, fire_time)
);
