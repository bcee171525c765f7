-- squidmesh schema version 5 (PostgreSQL): composition.
--
-- 1. Child runs (sm.child, sm.start_child) name the run that started them and the seq of
--    the parent's entry waiting for them; sm.continue_as_new links a run to the run that
--    continues it. The index finds the children of a run (inspect_run, cancellation).
--    These columns never change after a run is created except continued_as_run_id, set
--    once, when the run ends: updates that may be HOT stay HOT.
-- 2. squidmesh_write_v2 writes the new columns too (same signature, replaced in place).
-- {schema} is replaced by the configured schema name (a plain lower-case identifier).
-- Must equal squidmesh/storage/tables.py; tests/contract compares the two.

ALTER TABLE {schema}.squidmesh_runs
    ADD COLUMN parent_run_id VARCHAR(36),
    ADD COLUMN parent_seq INTEGER,
    ADD COLUMN continued_from_run_id VARCHAR(36),
    ADD COLUMN continued_as_run_id VARCHAR(36);
CREATE INDEX squidmesh_runs_parent_idx ON {schema}.squidmesh_runs (parent_run_id, created_at, id);

-- squidmesh_write_v2(doc) applies every write of one state change (a WriteBatch, see
-- squidmesh/storage/base.py) in a single statement. Each run row carries its new
-- version: the update only matches while the stored version is the one before it; each
-- guard must match its run's current version (share-locked until commit). Otherwise the
-- change fails with SQLSTATE 40001 and nothing is applied. Returns the ids of the
-- inserted jobs, in the order given.
CREATE OR REPLACE FUNCTION {schema}.squidmesh_write_v2(doc json) RETURNS bigint[]
LANGUAGE plpgsql AS $$
DECLARE
    expected integer;
    changed integer;
    item json;
    new_id bigint;
    job_ids bigint[] := '{}';
BEGIN
    expected := json_array_length(coalesce(doc->'guards', '[]'::json));
    IF expected > 0 THEN
        SELECT count(*) INTO changed FROM (
            SELECT 1 FROM {schema}.squidmesh_runs AS r
            JOIN json_to_recordset(doc->'guards') AS g(id text, version integer)
                ON r.id = g.id AND r.version = g.version
            FOR SHARE OF r
        ) AS held;
        IF changed <> expected THEN
            RAISE EXCEPTION 'squidmesh: a run was changed concurrently'
                USING ERRCODE = '40001';
        END IF;
    END IF;
    expected := json_array_length(coalesce(doc->'runs', '[]'::json));
    IF expected > 0 THEN
        UPDATE {schema}.squidmesh_runs AS r SET
            workflow = x.workflow, trigger = x.trigger, status = x.status,
            payload = x.payload, result = x.result, error = x.error, reason = x.reason,
            current_steps = x.current_steps, waiting_on = x.waiting_on,
            replayed_from_run_id = x.replayed_from_run_id,
            forked_from_run_id = x.forked_from_run_id, idempotency_key = x.idempotency_key,
            schedule = x.schedule, cancel_request = x.cancel_request,
            pending_outcome = x.pending_outcome, version = x.version,
            created_at = x.created_at, updated_at = x.updated_at,
            parent_run_id = x.parent_run_id, parent_seq = x.parent_seq,
            continued_from_run_id = x.continued_from_run_id,
            continued_as_run_id = x.continued_as_run_id
        FROM json_populate_recordset(NULL::{schema}.squidmesh_runs, doc->'runs') AS x
        WHERE r.id = x.id AND r.version = x.version - 1;
        GET DIAGNOSTICS changed = ROW_COUNT;
        IF changed <> expected THEN
            RAISE EXCEPTION 'squidmesh: a run was changed concurrently'
                USING ERRCODE = '40001';
        END IF;
    END IF;
    INSERT INTO {schema}.squidmesh_entries
        SELECT * FROM json_populate_recordset(
            NULL::{schema}.squidmesh_entries, coalesce(doc->'entries_insert', '[]'::json));
    UPDATE {schema}.squidmesh_entries AS e SET
        kind = x.kind, name = x.name, status = x.status, input = x.input,
        result = x.result, error = x.error, parent = x.parent, ord = x.ord,
        attempts = x.attempts, meta = x.meta, compensation = x.compensation, loc = x.loc,
        wake_at = x.wake_at, created_at = x.created_at, started_at = x.started_at,
        completed_at = x.completed_at
    FROM json_populate_recordset(
        NULL::{schema}.squidmesh_entries, coalesce(doc->'entries_update', '[]'::json)) AS x
    WHERE e.run_id = x.run_id AND e.seq = x.seq;
    GET DIAGNOSTICS changed = ROW_COUNT;
    IF changed <> json_array_length(coalesce(doc->'entries_update', '[]'::json)) THEN
        RAISE EXCEPTION 'squidmesh: a history entry to update does not exist'
            USING ERRCODE = 'P0002';
    END IF;
    INSERT INTO {schema}.squidmesh_attempts
        SELECT * FROM json_populate_recordset(
            NULL::{schema}.squidmesh_attempts, coalesce(doc->'attempts', '[]'::json))
    ON CONFLICT (run_id, seq, number) DO UPDATE SET
        status = EXCLUDED.status, error = EXCLUDED.error,
        started_at = EXCLUDED.started_at, finished_at = EXCLUDED.finished_at,
        worker = EXCLUDED.worker, heartbeat = EXCLUDED.heartbeat;
    INSERT INTO {schema}.squidmesh_audit_events (run_id, type, step, actor, comment, metadata, at)
        SELECT x.run_id, x.type, x.step, x.actor, x.comment, x.metadata, x.at
        FROM json_populate_recordset(
            NULL::{schema}.squidmesh_audit_events, coalesce(doc->'audits', '[]'::json))
            WITH ORDINALITY AS x
        ORDER BY x.ordinality;
    DELETE FROM {schema}.squidmesh_jobs
        WHERE id IN (SELECT value::bigint FROM json_array_elements_text(
            coalesce(doc->'jobs_delete', '[]'::json)));
    FOR item IN SELECT value FROM json_array_elements(coalesce(doc->'jobs_insert', '[]'::json))
    LOOP
        INSERT INTO {schema}.squidmesh_jobs
            (kind, run_id, seq, attempt, run_at, data, worker, lease_until, created_at)
        SELECT x.kind, x.run_id, x.seq, x.attempt, x.run_at, x.data, x.worker,
               x.lease_until, x.created_at
        FROM json_populate_record(NULL::{schema}.squidmesh_jobs, item) AS x
        RETURNING id INTO new_id;
        job_ids := job_ids || new_id;
    END LOOP;
    IF (doc->>'notify')::boolean THEN
        PERFORM pg_notify(doc->>'channel', '');
    END IF;
    RETURN job_ids;
END
$$;
