-- Schedules. next_tick_at is the tick the schedule waits for: a tick pass moves it on
-- with a compare-and-set in the transaction that submits the tick's job, so a tick
-- submits once across restarts and servers (its job's idempotency key, too).
CREATE TABLE schedules (
    name TEXT PRIMARY KEY,
    cron TEXT NOT NULL,
    tz TEXT NOT NULL,
    job TEXT,
    template TEXT,
    overlap TEXT NOT NULL,
    catch_up TEXT NOT NULL,
    catch_up_max INTEGER NOT NULL,
    paused INTEGER NOT NULL DEFAULT 0,
    next_tick_at BIGINT,
    last_tick_at BIGINT,
    last_job_id TEXT,
    last_error TEXT,
    created_at BIGINT NOT NULL
);
CREATE INDEX schedules_due ON schedules (next_tick_at) WHERE paused = 0
