-- When an agent said it leaves (a clean exit): offline at once, not a lease TTL later.
ALTER TABLE agents ADD COLUMN left_at BIGINT;

-- Whether a container attempt that asked for GPUs got them (granted, unavailable).
ALTER TABLE attempts ADD COLUMN gpus TEXT
