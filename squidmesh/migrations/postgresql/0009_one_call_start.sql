-- squidmesh schema version 9 (PostgreSQL): starting a run in one call.
--
-- squidmesh_create_v1 inserts new runs (whole rows, from JSON) and then applies the rest
-- of the state change with squidmesh_write_v3 (0005, 0007): starting a run (its row,
-- first activation job and audit event) is one statement, so without BEGIN/COMMIT a
-- start costs one round trip. A duplicate id or idempotency key fails the whole call
-- (unique violation), writing nothing. Changes that create no run keep calling
-- squidmesh_write_v3 directly.
-- {schema} is replaced by the configured schema name (a plain lower-case identifier).

CREATE FUNCTION {schema}.squidmesh_create_v1(
    p_new_runs json, p_guards json, p_runs json, p_entries_insert json,
    p_entries_update json, p_attempts json, p_audits json, p_jobs_delete json,
    p_jobs_insert json, p_channel text
) RETURNS bigint[]
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO {schema}.squidmesh_runs
        SELECT * FROM json_populate_recordset(NULL::{schema}.squidmesh_runs, p_new_runs);
    RETURN {schema}.squidmesh_write_v3(
        p_guards, p_runs, p_entries_insert, p_entries_update, p_attempts, p_audits,
        p_jobs_delete, p_jobs_insert, p_channel);
END
$$;
