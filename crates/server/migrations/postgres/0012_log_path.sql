-- Where agents with a job-log folder write a job's log (relative to it), when the
-- job names one (a template fills it from its parameters).
ALTER TABLE jobs ADD COLUMN log_path TEXT
