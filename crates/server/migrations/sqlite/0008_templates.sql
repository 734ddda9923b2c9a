-- Job templates: every version is kept (a job names the one it came from). rm marks
-- all versions deleted, so a template made again under the name goes on numbering.
CREATE TABLE templates (
    name TEXT NOT NULL,
    version INTEGER NOT NULL,
    job TEXT NOT NULL,
    params TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    deleted_at INTEGER,
    PRIMARY KEY (name, version)
);
ALTER TABLE jobs ADD COLUMN template_name TEXT;
ALTER TABLE jobs ADD COLUMN template_version INTEGER
