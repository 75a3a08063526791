-- The days each baseline was derived from, kept for the next run: per customer with a
-- baseline, as of the same T_b, its days in the 30-day window as bytes: a format byte
-- (1), then per day in day order the day number (days since 1970-01-01, int4), the
-- day's sum and its peak (batch_daily's sum_minor and peak_30m_sum_minor, int8),
-- big-endian (services/batch-layer/src/baselines.rs).
--
-- Why: every night rewrites every baseline, and read a month of daily rows back for it
-- (2.4 million rows for 100,000 customers). The next run now reads one row per customer,
-- drops the days that left the window and replaces the days it recomputes.
--
-- A cache, so UNLOGGED and without an index (it is only read whole, by the next run):
-- no WAL for its 50 MB a night. After a crash Postgres empties it, and so does the SQL
-- fallback of the baselines; a run that finds it empty, or not as of the published
-- watermark, reads the daily rows instead.
CREATE UNLOGGED TABLE batch_baseline_windows (
    customer_id  TEXT        NOT NULL,
    as_of        TIMESTAMPTZ NOT NULL,
    days         BYTEA       NOT NULL
);
