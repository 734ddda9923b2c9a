CREATE TABLE jobs (
    num BIGSERIAL PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    name TEXT NOT NULL,
    queue TEXT NOT NULL,
    priority BIGINT NOT NULL,
    state TEXT NOT NULL,
    cancel_requested BIGINT NOT NULL DEFAULT 0,
    exec TEXT NOT NULL,
    labels TEXT NOT NULL,
    required TEXT NOT NULL,
    timeout_ms BIGINT,
    grace_ms BIGINT NOT NULL,
    max_attempts BIGINT NOT NULL,
    backoff_base_ms BIGINT NOT NULL,
    backoff_cap_ms BIGINT NOT NULL,
    env TEXT NOT NULL,
    secrets TEXT NOT NULL,
    metadata TEXT NOT NULL,
    idempotency_key TEXT UNIQUE,
    attempts_used BIGINT NOT NULL DEFAULT 0,
    current_attempt BIGINT NOT NULL DEFAULT 0,
    agent_id TEXT,
    lease_expires_at BIGINT,
    progress_pct DOUBLE PRECISION,
    progress_msg TEXT,
    result TEXT,
    exit_code BIGINT,
    error TEXT,
    created_at BIGINT NOT NULL,
    run_at BIGINT NOT NULL,
    started_at BIGINT,
    finished_at BIGINT,
    updated_at BIGINT NOT NULL
);
CREATE INDEX jobs_claim ON jobs (queue, priority DESC, num) WHERE state = 'queued';
CREATE INDEX jobs_due ON jobs (run_at) WHERE state = 'queued';
CREATE INDEX jobs_agent ON jobs (agent_id) WHERE state IN ('leased', 'running');
CREATE INDEX jobs_expiry ON jobs (lease_expires_at) WHERE state IN ('leased', 'running');
CREATE INDEX jobs_list ON jobs (state, num);

CREATE TABLE attempts (
    job_id TEXT NOT NULL,
    number BIGINT NOT NULL,
    agent_id TEXT NOT NULL,
    state TEXT NOT NULL,
    leased_at BIGINT NOT NULL,
    started_at BIGINT,
    finished_at BIGINT,
    exit_code BIGINT,
    error TEXT,
    PRIMARY KEY (job_id, number)
);

CREATE TABLE job_events (
    id BIGSERIAL PRIMARY KEY,
    job_id TEXT NOT NULL,
    at BIGINT NOT NULL,
    kind TEXT NOT NULL,
    from_state TEXT,
    to_state TEXT NOT NULL,
    attempt BIGINT,
    actor TEXT NOT NULL,
    reason TEXT
);
CREATE INDEX job_events_job ON job_events (job_id, id);

CREATE TABLE agents (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    token_hash TEXT NOT NULL UNIQUE,
    labels TEXT NOT NULL,
    queues TEXT NOT NULL,
    slots BIGINT NOT NULL,
    host TEXT NOT NULL,
    stats TEXT NOT NULL,
    registered_at BIGINT NOT NULL,
    last_seen_at BIGINT NOT NULL
);

CREATE TABLE tokens (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    scope TEXT NOT NULL,
    hash TEXT NOT NULL UNIQUE,
    created_at BIGINT NOT NULL,
    expires_at BIGINT,
    revoked_at BIGINT,
    -- Bootstrap tokens: labels forced onto the agent that uses it, and when it was used.
    labels TEXT,
    used_at BIGINT
);

CREATE TABLE audit (
    id BIGSERIAL PRIMARY KEY,
    at BIGINT NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT NOT NULL,
    detail TEXT
);
CREATE INDEX audit_at ON audit (id);
