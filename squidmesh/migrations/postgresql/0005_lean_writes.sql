-- squidmesh schema version 5 (PostgreSQL): a leaner write of a state change.
--
-- squidmesh_write_v3(doc) replaces squidmesh_write_v2 (0003). What changes:
-- 1. A run's update sets only the columns a state change alters (RUN_MUTABLE_FIELDS in
--    squidmesh/storage/base.py); what a run is (workflow, payload, origin, key,
--    created_at) is fixed when it is created, so it is no longer sent on every step.
-- 2. Sections the change does not have are absent from the document and skipped.
-- 3. A job may name the job it "replaces" (one this change finishes): that row is
--    updated in place, instead of a delete and an insert per step of a run that a
--    worker carries on with.
-- 4. The runs, entries and jobs tables leave room in each page (fillfactor), so the
--    updates of a step (run version, finished entry, next job) can stay on their page
--    (HOT updates) instead of adding a new entry to every index. Existing pages keep
--    their layout until rewritten; new ones follow.
-- The checks are those of v2: every run written must be at the version before its new
-- one, every guard at its version (share-locked), every entry updated must exist;
-- otherwise nothing is applied (SQLSTATE 40001 / P0002).

DROP FUNCTION IF EXISTS {schema}.squidmesh_write_v2(json);

ALTER TABLE {schema}.squidmesh_runs SET (fillfactor = 70);
ALTER TABLE {schema}.squidmesh_entries SET (fillfactor = 80);
ALTER TABLE {schema}.squidmesh_jobs SET (fillfactor = 70);

CREATE FUNCTION {schema}.squidmesh_write_v3(doc json) RETURNS bigint[]
LANGUAGE plpgsql AS $$
DECLARE
    expected integer;
    changed integer;
    section json;
    item json;
    new_id bigint;
    replaced bigint;
    job_ids bigint[] := '{}';
BEGIN
    section := doc->'guards';
    IF section IS NOT NULL THEN
        expected := json_array_length(section);
        SELECT count(*) INTO changed FROM (
            SELECT 1 FROM {schema}.squidmesh_runs AS r
            JOIN json_to_recordset(section) AS g(id text, version integer)
                ON r.id = g.id AND r.version = g.version
            FOR SHARE OF r
        ) AS held;
        IF changed <> expected THEN
            RAISE EXCEPTION 'squidmesh: a run was changed concurrently'
                USING ERRCODE = '40001';
        END IF;
    END IF;
    section := doc->'runs';
    IF section IS NOT NULL THEN
        expected := json_array_length(section);
        UPDATE {schema}.squidmesh_runs AS r SET
            status = x.status, result = x.result, error = x.error, reason = x.reason,
            current_steps = x.current_steps, waiting_on = x.waiting_on,
            cancel_request = x.cancel_request, pending_outcome = x.pending_outcome,
            version = x.version, updated_at = x.updated_at
        FROM json_to_recordset(section) AS x(
            id text, status text, result json, error json, reason text,
            current_steps json, waiting_on json, cancel_request json,
            pending_outcome json, version integer, updated_at timestamptz)
        WHERE r.id = x.id AND r.version = x.version - 1;
        GET DIAGNOSTICS changed = ROW_COUNT;
        IF changed <> expected THEN
            RAISE EXCEPTION 'squidmesh: a run was changed concurrently'
                USING ERRCODE = '40001';
        END IF;
    END IF;
    section := doc->'entries_insert';
    IF section IS NOT NULL THEN
        INSERT INTO {schema}.squidmesh_entries
            SELECT * FROM json_populate_recordset(NULL::{schema}.squidmesh_entries, section);
    END IF;
    section := doc->'entries_update';
    IF section IS NOT NULL THEN
        UPDATE {schema}.squidmesh_entries AS e SET
            kind = x.kind, name = x.name, status = x.status, input = x.input,
            result = x.result, error = x.error, parent = x.parent, ord = x.ord,
            attempts = x.attempts, meta = x.meta, compensation = x.compensation,
            loc = x.loc, wake_at = x.wake_at, created_at = x.created_at,
            started_at = x.started_at, completed_at = x.completed_at
        FROM json_populate_recordset(NULL::{schema}.squidmesh_entries, section) AS x
        WHERE e.run_id = x.run_id AND e.seq = x.seq;
        GET DIAGNOSTICS changed = ROW_COUNT;
        IF changed <> json_array_length(section) THEN
            RAISE EXCEPTION 'squidmesh: a history entry to update does not exist'
                USING ERRCODE = 'P0002';
        END IF;
    END IF;
    section := doc->'attempts';
    IF section IS NOT NULL THEN
        INSERT INTO {schema}.squidmesh_attempts
            SELECT * FROM json_populate_recordset(NULL::{schema}.squidmesh_attempts, section)
        ON CONFLICT (run_id, seq, number) DO UPDATE SET
            status = EXCLUDED.status, error = EXCLUDED.error,
            started_at = EXCLUDED.started_at, finished_at = EXCLUDED.finished_at,
            worker = EXCLUDED.worker, heartbeat = EXCLUDED.heartbeat;
    END IF;
    section := doc->'audits';
    IF section IS NOT NULL THEN
        INSERT INTO {schema}.squidmesh_audit_events
            (run_id, type, step, actor, comment, metadata, at)
        SELECT x.run_id, x.type, x.step, x.actor, x.comment, x.metadata, x.at
        FROM json_populate_recordset(NULL::{schema}.squidmesh_audit_events, section)
            WITH ORDINALITY AS x
        ORDER BY x.ordinality;
    END IF;
    section := doc->'jobs_delete';
    IF section IS NOT NULL THEN
        DELETE FROM {schema}.squidmesh_jobs
            WHERE id IN (SELECT value::bigint FROM json_array_elements_text(section));
    END IF;
    section := doc->'jobs_insert';
    IF section IS NOT NULL THEN
        FOR item IN SELECT value FROM json_array_elements(section) LOOP
            replaced := (item->>'replaces')::bigint;
            IF replaced IS NULL THEN
                INSERT INTO {schema}.squidmesh_jobs
                    (kind, run_id, seq, attempt, run_at, data, worker, lease_until, created_at)
                SELECT x.kind, x.run_id, x.seq, x.attempt, x.run_at, x.data, x.worker,
                       x.lease_until, x.created_at
                FROM json_populate_record(NULL::{schema}.squidmesh_jobs, item) AS x
                RETURNING id INTO new_id;
            ELSE
                UPDATE {schema}.squidmesh_jobs AS j SET
                    kind = x.kind, run_id = x.run_id, seq = x.seq, attempt = x.attempt,
                    run_at = x.run_at, data = x.data, worker = x.worker,
                    lease_until = x.lease_until, created_at = x.created_at,
                    failures = 0, last_error = NULL
                FROM json_populate_record(NULL::{schema}.squidmesh_jobs, item) AS x
                WHERE j.id = replaced
                RETURNING j.id INTO new_id;
                IF new_id IS NULL THEN
                    RAISE EXCEPTION 'squidmesh: the job this change carries on is gone'
                        USING ERRCODE = '40001';
                END IF;
            END IF;
            job_ids := job_ids || new_id;
            new_id := NULL;
        END LOOP;
    END IF;
    IF (doc->>'notify')::boolean THEN
        PERFORM pg_notify(doc->>'channel', '');
    END IF;
    RETURN job_ids;
END
$$;
