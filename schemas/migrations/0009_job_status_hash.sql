-- `sluice status <messageId>` finds an event's rows by equality only, which a hash index
-- answers as well as the btree did. The hash index costs the router's COPY of status rows
-- less: no text comparisons to place each messageId (a random UUID) among the others.
DROP INDEX IF EXISTS sluice_jobs_message_id;
CREATE INDEX sluice_jobs_message_id ON sluice_jobs USING hash (message_id);
