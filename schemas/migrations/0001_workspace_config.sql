-- The last good workspace config per location (file path or URL), so that a role can start
-- while its file or URL is missing or broken.
CREATE TABLE sluice_workspace_config (
    location text PRIMARY KEY,
    version text NOT NULL,
    config jsonb NOT NULL,
    saved_at timestamptz NOT NULL DEFAULT now()
);
