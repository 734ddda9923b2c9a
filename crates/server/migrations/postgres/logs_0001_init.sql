CREATE TABLE log_records (
    job_id TEXT NOT NULL,
    attempt BIGINT NOT NULL,
    seq BIGINT NOT NULL,
    ts BIGINT NOT NULL,
    stream TEXT NOT NULL,
    text TEXT NOT NULL,
    PRIMARY KEY (job_id, attempt, seq)
);
