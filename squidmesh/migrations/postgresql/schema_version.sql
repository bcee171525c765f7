-- Bookkeeping, applied before any numbered file: one row per applied migration.
-- {schema} is replaced by the configured schema name (a plain lower-case identifier).
CREATE TABLE IF NOT EXISTS {schema}.squidmesh_schema_version (
    version INTEGER NOT NULL,
    applied_at TIMESTAMP WITH TIME ZONE NOT NULL,
    PRIMARY KEY (version)
);
