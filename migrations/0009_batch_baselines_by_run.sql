-- batch_baselines, partitioned by the run that derived the rows: one partition per run,
-- batch_baselines_r<run_id>, made by that run (services/batch-layer/src/baselines.rs),
-- or by batch_baselines_partition() below for rows written by hand.
--
-- Why: every run replaces every baseline. Deleting the rows and inserting new ones into
-- the same primary key cost a uniqueness check against the deleted row per customer
-- (0.6-1.1 s for 100,000 customers, most of a night's last step). A run now copies its
-- baselines into a table of its own without indexes, indexes it, attaches it, and
-- deletes the previous run's rows, all in its transaction: a reader whose snapshot is
-- older sees the previous rows and none of the new ones, a newer one only the new ones
-- (one run's results or the next's, as 0002 promises). Emptied partitions are dropped by
-- a later run.
--
-- The primary key of each partition is (customer_id, run_id): one row per customer and
-- run, and a single run's rows are visible at a time.

ALTER TABLE batch_baselines RENAME TO batch_baselines_unpartitioned;
ALTER TABLE batch_baselines_unpartitioned RENAME CONSTRAINT batch_baselines_pkey
    TO batch_baselines_unpartitioned_pkey;

CREATE TABLE batch_baselines (
    customer_id          TEXT        NOT NULL,
    as_of                TIMESTAMPTZ NOT NULL,
    active_days          INTEGER     NOT NULL CHECK (active_days > 0),
    mean_daily_minor     NUMERIC     NOT NULL,
    stddev_daily_minor   NUMERIC     NOT NULL,
    p95_peak_30m_minor   BIGINT      NOT NULL,
    max_peak_30m_minor   BIGINT      NOT NULL,
    run_id               BIGINT      NOT NULL,
    PRIMARY KEY (customer_id, run_id)
) PARTITION BY LIST (run_id);

-- The partition of run `run` (for rows written by hand: tests, benchmarks), unless it
-- exists.
CREATE FUNCTION batch_baselines_partition(run BIGINT) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    IF to_regclass('batch_baselines_r' || run) IS NULL THEN
        EXECUTE format('CREATE TABLE %I PARTITION OF batch_baselines FOR VALUES IN (%s)',
                       'batch_baselines_r' || run, run);
    END IF;
END
$$;

-- The stored rows belong to the last succeeded run.
DO $$
DECLARE
    latest BIGINT;
BEGIN
    IF EXISTS (SELECT 1 FROM batch_baselines_unpartitioned) THEN
        SELECT coalesce(max(run_id), 0) INTO latest FROM batch_runs WHERE status = 'succeeded';
        PERFORM batch_baselines_partition(latest);
        INSERT INTO batch_baselines
        SELECT customer_id, as_of, active_days, mean_daily_minor, stddev_daily_minor,
               p95_peak_30m_minor, max_peak_30m_minor, latest
        FROM batch_baselines_unpartitioned;
    END IF;
END
$$;
DROP TABLE batch_baselines_unpartitioned;
