-- What each day was computed from, file by file: the lake files of that event_date as
-- "<path> <size>", the lines batch_days.fingerprint is the digest of.
--
-- Why: late arrivals add a few small files to an old day. With the listing, a run knows
-- which files are new and recomputes only the customers they hold (and, in the next day,
-- the same customers, whose first windows reach back), instead of the whole day. A day
-- whose files were removed or rewritten, or whose listing is not known (rows of runs
-- before this migration: NULL), is recomputed whole.
ALTER TABLE batch_days ADD COLUMN listing TEXT[];
