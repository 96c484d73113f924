-- The warehouse role's bookkeeping. An upload is one sync of one (source, destination): the
-- staging files written from the events consumed since the last sync, and the state of their
-- load into the destination's warehouse. Any instance claims a due upload (claimed_by with a
-- lease in claimed_until, renewed while it works; an expired lease means the instance died).
CREATE TABLE sluice_wh_uploads (
    id bigserial PRIMARY KEY,
    source_id text NOT NULL,
    destination_id text NOT NULL,
    destination_type text NOT NULL DEFAULT 'POSTGRES',
    namespace text NOT NULL,
    -- waiting, generating_load_files, generating_load_files_failed, exporting_data,
    -- exporting_data_failed, exported_data, aborted
    state text NOT NULL DEFAULT 'waiting',
    attempts int NOT NULL DEFAULT 0,
    error text,
    events bigint NOT NULL DEFAULT 0,
    rows_staged bigint NOT NULL DEFAULT 0,
    rows_loaded bigint NOT NULL DEFAULT 0,
    first_event_at timestamptz,
    last_event_at timestamptz,
    -- {"<partition>": [first offset, last offset], ...} of the events in this upload
    kafka_topic text,
    kafka_offsets jsonb,
    first_attempt_at timestamptz,
    last_attempt_at timestamptz,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    claimed_by text,
    claimed_until timestamptz,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);
-- Claims look for the oldest due upload that is not finished.
CREATE INDEX sluice_wh_uploads_due ON sluice_wh_uploads (next_attempt_at, id)
    WHERE state NOT IN ('exported_data', 'aborted');
CREATE INDEX sluice_wh_uploads_destination ON sluice_wh_uploads (destination_id, source_id, id);

-- Every state an upload went through, with the error of the failed ones.
CREATE TABLE sluice_wh_upload_events (
    upload_id bigint NOT NULL REFERENCES sluice_wh_uploads (id) ON DELETE CASCADE,
    at timestamptz NOT NULL DEFAULT clock_timestamp(),
    state text NOT NULL,
    attempt int NOT NULL DEFAULT 0,
    instance text,
    error text
);
CREATE INDEX sluice_wh_upload_events_upload ON sluice_wh_upload_events (upload_id, at);

-- One Avro staging file per table of an upload.
CREATE TABLE sluice_wh_staging_files (
    upload_id bigint NOT NULL REFERENCES sluice_wh_uploads (id) ON DELETE CASCADE,
    table_name text NOT NULL,
    path text NOT NULL,
    rows bigint NOT NULL,
    bytes bigint NOT NULL DEFAULT 0,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (upload_id, table_name)
);

-- The load of one table of an upload: waiting, exporting_data, exported_data or
-- exporting_data_failed (with the error).
CREATE TABLE sluice_wh_table_uploads (
    upload_id bigint NOT NULL REFERENCES sluice_wh_uploads (id) ON DELETE CASCADE,
    table_name text NOT NULL,
    state text NOT NULL DEFAULT 'waiting',
    rows_loaded bigint NOT NULL DEFAULT 0,
    attempts int NOT NULL DEFAULT 0,
    error text,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (upload_id, table_name)
);

-- The warehouse schemas as last seen: one row per column of each table of each namespace.
CREATE TABLE sluice_wh_schemas (
    destination_id text NOT NULL,
    namespace text NOT NULL,
    table_name text NOT NULL,
    column_name text NOT NULL,
    type text NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (destination_id, namespace, table_name, column_name)
);
