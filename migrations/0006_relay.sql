-- The alert relay's bookkeeping (services/serving-api/src/relay): when an outbox row may
-- be tried again, and what became of each published alert.

-- A row the broker refused (nacked) waits before its next attempt, with a capped
-- exponential backoff, so it never holds up the rows behind it. New rows are due at once.
ALTER TABLE alert_outbox
    ADD COLUMN next_attempt_at TIMESTAMPTZ NOT NULL DEFAULT now();

-- Set together with published_at, after the broker's confirm: `routed` is false when no
-- queue was bound for the routing key (the broker returned the mandatory message, so no
-- subscriber received it; history and the stream still have it); `published_by` names
-- the relay instance that published it.
ALTER TABLE alerts
    ADD COLUMN routed BOOLEAN,
    ADD COLUMN published_by TEXT;

-- The relay claims outbox rows in seq order; unpublished alerts are few (the outbox),
-- so it walks this small index instead of sorting the outbox or scanning all alerts.
CREATE INDEX alerts_unpublished ON alerts (seq) WHERE published_at IS NULL;
