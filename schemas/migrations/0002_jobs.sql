-- One row per delivery job outcome, written by the router in batches.
CREATE TABLE sluice_jobs (
    id bigserial PRIMARY KEY,
    job_id text NOT NULL,
    message_id text NOT NULL,
    source_id text,
    destination_id text NOT NULL,
    user_key text,
    state text NOT NULL CHECK (state IN ('waiting', 'executing', 'succeeded', 'failed',
                                         'aborted', 'filtered')),
    attempts int NOT NULL,
    last_status int,
    last_response text,
    first_attempt_at timestamptz,
    last_attempt_at timestamptz,
    created_at timestamptz NOT NULL DEFAULT now(),
    kafka_topic text,
    kafka_partition int,
    kafka_offset bigint
);
CREATE INDEX sluice_jobs_message_id ON sluice_jobs (message_id);
CREATE INDEX sluice_jobs_job_id ON sluice_jobs (job_id);
