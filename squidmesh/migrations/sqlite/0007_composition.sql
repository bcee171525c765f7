-- squidmesh schema version 7 (SQLite): composition.
--
-- Child runs (sm.child, sm.start_child) name the run that started them and the seq of
-- the parent's entry waiting for them; sm.continue_as_new links a run to the run that
-- continues it. The index finds the children of a run (inspect_run, cancellation).
-- Must equal squidmesh/storage/tables.py; tests/contract compares the two.
ALTER TABLE squidmesh_runs ADD COLUMN parent_run_id VARCHAR(36);
ALTER TABLE squidmesh_runs ADD COLUMN parent_seq INTEGER;
ALTER TABLE squidmesh_runs ADD COLUMN continued_from_run_id VARCHAR(36);
ALTER TABLE squidmesh_runs ADD COLUMN continued_as_run_id VARCHAR(36);
CREATE INDEX squidmesh_runs_parent_idx ON squidmesh_runs (parent_run_id, created_at, id);
