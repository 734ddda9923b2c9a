-- Log records are stored in chunks (one row per shipped batch, its records as JSON lines)
-- instead of a row per line: a job printing hundreds of MB costs a few hundred inserts.
-- Chunks of one attempt cover disjoint seq ranges, so ordering by last_seq orders records.
CREATE TABLE log_chunks (
    job_id TEXT NOT NULL,
    attempt BIGINT NOT NULL,
    first_seq BIGINT NOT NULL,
    last_seq BIGINT NOT NULL,
    records TEXT NOT NULL,
    PRIMARY KEY (job_id, attempt, last_seq)
);
INSERT INTO log_chunks (job_id, attempt, first_seq, last_seq, records)
    SELECT job_id, attempt, seq, seq, json_object('seq', seq, 'ts', ts, 'stream', stream, 'text', text)
    FROM log_records;
DROP TABLE log_records
