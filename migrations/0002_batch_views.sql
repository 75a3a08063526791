-- The batch layer's views (DESIGN sections 3 and 4). Every figure is exact for the
-- events in the lake with ts <= the watermark T_b of the latest succeeded run in
-- batch_runs; a run replaces the rows of the days it recomputes and its run-log row in
-- one transaction, so readers see one run's results or the next's, never a mix.
-- Money is integer minor units; hours and days are UTC.

-- Per customer and UTC hour [hour, hour + 1 h).
CREATE TABLE batch_hourly (
    customer_id       TEXT        NOT NULL,
    hour              TIMESTAMPTZ NOT NULL,
    event_date        DATE        NOT NULL,
    sum_minor         BIGINT      NOT NULL,
    count             BIGINT      NOT NULL CHECK (count > 0),
    max_minor         BIGINT      NOT NULL,
    distinct_vendors  INTEGER     NOT NULL CHECK (distinct_vendors > 0),
    PRIMARY KEY (customer_id, hour),
    CHECK (date_trunc('hour', hour) = hour)
);
CREATE INDEX batch_hourly_by_date ON batch_hourly (event_date);

-- Per customer and UTC day, with the day's peak 30-minute window: the largest sum of
-- W(c, t) = { e : t - 30 min < e.ts <= t } over t at the day's event times (a window
-- may reach into the previous day); among equal sums, the largest count.
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
);
CREATE INDEX batch_daily_by_day ON batch_daily (day);

-- Every vendor a customer has used, with the first time.
CREATE TABLE batch_vendors (
    customer_id  TEXT        NOT NULL,
    vendor_id    TEXT        NOT NULL,
    first_seen   TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (customer_id, vendor_id)
);

-- Per customer, as of T_b: daily spend over the 30 UTC days ending with T_b's day (days
-- without spending count as 0) and the 95th percentile (nearest rank) and maximum of the
-- daily 30-minute peaks of the active days among them.
CREATE TABLE batch_baselines (
    customer_id          TEXT        PRIMARY KEY,
    as_of                TIMESTAMPTZ NOT NULL,
    active_days          INTEGER     NOT NULL CHECK (active_days > 0),
    mean_daily_minor     NUMERIC     NOT NULL,
    stddev_daily_minor   NUMERIC     NOT NULL,
    p95_peak_30m_minor   BIGINT      NOT NULL,
    max_peak_30m_minor   BIGINT      NOT NULL
);

-- What each day was computed from: the fingerprint of the lake files of that
-- event_date (names and sizes); a day whose files change is recomputed.
CREATE TABLE batch_days (
    event_date   DATE    PRIMARY KEY,
    fingerprint  TEXT    NOT NULL,
    files        INTEGER NOT NULL,
    run_id       BIGINT  NOT NULL REFERENCES batch_runs (run_id)
);
