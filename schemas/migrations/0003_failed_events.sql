-- Dead letters of the processor, copied from the failed topic by the failed-events recorder.
-- `sluice failed list` reads them; `sluice failed retry` sends their events through again.
CREATE TABLE sluice_failed_events (
    id bigserial PRIMARY KEY,
    failed_at timestamptz NOT NULL,
    stage text NOT NULL,
    reason text NOT NULL,
    source_id text,
    destination_id text,
    destination_type text,
    message_id text,
    received_at text,
    event text NOT NULL,
    user_key text,
    failed_topic text NOT NULL,
    failed_partition int NOT NULL,
    failed_offset bigint NOT NULL,
    retried_at timestamptz,
    UNIQUE (failed_topic, failed_partition, failed_offset)
);
CREATE INDEX sluice_failed_events_pending ON sluice_failed_events (destination_id)
    WHERE retried_at IS NULL;
