-- Concurrency keys: at most concurrency_limit jobs with one key leased or running at
-- once. The partial indexes count what runs, per key and per queue, for the claim.
ALTER TABLE jobs ADD COLUMN concurrency_key TEXT;
ALTER TABLE jobs ADD COLUMN concurrency_limit INTEGER;
CREATE INDEX jobs_active_key ON jobs (concurrency_key) WHERE concurrency_key IS NOT NULL AND state IN ('leased', 'running');
CREATE INDEX jobs_active_queue ON jobs (queue) WHERE state IN ('leased', 'running')
