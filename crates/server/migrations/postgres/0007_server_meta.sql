-- Facts every server on this database must agree on, e.g. the fingerprint of the key
-- that seals job secrets (a server with another key refuses to start).
CREATE TABLE server_meta (
    name TEXT PRIMARY KEY,
    value TEXT NOT NULL
)
