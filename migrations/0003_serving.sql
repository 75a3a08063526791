-- The serving API's state (DESIGN section 4): rule sets, rule episodes, alerts and the
-- alert outbox. Times are UTC; money is integer minor units.

-- Rule sets, versioned. The current set is the highest version; before any row exists
-- the configured defaults (`serving.rules`) are version 0. `PUT /v1/rules` inserts
-- version n + 1 only when the client saw version n: the primary key makes two
-- concurrent writers of the same version fail (optimistic concurrency).
CREATE TABLE rule_sets (
    version     BIGINT      PRIMARY KEY CHECK (version > 0),
    rules       JSONB       NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    created_by  TEXT        NOT NULL
);

-- Per customer and rule, the latest episode: a run of firing window updates with no gap
-- longer than the 30-minute window between them. A rule that keeps firing raises one
-- alert per episode; its id is derived from (customer, rule, episode start), so a replay
-- of the same updates finds the same episode and the same alert id.
CREATE TABLE rule_episodes (
    customer_id    TEXT        NOT NULL,
    rule_id        TEXT        NOT NULL,
    started_at     TIMESTAMPTZ NOT NULL,
    last_fired_at  TIMESTAMPTZ NOT NULL,
    alert_id       UUID        NOT NULL,
    PRIMARY KEY (customer_id, rule_id),
    CHECK (last_fired_at >= started_at)
);

-- Alerts. `seq` orders them for cursors and Server-Sent Event ids: alerts are inserted
-- under a transaction-level advisory lock, so seq order is commit order and a reader
-- that saw seq n never later finds a smaller one committed.
CREATE TABLE alerts (
    seq            BIGINT      GENERATED ALWAYS AS IDENTITY UNIQUE,
    alert_id       UUID        PRIMARY KEY,
    customer_id    TEXT        NOT NULL,
    rule_id        TEXT        NOT NULL,
    rule_version   BIGINT      NOT NULL CHECK (rule_version >= 0),
    severity       TEXT        NOT NULL CHECK (severity IN ('low', 'medium', 'high', 'critical')),
    episode_start  TIMESTAMPTZ NOT NULL,
    as_of          TIMESTAMPTZ NOT NULL,
    raised_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    body           JSONB       NOT NULL,
    trace_context  JSONB       NOT NULL DEFAULT '{}',
    published_at   TIMESTAMPTZ
);
CREATE INDEX alerts_by_customer ON alerts (customer_id, seq);

-- The outbox: written in the same transaction as its alert; the relay publishes each
-- row to the alerts exchange and deletes it (and sets alerts.published_at) only after
-- the broker's confirm. Rows wait here while RabbitMQ is down.
CREATE TABLE alert_outbox (
    alert_id     UUID        PRIMARY KEY REFERENCES alerts (alert_id),
    routing_key  TEXT        NOT NULL,
    enqueued_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    attempts     INTEGER     NOT NULL DEFAULT 0,
    last_error   TEXT
);
