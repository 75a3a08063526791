-- The batch layer's run log: one row per run, whatever its outcome (DESIGN section 4).
-- Times are UTC; the watermark T_b is hour-aligned event time.
CREATE TABLE batch_runs (
    run_id        BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    watermark     TIMESTAMPTZ NOT NULL,
    started_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    finished_at   TIMESTAMPTZ,
    status        TEXT NOT NULL CHECK (status IN ('running', 'succeeded', 'failed')),
    input_files   BIGINT NOT NULL DEFAULT 0 CHECK (input_files >= 0),
    rows_written  BIGINT NOT NULL DEFAULT 0 CHECK (rows_written >= 0),
    error         TEXT,
    CHECK (date_trunc('hour', watermark) = watermark),
    CHECK ((status = 'running') = (finished_at IS NULL))
);

CREATE INDEX batch_runs_succeeded_by_watermark
    ON batch_runs (watermark DESC) WHERE status = 'succeeded';
