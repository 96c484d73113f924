-- Job status (router v2): sluice_jobs, one row per state change the router records, is now
-- partitioned by day on created_at (UTC days, partitions named sluice_jobs_pYYYYMMDD), so that
-- retention (router.status_retention) drops whole days instead of deleting rows. The router
-- creates today's and tomorrow's partitions (router/status.c); the DEFAULT partition only
-- catches rows written when those are missing, and sluice_jobs_add_day() moves them out.
--
-- The rows of 0002's table are dropped, not copied: no release has shipped with it, and they
-- are a history of deliveries, not state the pipeline needs.
DROP TABLE IF EXISTS sluice_jobs;

CREATE TABLE sluice_jobs (
    id bigserial NOT NULL, -- orders the rows of one transaction (they share created_at)
    job_id text NOT NULL,
    message_id text NOT NULL,
    source_id text,
    destination_id text NOT NULL,
    destination_type text,
    user_key text,
    state text NOT NULL CHECK (state IN ('waiting', 'executing', 'succeeded', 'failed',
                                         'aborted', 'filtered')),
    attempts int NOT NULL,
    last_status int,
    last_response text, -- at most 10 KB, capped by the writer
    first_attempt_at timestamptz,
    last_attempt_at timestamptz,
    created_at timestamptz NOT NULL DEFAULT now(),
    kafka_topic text,
    kafka_partition int,
    kafka_offset bigint
) PARTITION BY RANGE (created_at);

CREATE TABLE sluice_jobs_default PARTITION OF sluice_jobs DEFAULT;

-- `sluice status <messageId>`
CREATE INDEX sluice_jobs_message_id ON sluice_jobs (message_id);
-- the jobs of a delivery partition already done (a router skipping them after a rebalance)
CREATE INDEX sluice_jobs_kafka ON sluice_jobs (kafka_topic, kafka_partition, kafka_offset);

-- Creates the partition of one UTC day unless it exists, moving the rows of that day the
-- DEFAULT partition holds into it. Safe to call from several routers at once.
CREATE FUNCTION sluice_jobs_add_day(day date) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    name text := 'sluice_jobs_p' || to_char(day, 'YYYYMMDD');
    lo timestamptz := day::timestamp AT TIME ZONE 'UTC';
    hi timestamptz := (day + 1)::timestamp AT TIME ZONE 'UTC';
BEGIN
    IF to_regclass(name) IS NOT NULL THEN
        RETURN;
    END IF;
    -- the migration lock's key + 1: serializes the routers creating the same day
    PERFORM pg_advisory_xact_lock(126943860782694);
    IF to_regclass(name) IS NOT NULL THEN
        RETURN;
    END IF;
    EXECUTE format('CREATE TABLE %I (LIKE sluice_jobs INCLUDING DEFAULTS INCLUDING CONSTRAINTS)',
                   name);
    EXECUTE format('WITH moved AS (DELETE FROM sluice_jobs_default WHERE created_at >= $1 '
                   'AND created_at < $2 RETURNING *) INSERT INTO %I SELECT * FROM moved', name)
        USING lo, hi;
    EXECUTE format('ALTER TABLE sluice_jobs ATTACH PARTITION %I FOR VALUES FROM (%L) TO (%L)',
                   name, lo, hi);
END
$$;
