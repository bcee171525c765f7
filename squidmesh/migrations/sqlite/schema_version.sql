-- Bookkeeping, applied before any numbered file: one row per applied migration.
CREATE TABLE IF NOT EXISTS squidmesh_schema_version (
    version INTEGER NOT NULL,
    applied_at DATETIME NOT NULL,
    PRIMARY KEY (version)
);
