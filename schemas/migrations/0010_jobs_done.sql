-- The offsets of jobs that reached a final state, for a router that takes over a delivery
-- partition (router/status.c, rt_status_done_offsets): one row per (topic, partition) per batch
-- of status rows, written in the same transaction as the batch. Until now the router found them
-- in sluice_jobs through a btree on (kafka_topic, kafka_partition, kafka_offset); keeping that
-- index up to date was about a third of Postgres's work per status row. The offsets themselves
-- stay in sluice_jobs, for `sluice status`.
--
-- Partitioned by UTC day like sluice_jobs, and its days are created and dropped with
-- sluice_jobs' (router.status_retention).
CREATE TABLE sluice_jobs_done (
    kafka_topic text NOT NULL,
    kafka_partition int NOT NULL,
    last_offset bigint NOT NULL, -- the highest offset of the row
    -- the offsets, as ranges of consecutive ones: first_offsets[i] to last_offsets[i]
    first_offsets bigint[] NOT NULL,
    last_offsets bigint[] NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
) PARTITION BY RANGE (created_at);

CREATE TABLE sluice_jobs_done_default PARTITION OF sluice_jobs_done DEFAULT;

CREATE INDEX sluice_jobs_done_kafka ON sluice_jobs_done (kafka_topic, kafka_partition, last_offset);

-- As in 0004, for both tables: creates the partition of one UTC day unless it exists, moving
-- the rows of that day the DEFAULT partition holds into it. Safe to call from several routers.
CREATE OR REPLACE FUNCTION sluice_jobs_add_day(day date) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    suffix text := to_char(day, 'YYYYMMDD');
    lo timestamptz := day::timestamp AT TIME ZONE 'UTC';
    hi timestamptz := (day + 1)::timestamp AT TIME ZONE 'UTC';
    parent text;
    name text;
BEGIN
    IF to_regclass('sluice_jobs_p' || suffix) IS NOT NULL
       AND to_regclass('sluice_jobs_done_p' || suffix) IS NOT NULL THEN
        RETURN;
    END IF;
    -- the migration lock's key + 1: serializes the routers creating the same day
    PERFORM pg_advisory_xact_lock(126943860782694);
    FOREACH parent IN ARRAY ARRAY['sluice_jobs', 'sluice_jobs_done'] LOOP
        name := parent || '_p' || suffix;
        CONTINUE WHEN to_regclass(name) IS NOT NULL;
        EXECUTE format('CREATE TABLE %I (LIKE %I INCLUDING DEFAULTS INCLUDING CONSTRAINTS)',
                       name, parent);
        EXECUTE format('WITH moved AS (DELETE FROM %I WHERE created_at >= $1 '
                       'AND created_at < $2 RETURNING *) INSERT INTO %I SELECT * FROM moved',
                       parent || '_default', name)
            USING lo, hi;
        EXECUTE format('ALTER TABLE %I ATTACH PARTITION %I FOR VALUES FROM (%L) TO (%L)',
                       parent, name, lo, hi);
    END LOOP;
END
$$;

-- The days sluice_jobs has get their sluice_jobs_done partition, and the final jobs recorded so
-- far their rows (one per topic, partition and day; each offset a range of its own).
SELECT sluice_jobs_add_day(to_date(substr(c.relname, 14), 'YYYYMMDD'))
FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
WHERE i.inhparent = 'sluice_jobs'::regclass AND c.relname ~ '^sluice_jobs_p[0-9]{8}$';

INSERT INTO sluice_jobs_done (kafka_topic, kafka_partition, last_offset, first_offsets,
                              last_offsets, created_at)
SELECT kafka_topic, kafka_partition, max(kafka_offset),
       array_agg(DISTINCT kafka_offset ORDER BY kafka_offset),
       array_agg(DISTINCT kafka_offset ORDER BY kafka_offset), min(created_at)
FROM sluice_jobs
WHERE kafka_topic IS NOT NULL AND state IN ('succeeded', 'aborted')
GROUP BY kafka_topic, kafka_partition, (created_at AT TIME ZONE 'UTC')::date;

DROP INDEX IF EXISTS sluice_jobs_kafka;
