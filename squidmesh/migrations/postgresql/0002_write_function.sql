-- squidmesh schema version 2 (PostgreSQL): one round trip per state change.
--
-- squidmesh_write_v1(doc) applies every write of one state change (a WriteBatch, see
-- squidmesh/storage/base.py) in a single statement, so recording a step costs one
-- round trip instead of one per row. Each run row carries its new version: the update
-- only matches while the stored version is the one before it, so a writer that did not
-- hold the run's lock and lost a race fails (SQLSTATE 40001) instead of overwriting.
-- Returns the ids of the inserted jobs, in the order given.
CREATE OR REPLACE FUNCTION {schema}.squidmesh_write_v1(doc jsonb) RETURNS bigint[]
LANGUAGE plpgsql AS $$
DECLARE
    expected integer;
    changed integer;
    item jsonb;
    new_id bigint;
    job_ids bigint[] := '{}';
BEGIN
    expected := jsonb_array_length(coalesce(doc->'runs', '[]'::jsonb));
    IF expected > 0 THEN
        UPDATE {schema}.squidmesh_runs AS r SET
            workflow = x.workflow, trigger = x.trigger, status = x.status,
            payload = x.payload, result = x.result, error = x.error, reason = x.reason,
            current_steps = x.current_steps, waiting_on = x.waiting_on,
            replayed_from_run_id = x.replayed_from_run_id,
            forked_from_run_id = x.forked_from_run_id, idempotency_key = x.idempotency_key,
            schedule = x.schedule, cancel_request = x.cancel_request,
            pending_outcome = x.pending_outcome, version = x.version,
            created_at = x.created_at, updated_at = x.updated_at
        FROM jsonb_populate_recordset(NULL::{schema}.squidmesh_runs, doc->'runs') AS x
        WHERE r.id = x.id AND r.version = x.version - 1;
        GET DIAGNOSTICS changed = ROW_COUNT;
        IF changed <> expected THEN
            RAISE EXCEPTION 'squidmesh: a run was changed concurrently'
                USING ERRCODE = '40001';
        END IF;
    END IF;
    INSERT INTO {schema}.squidmesh_entries
        SELECT * FROM jsonb_populate_recordset(
            NULL::{schema}.squidmesh_entries, coalesce(doc->'entries_insert', '[]'::jsonb));
    UPDATE {schema}.squidmesh_entries AS e SET
        kind = x.kind, name = x.name, status = x.status, input = x.input,
        result = x.result, error = x.error, parent = x.parent, ord = x.ord,
        attempts = x.attempts, meta = x.meta, compensation = x.compensation, loc = x.loc,
        wake_at = x.wake_at, created_at = x.created_at, started_at = x.started_at,
        completed_at = x.completed_at
    FROM jsonb_populate_recordset(
        NULL::{schema}.squidmesh_entries, coalesce(doc->'entries_update', '[]'::jsonb)) AS x
    WHERE e.run_id = x.run_id AND e.seq = x.seq;
    INSERT INTO {schema}.squidmesh_attempts
        SELECT * FROM jsonb_populate_recordset(
            NULL::{schema}.squidmesh_attempts, coalesce(doc->'attempts', '[]'::jsonb))
    ON CONFLICT (run_id, seq, number) DO UPDATE SET
        status = EXCLUDED.status, error = EXCLUDED.error,
        started_at = EXCLUDED.started_at, finished_at = EXCLUDED.finished_at;
    INSERT INTO {schema}.squidmesh_audit_events (run_id, type, step, actor, comment, metadata, at)
        SELECT x.run_id, x.type, x.step, x.actor, x.comment, x.metadata, x.at
        FROM jsonb_populate_recordset(
            NULL::{schema}.squidmesh_audit_events, coalesce(doc->'audits', '[]'::jsonb))
            WITH ORDINALITY AS x
        ORDER BY x.ordinality;
    DELETE FROM {schema}.squidmesh_jobs
        WHERE id IN (SELECT value::bigint FROM jsonb_array_elements_text(
            coalesce(doc->'jobs_delete', '[]'::jsonb)));
    FOR item IN SELECT value FROM jsonb_array_elements(coalesce(doc->'jobs_insert', '[]'::jsonb))
    LOOP
        INSERT INTO {schema}.squidmesh_jobs
            (kind, run_id, seq, attempt, run_at, data, worker, lease_until, created_at)
        SELECT x.kind, x.run_id, x.seq, x.attempt, x.run_at, x.data, x.worker,
               x.lease_until, x.created_at
        FROM jsonb_populate_record(NULL::{schema}.squidmesh_jobs, item) AS x
        RETURNING id INTO new_id;
        job_ids := job_ids || new_id;
    END LOOP;
    IF (doc->>'notify')::boolean THEN
        PERFORM pg_notify(doc->>'channel', '');
    END IF;
    RETURN job_ids;
END
$$;
