-- Arrays and dependencies. A group is the jobs of one array submit. A job with
-- dependencies waits (state waiting) until deps_pending of them have ended, unless
-- one ends in a way its condition refuses. has_dependents spares a finish the
-- job_deps lookup for the jobs nothing waits on.
CREATE TABLE job_groups (
    num INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    name TEXT NOT NULL,
    first_index INTEGER NOT NULL,
    count INTEGER NOT NULL,
    parallelism INTEGER,
    idempotency_key TEXT UNIQUE,
    actor TEXT NOT NULL,
    created_at INTEGER NOT NULL
);
ALTER TABLE jobs ADD COLUMN group_id TEXT;
ALTER TABLE jobs ADD COLUMN array_index INTEGER;
ALTER TABLE jobs ADD COLUMN deps_pending INTEGER NOT NULL DEFAULT 0;
ALTER TABLE jobs ADD COLUMN has_dependents INTEGER NOT NULL DEFAULT 0;
CREATE INDEX jobs_group ON jobs (group_id, state) WHERE group_id IS NOT NULL;
CREATE TABLE job_deps (
    job_id TEXT NOT NULL,
    dep_id TEXT NOT NULL,
    condition TEXT NOT NULL,
    PRIMARY KEY (job_id, dep_id)
);
CREATE INDEX job_deps_dep ON job_deps (dep_id)
