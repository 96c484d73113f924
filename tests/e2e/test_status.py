#!/usr/bin/env python3
"""`sluice status <messageId>` on a database holding job status rows, a parked job and dead
letters: the journey per destination in time order, --json, an unknown message (exit 1), and
a database without the parking tables."""
import json
import subprocess

import harness as h

SEED = r"""
INSERT INTO sluice_jobs (job_id, message_id, source_id, destination_id, destination_type,
    user_key, state, attempts, last_status, last_response, first_attempt_at, last_attempt_at,
    kafka_topic, kafka_partition, kafka_offset) VALUES
 ('m-42:d-web', 'm-42', 's1', 'd-web', 'WEBHOOK', 'u1', 'failed', 1, 503,
  E'<html>Service Unavailable\nretry later</html>', '2025-11-26 10:00:00Z',
  '2025-11-26 10:00:00Z', 'x.delivery', 2, 117),
 ('m-42:d-web', 'm-42', 's1', 'd-web', 'WEBHOOK', 'u1', 'succeeded', 2, 200, '{"ok":true}',
  '2025-11-26 10:00:00Z', '2025-11-26 10:00:10.5Z', 'x.delivery', 2, 117),
 ('m-42:d-crm', 'm-42', 's1', 'd-crm', 'WEBHOOK', 'u1', 'aborted', 1, 400,
  '{"error":"invalid email"}', '2025-11-26 10:00:01Z', '2025-11-26 10:00:01Z', 'x.delivery', 0,
  88),
 ('m-other:d-web', 'm-other', 's1', 'd-web', 'WEBHOOK', 'u2', 'succeeded', 1, 200, 'ok',
  '2025-11-26 10:00:00Z', '2025-11-26 10:00:00Z', 'x.delivery', 1, 5);
INSERT INTO sluice_failed_events (failed_at, stage, reason, source_id, destination_id,
    destination_type, message_id, event, user_key, failed_topic, failed_partition,
    failed_offset) VALUES
 ('2025-11-26 10:00:01.2Z', 'router', 'HTTP 400: {"error":"invalid email"}', 's1', 'd-crm',
  'WEBHOOK', 'm-42', '{"jobId":"m-42:d-crm"}', 'u1', 'x.failed', 0, 5),
 ('2025-11-26 09:59:59.9Z', 'destination_transformation', 'destination type HS is not supported',
  's1', 'd-hs', 'HS', 'm-42', '{}', 'u1', 'x.failed', 0, 4);
"""

# The parking tables as migration 0005 creates them (dropped above), and a parked job.
PARKED = r"""
CREATE TABLE IF NOT EXISTS sluice_parked (
    id bigserial PRIMARY KEY,
    kafka_topic text NOT NULL, kafka_partition int NOT NULL, kafka_offset bigint NOT NULL,
    destination_id text NOT NULL, user_key text NOT NULL, job_id text NOT NULL,
    message_id text NOT NULL, job text NOT NULL, attempts int NOT NULL DEFAULT 0,
    first_attempt_at timestamptz, last_attempt_at timestamptz, last_status int,
    last_response text, parked_at timestamptz NOT NULL DEFAULT now());
CREATE TABLE IF NOT EXISTS sluice_parked_keys (
    kafka_topic text NOT NULL, destination_id text NOT NULL, user_key text NOT NULL,
    kafka_partition int NOT NULL, next_attempt_at timestamptz NOT NULL,
    PRIMARY KEY (kafka_topic, destination_id, user_key));
INSERT INTO sluice_parked (kafka_topic, kafka_partition, kafka_offset, destination_id, user_key,
    job_id, message_id, job, attempts, last_status, last_response, parked_at) VALUES
 ('x.delivery', 1, 300, 'd-slow', 'u1', 'm-42:d-slow', 'm-42', '{}', 2, 429,
  'Too Many Requests', '2025-11-26 11:00:00Z');
INSERT INTO sluice_parked_keys VALUES ('x.delivery', 'd-slow', 'u1', 1, '2025-11-26 11:00:40Z');
"""


def status(env, *args):
    return subprocess.run([h.SLUICE, "status", *args], env=env.sluice_env(), capture_output=True,
                          text=True, timeout=30)


def test(env):
    out = subprocess.run([h.SLUICE, "migrate"], env=env.sluice_env(), capture_output=True,
                         text=True, timeout=60)
    if out.returncode != 0:
        h.fail(f"sluice migrate: {out.stderr}")
    h.psql(env.dsn, SEED)

    out = status(env, "--help")
    if out.returncode != 0 or "usage: sluice status" not in out.stdout:
        h.fail(f"--help: {out.returncode} {out.stdout}")
    out = status(env, "m-missing")
    if out.returncode != 1 or "no record of message m-missing" not in out.stderr:
        h.fail(f"unknown message: {out.returncode} {out.stdout} {out.stderr}")

    # Without the parking tables (a database before migration 0005) the rest still shows.
    h.psql(env.dsn, "DROP TABLE IF EXISTS sluice_parked, sluice_parked_keys")
    out = status(env, "m-42")
    if out.returncode != 0:
        h.fail(f"sluice status m-42: {out.returncode} {out.stderr}")
    text = out.stdout
    h.log("\n" + text)
    for want in ["message m-42: 3 destinations", "destination d-web (WEBHOOK)",
                 "destination d-crm (WEBHOOK)", "destination d-hs (HS)", "HTTP 503",
                 "<html>Service Unavailable retry later</html>", "stage router",
                 "sluice failed retry --id 1"]:
        if want not in text:
            h.fail(f"{want!r} missing from:\n{text}")
    web = text[text.index("destination d-web"):]
    if web.index("failed") > web.index("succeeded"):
        h.fail(f"d-web's states are not in time order:\n{text}")
    if "m-other" in text or "HTTP 200  ok" in text:
        h.fail(f"another message's rows are shown:\n{text}")

    h.psql(env.dsn, PARKED)
    out = status(env, "m-42", "--json")
    if out.returncode != 0:
        h.fail(f"--json: {out.returncode} {out.stderr}")
    doc = json.loads(out.stdout)
    dests = {d["destinationId"]: d for d in doc["destinations"]}
    if doc["messageId"] != "m-42" or set(dests) != {"d-web", "d-crm", "d-hs", "d-slow"}:
        h.fail(f"--json destinations: {out.stdout}")
    web = [(s["state"], s["attempts"], s["httpStatus"]) for s in dests["d-web"]["steps"]]
    if web != [("failed", 1, 503), ("succeeded", 2, 200)]:
        h.fail(f"d-web steps: {web}")
    if dests["d-web"]["steps"][0]["response"] != "<html>Service Unavailable\nretry later</html>":
        h.fail(f"d-web response: {dests['d-web']['steps'][0]}")
    crm = dests["d-crm"]["steps"]
    if [s["kind"] for s in crm] != ["job", "deadLetter"] or crm[1]["stage"] != "router" \
            or crm[1]["failedEventId"] != 1 or "retriedAt" in crm[1]:
        h.fail(f"d-crm steps: {crm}")
    slow = dests["d-slow"]["steps"]
    if len(slow) != 1 or slow[0]["kind"] != "parked" or slow[0]["httpStatus"] != 429 \
            or slow[0]["nextAttemptAt"] != "2025-11-26T11:00:40.000Z":
        h.fail(f"d-slow steps: {slow}")
    out = status(env, "m-42")
    if "next attempt of its user's queue at 2025-11-26T11:00:40.000Z" not in out.stdout:
        h.fail(f"the parked job: {out.stdout}")


if __name__ == "__main__":
    h.run(test, "status", kafka="none")
