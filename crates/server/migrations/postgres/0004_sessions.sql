-- Dashboard sign-ins: a session secret (stored hashed) stands for the API token it was
-- made from, until it expires, the user signs out, or the token is revoked.
CREATE TABLE dashboard_sessions (
    hash TEXT PRIMARY KEY,
    token_id TEXT NOT NULL,
    csrf TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL
)
