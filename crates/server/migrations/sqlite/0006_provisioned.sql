-- Agents a provider started on demand: one row per start, kept after the agent ended
-- (counts of starts and failures, the last failure's reason) until the provisioner
-- prunes rows that ended a day ago.
CREATE TABLE provisioned (
    id TEXT PRIMARY KEY,
    provider TEXT NOT NULL,
    kind TEXT NOT NULL,
    handle TEXT,
    token_id TEXT NOT NULL,
    agent_id TEXT,
    state TEXT NOT NULL,
    started_at BIGINT NOT NULL,
    ended_at BIGINT,
    reason TEXT
);
CREATE INDEX provisioned_provider ON provisioned (provider, started_at);
CREATE INDEX provisioned_agent ON provisioned (agent_id)
