-- batch_hourly and batch_daily, partitioned by UTC day: one partition per day, named
-- batch_hourly_YYYYMMDD and batch_daily_YYYYMMDD, made by the batch layer for the days
-- it publishes (services/batch-layer/src/partitions.rs), or by batch_day_partitions()
-- below for rows written by hand.
--
-- Why: a day's rows then go into that day's own, small primary key. In one table, a
-- night's new day went one row at a time into a B-tree of a month of rows or more, and a
-- full recompute walked all of it once per day. A day not stored yet is loaded into a
-- table of its own without indexes, indexed, and attached in the publishing transaction:
-- readers of an older snapshot see the partition but none of its rows, so they still see
-- one run's results or the next's, never a mix (what 0002 promises).
--
-- The rows already stored move into the new tables, day by day.

ALTER TABLE batch_hourly RENAME TO batch_hourly_unpartitioned;
ALTER TABLE batch_hourly_unpartitioned RENAME CONSTRAINT batch_hourly_pkey
    TO batch_hourly_unpartitioned_pkey;
DROP INDEX batch_hourly_by_date;
ALTER TABLE batch_daily RENAME TO batch_daily_unpartitioned;
ALTER TABLE batch_daily_unpartitioned RENAME CONSTRAINT batch_daily_pkey
    TO batch_daily_unpartitioned_pkey;
DROP INDEX batch_daily_by_day;

-- Per customer and UTC hour [hour, hour + 1 h); event_date is the hour's UTC date.
CREATE TABLE batch_hourly (
    customer_id       TEXT        NOT NULL,
    hour              TIMESTAMPTZ NOT NULL,
    event_date        DATE        NOT NULL,
    sum_minor         BIGINT      NOT NULL,
    count             BIGINT      NOT NULL CHECK (count > 0),
    max_minor         BIGINT      NOT NULL,
    distinct_vendors  INTEGER     NOT NULL CHECK (distinct_vendors > 0),
    PRIMARY KEY (customer_id, hour),
    CHECK (date_trunc('hour', hour) = hour),
    CHECK (event_date = (hour AT TIME ZONE 'UTC')::date)
) PARTITION BY RANGE (hour);

-- Per customer and UTC day, with the day's peak 30-minute window (see 0002).
CREATE TABLE batch_daily (
    customer_id          TEXT        NOT NULL,
    day                  DATE        NOT NULL,
    sum_minor            BIGINT      NOT NULL,
    count                BIGINT      NOT NULL CHECK (count > 0),
    max_minor            BIGINT      NOT NULL,
    distinct_vendors     INTEGER     NOT NULL CHECK (distinct_vendors > 0),
    peak_30m_sum_minor   BIGINT      NOT NULL,
    peak_30m_count       BIGINT      NOT NULL,
    peak_30m_end         TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (customer_id, day)
) PARTITION BY RANGE (day);

-- Makes the partitions of the days from_day..to_day that have none, the plain way
-- (CREATE TABLE … PARTITION OF, with an empty primary key), for rows written with INSERT:
-- by hand, by tools, by tests. The batch layer makes the partitions of the days it
-- publishes itself, loading a new day before indexing it.
CREATE FUNCTION batch_day_partitions(from_day DATE, to_day DATE) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    d DATE;
BEGIN
    FOR d IN SELECT generate_series(from_day, to_day, interval '1 day')::date LOOP
        IF to_regclass('batch_hourly_' || to_char(d, 'YYYYMMDD')) IS NULL THEN
            EXECUTE format(
                'CREATE TABLE %I PARTITION OF batch_hourly FOR VALUES FROM (%L) TO (%L)',
                'batch_hourly_' || to_char(d, 'YYYYMMDD'),
                (d::timestamp AT TIME ZONE 'UTC'), ((d + 1)::timestamp AT TIME ZONE 'UTC'));
        END IF;
        IF to_regclass('batch_daily_' || to_char(d, 'YYYYMMDD')) IS NULL THEN
            EXECUTE format(
                'CREATE TABLE %I PARTITION OF batch_daily FOR VALUES FROM (%L) TO (%L)',
                'batch_daily_' || to_char(d, 'YYYYMMDD'), d, d + 1);
        END IF;
    END LOOP;
END
$$;

SELECT batch_day_partitions(d, d)
FROM (SELECT event_date FROM batch_hourly_unpartitioned
      UNION SELECT day FROM batch_daily_unpartitioned) AS days (d);

INSERT INTO batch_hourly SELECT * FROM batch_hourly_unpartitioned ORDER BY hour, customer_id;
INSERT INTO batch_daily SELECT * FROM batch_daily_unpartitioned ORDER BY day, customer_id;
DROP TABLE batch_hourly_unpartitioned;
DROP TABLE batch_daily_unpartitioned;
