-- batch_baseline_windows (0010), format 2 and keyed by run (services/batch-layer/src/
-- baselines.rs).
--
-- days: a format byte (2), then per day in day order three LEB128 varints of
-- zigzag-encoded integers: the day number less the previous day's (the first day's:
-- less 0), the day's sum and its peak. About 6 bytes a day where format 1 took 20.
--
-- run_id instead of as_of: the run that wrote the rows. A run writes the table in a
-- transaction of its own, next to its publishing transaction rather than inside it (it
-- is a cache, and the publishing transaction is what readers wait for); the next run
-- uses the rows only when they are the last succeeded run's, and otherwise reads the
-- daily rows. A run that fails, or stops between its two commits, leaves rows of a run
-- that is not the last succeeded one.
--
-- The rows in format 1 go: the next run reads the daily rows once.
DROP TABLE batch_baseline_windows;

CREATE UNLOGGED TABLE batch_baseline_windows (
    customer_id  TEXT   NOT NULL,
    run_id       BIGINT NOT NULL,
    days         BYTEA  NOT NULL
);
