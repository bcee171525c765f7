-- squidmesh schema version 10 (PostgreSQL): an entry's update writes its outcome only.
--
-- What a history entry records of the call (kind, name, input, parent, loc, created_at)
-- is fixed when the entry is inserted; later changes alter only its outcome and progress
-- (ENTRY_MUTABLE_FIELDS in squidmesh/storage/base.py). squidmesh_write_v3 (0005, 0007)
-- now updates those columns only, and a state change no longer sends the rest again: a
-- step's input travelled twice (when it began and when it finished), and a large one,
-- stored out of line (TOAST), was written again in full with its WAL at every finish.
-- Replaced in place, same signature, otherwise as in 0007. The code of schema 9 sends
-- whole entries, which this function still takes (it ignores the fixed columns, which
-- never change): migrate first, then roll out the code that sends the slim entries.
-- {schema} is replaced by the configured schema name (a plain lower-case identifier).

CREATE OR REPLACE FUNCTION {schema}.squidmesh_write_v3(
    p_guards json, p_runs json, p_entries_insert json, p_entries_update json,
    p_attempts json, p_audits json, p_jobs_delete json, p_jobs_insert json, p_channel text
) RETURNS bigint[]
LANGUAGE plpgsql AS $$
DECLARE
    section json;
    item json;
    new_id bigint;
    replaced bigint;
    job_ids bigint[] := '{}';
BEGIN
    -- Row by row, each by its key: a join with a recordset (estimated at 100 rows)
    -- planned a scan of the whole table, a cost growing with every run and step stored.
    FOR item IN SELECT value FROM json_array_elements(p_guards) LOOP
        PERFORM 1 FROM {schema}.squidmesh_runs
            WHERE id = item->>'id' AND version = (item->>'version')::integer
            FOR SHARE;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'squidmesh: a run was changed concurrently'
                USING ERRCODE = '40001';
        END IF;
    END LOOP;
    FOR item IN SELECT value FROM json_array_elements(p_runs) LOOP
        UPDATE {schema}.squidmesh_runs AS r SET
            status = x.status, result = x.result, error = x.error, reason = x.reason,
            current_steps = x.current_steps, waiting_on = x.waiting_on,
            cancel_request = x.cancel_request, pending_outcome = x.pending_outcome,
            continued_as_run_id = x.continued_as_run_id,
            version = x.version, updated_at = x.updated_at
        FROM json_to_record(item) AS x(
            status text, result json, error json, reason text, current_steps json,
            waiting_on json, cancel_request json, pending_outcome json, continued_as_run_id text,
            version integer, updated_at timestamptz)
        WHERE r.id = item->>'id' AND r.version = (item->>'version')::integer - 1;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'squidmesh: a run was changed concurrently'
                USING ERRCODE = '40001';
        END IF;
    END LOOP;
    section := p_entries_insert;
    IF section IS NOT NULL THEN
        INSERT INTO {schema}.squidmesh_entries
            SELECT * FROM json_populate_recordset(NULL::{schema}.squidmesh_entries, section);
    END IF;
    FOR item IN SELECT value FROM json_array_elements(p_entries_update) LOOP
        UPDATE {schema}.squidmesh_entries AS e SET
            status = x.status, result = x.result, error = x.error, ord = x.ord,
            attempts = x.attempts, meta = x.meta, compensation = x.compensation,
            wake_at = x.wake_at, started_at = x.started_at, completed_at = x.completed_at
        FROM json_populate_record(NULL::{schema}.squidmesh_entries, item) AS x
        WHERE e.run_id = item->>'run_id' AND e.seq = (item->>'seq')::integer;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'squidmesh: a history entry to update does not exist'
                USING ERRCODE = 'P0002';
        END IF;
    END LOOP;
    section := p_attempts;
    IF section IS NOT NULL THEN
        INSERT INTO {schema}.squidmesh_attempts
            SELECT * FROM json_populate_recordset(NULL::{schema}.squidmesh_attempts, section)
        ON CONFLICT (run_id, seq, number) DO UPDATE SET
            status = EXCLUDED.status, error = EXCLUDED.error,
            started_at = EXCLUDED.started_at, finished_at = EXCLUDED.finished_at,
            worker = EXCLUDED.worker, heartbeat = EXCLUDED.heartbeat;
    END IF;
    section := p_audits;
    IF section IS NOT NULL THEN
        INSERT INTO {schema}.squidmesh_audit_events
            (run_id, type, step, actor, comment, metadata, at)
        SELECT x.run_id, x.type, x.step, x.actor, x.comment, x.metadata, x.at
        FROM json_populate_recordset(NULL::{schema}.squidmesh_audit_events, section)
            WITH ORDINALITY AS x
        ORDER BY x.ordinality;
    END IF;
    IF p_jobs_delete IS NOT NULL THEN
        DELETE FROM {schema}.squidmesh_jobs WHERE id = ANY(ARRAY(
            SELECT value::bigint FROM json_array_elements_text(p_jobs_delete)));
    END IF;
    section := p_jobs_insert;
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
    IF p_channel IS NOT NULL THEN
        PERFORM pg_notify(p_channel, '');
    END IF;
    RETURN job_ids;
END
$$;
