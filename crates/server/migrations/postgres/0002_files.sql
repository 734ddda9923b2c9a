ALTER TABLE jobs ADD COLUMN inputs TEXT NOT NULL DEFAULT '[]';
ALTER TABLE jobs ADD COLUMN artifacts TEXT NOT NULL DEFAULT '[]';

-- Uploads and artifacts. The bytes live in the file store (the data directory or an
-- object store) under `files/<id>`, and this row is written only once they are all there.
CREATE TABLE files (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    name TEXT NOT NULL,
    size BIGINT NOT NULL,
    sha256 TEXT NOT NULL,
    job_id TEXT,
    attempt BIGINT,
    created_at BIGINT NOT NULL
);
CREATE UNIQUE INDEX files_artifact ON files (job_id, attempt, name);
CREATE INDEX files_created ON files (kind, created_at);

-- Where an ended attempt's log is: `db` (log_chunks rows), `object` (moved to the
-- object store, log_chunks keep only the keys) or `expired` (deleted by retention).
ALTER TABLE attempts ADD COLUMN logs TEXT NOT NULL DEFAULT 'db';
CREATE INDEX attempts_logs_in_db ON attempts (finished_at) WHERE logs = 'db';
CREATE INDEX attempts_logs_kept ON attempts (job_id) WHERE logs <> 'expired'
