-- squidmesh schema version 4 (SQLite): indexes for searching and counting runs
-- (mesh.list_runs(trigger=..., idempotency_key=...), mesh.count_runs(workflow=...), the
-- operator console).
-- Must equal squidmesh/storage/tables.py; tests/contract compares the two.
CREATE INDEX squidmesh_runs_workflow_status_idx ON squidmesh_runs (workflow, status, created_at, id);
CREATE INDEX squidmesh_runs_trigger_idx ON squidmesh_runs ("trigger", created_at, id);
CREATE INDEX squidmesh_runs_key_idx ON squidmesh_runs (idempotency_key, created_at, id);
