-- Tracing (README "Tracing"): each job status row carries the event's W3C trace-id, the span
-- of the attempt it records (sent as traceparent) and its parent (the processor's span), and
-- the times the event passed each stage, for `sluice status`: received by the gateway, stored
-- in the events topic (its Kafka timestamp), read and produced by the processor, read by the
-- router, and the attempt's answer. Parked jobs keep the same, so a retried job keeps its
-- trace and its times.
ALTER TABLE sluice_jobs
    ADD COLUMN trace_id text,
    ADD COLUMN span_id text,
    ADD COLUMN parent_span_id text,
    ADD COLUMN received_at timestamptz,
    ADD COLUMN enqueued_at timestamptz,
    ADD COLUMN picked_at timestamptz,
    ADD COLUMN processed_at timestamptz,
    ADD COLUMN routed_at timestamptz,
    ADD COLUMN completed_at timestamptz;

ALTER TABLE sluice_parked
    ADD COLUMN traceparent text,
    ADD COLUMN tracestate text,
    ADD COLUMN received_at timestamptz,
    ADD COLUMN enqueued_at timestamptz,
    ADD COLUMN picked_at timestamptz,
    ADD COLUMN processed_at timestamptz,
    ADD COLUMN routed_at timestamptz;
