-- The progress updates of each attempt, oldest first: the last 100 are kept (older ones
-- are deleted as new ones come), for the dashboard's history and drover wait.
CREATE TABLE progress_updates (
    job_id TEXT NOT NULL,
    attempt BIGINT NOT NULL,
    seq BIGINT NOT NULL,
    at BIGINT NOT NULL,
    percent DOUBLE PRECISION NOT NULL,
    message TEXT NOT NULL,
    PRIMARY KEY (job_id, attempt, seq)
);

-- Whether the agent said in its last poll that it takes no new work (draining).
ALTER TABLE agents ADD COLUMN draining BIGINT NOT NULL DEFAULT 0;

-- The overview's throughput and latency of the last hour read jobs by when they ended.
CREATE INDEX jobs_finished ON jobs (finished_at) WHERE finished_at IS NOT NULL
