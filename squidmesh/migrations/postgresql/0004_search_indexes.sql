-- squidmesh schema version 4 (PostgreSQL): indexes for searching and counting runs
-- (mesh.list_runs(trigger=..., idempotency_key=...), mesh.count_runs(workflow=...), the
-- operator console). They cover columns a run never changes after it is created, or
-- status, which already has an index: updates that may be HOT stay HOT.
-- {schema} is replaced by the configured schema name (a plain lower-case identifier).
-- Must equal squidmesh/storage/tables.py; tests/contract compares the two.
CREATE INDEX squidmesh_runs_workflow_status_idx ON {schema}.squidmesh_runs (workflow, status, created_at, id);
CREATE INDEX squidmesh_runs_trigger_idx ON {schema}.squidmesh_runs (trigger, created_at, id);
CREATE INDEX squidmesh_runs_key_idx ON {schema}.squidmesh_runs (idempotency_key, created_at, id);
