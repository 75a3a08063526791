-- batch_baseline_windows.days in format 2 (services/batch-layer/src/baselines.rs): a
-- format byte (2), then per day in day order three LEB128 varints of zigzag-encoded
-- integers: the day number less the previous day's (the first day's: less 0), the day's
-- sum and its peak. About 6 bytes a day where format 1 (0010) took 20: every run writes
-- the table whole inside its transaction, and the next reads it whole.
--
-- The rows in format 1 go: the next run finds the table empty and reads the daily rows.
TRUNCATE batch_baseline_windows;

COMMENT ON COLUMN batch_baseline_windows.days IS
    'format byte 2, then per day: varint zigzag day-number delta, sum, peak (services/batch-layer/src/baselines.rs)';
