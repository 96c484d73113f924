-- Jobs the router parked: every job waiting for a retry, and the later jobs of the same
-- (destination, user) behind it, so that nothing waiting is held in memory and nothing is lost
-- when a router stops. Rows of one key are delivered in id order.
CREATE TABLE sluice_parked (
    id bigserial PRIMARY KEY,
    kafka_topic text NOT NULL,
    kafka_partition int NOT NULL,
    kafka_offset bigint NOT NULL,
    destination_id text NOT NULL,
    user_key text NOT NULL,
    job_id text NOT NULL,
    message_id text NOT NULL,
    job text NOT NULL,
    attempts int NOT NULL DEFAULT 0,
    first_attempt_at timestamptz,
    last_attempt_at timestamptz,
    last_status int,
    last_response text,
    parked_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX sluice_parked_key ON sluice_parked (kafka_topic, destination_id, user_key, id);
CREATE INDEX sluice_parked_message_id ON sluice_parked (message_id);

-- One row per blocked (destination, user): when its first parked job is due.
CREATE TABLE sluice_parked_keys (
    kafka_topic text NOT NULL,
    destination_id text NOT NULL,
    user_key text NOT NULL,
    kafka_partition int NOT NULL,
    next_attempt_at timestamptz NOT NULL,
    PRIMARY KEY (kafka_topic, destination_id, user_key)
);
CREATE INDEX sluice_parked_keys_due ON sluice_parked_keys (kafka_topic, kafka_partition,
                                                           next_attempt_at);
