-- Replays of the events topic (`sluice replay`): what each one is to send, fixed when it
-- starts so that an interrupted replay resumes the same window. Its progress is not here but
-- in the committed offsets of the consumer group <prefix>replay-<name>, which the replay
-- commits in the same Kafka transactions as the jobs it produces.
CREATE TABLE sluice_replays (
    name text PRIMARY KEY,
    spec text NOT NULL,            -- the window and destinations asked for, normalized
    window_text text NOT NULL,     -- the same, for people
    topic text NOT NULL,           -- the events topic replayed
    destinations text[] NOT NULL,  -- the destinations served
    ranges jsonb NOT NULL,         -- [{"partition": P, "start": OFFSET, "end": OFFSET}, ...]
    total bigint NOT NULL,         -- events in the ranges
    created_at timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz
);
