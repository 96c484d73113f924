// Sends a plan of calls through RudderStack's Node.js SDK (@rudderstack/rudder-sdk-node, the
// version pinned in package.json) and reports what happened, for tests/e2e/test_sdk_node.py.
//
//   node send.js PLAN.json REPORT.json
//
// PLAN: {"dataPlaneUrl": "...", "clients": {"<name>": {"writeKey": "...", <SDK options>}},
//        "calls": [{"client": "<name>", "method": "track|identify|...", "message": {...}}]}
// A message's "timestamp" string is passed to the SDK as a Date, as the SDK requires.
// REPORT: {"calls": [{"index", "error"}],        the SDK's verdict per call (callback)
//          "requests": [{"client", "url", "contentEncoding", "status", "body"}],
//                                                 every HTTP request the SDK made, body decoded
//          "flushErrors": [...], "requestErrors": [...]}   (errorHandler's reports)
// The process exits 0 once every call's callback ran (or 60 s passed), whatever the verdicts;
// the test judges.
'use strict';

const fs = require('fs');
const zlib = require('zlib');
const Analytics = require('@rudderstack/rudder-sdk-node');

function decodeBody(data, encoding) {
  if (data === undefined || data === null) return null;
  let buf = data;
  if (typeof data === 'string') buf = Buffer.from(data);
  if (Buffer.isBuffer(buf)) {
    if (encoding === 'gzip') buf = zlib.gunzipSync(buf);
    return JSON.parse(buf.toString('utf8'));
  }
  // Not yet serialized by axios: an object. Round-trip it as axios will send it.
  return JSON.parse(JSON.stringify(data));
}

function header(headers, name) {
  if (!headers) return undefined;
  if (typeof headers.get === 'function') {
    const v = headers.get(name);
    if (v !== undefined && v !== null) return String(v);
  }
  for (const k of Object.keys(headers)) {
    if (k.toLowerCase() === name.toLowerCase()) return String(headers[k]);
  }
  return undefined;
}

async function main() {
  const plan = JSON.parse(fs.readFileSync(process.argv[2], 'utf8'));
  const report = { calls: [], requests: [], flushErrors: [], requestErrors: [] };
  const clients = {};
  for (const [name, opts] of Object.entries(plan.clients)) {
    const { writeKey, ...options } = opts;
    const client = new Analytics(writeKey, {
      dataPlaneUrl: plan.dataPlaneUrl,
      logLevel: 'error',
      // Without it a failed request is an unhandled rejection of the SDK's own flush.
      errorHandler: (err) => report.requestErrors.push(`${name}: ${String(err.message || err)}`),
      ...options,
    });
    // Record every request on the wire, as the SDK built it, and its answer.
    client.axiosInstance.interceptors.request.use((config) => {
      const encoding = header(config.headers, 'Content-Encoding');
      const rec = {
        client: name,
        url: config.url,
        contentEncoding: encoding || null,
        authorization: header(config.headers, 'Authorization') || null,
        auth: config.auth || null,
        status: null,
        body: decodeBody(config.data, encoding),
      };
      report.requests.push(rec);
      config.__sluiceRecord = rec;
      return config;
    });
    client.axiosInstance.interceptors.response.use(
      (response) => {
        if (response.config && response.config.__sluiceRecord)
          response.config.__sluiceRecord.status = response.status;
        return response;
      },
      (error) => {
        const rec = error.config && error.config.__sluiceRecord;
        if (rec) rec.status = error.response ? error.response.status : String(error.code);
        return Promise.reject(error);
      },
    );
    clients[name] = client;
  }

  const settled = plan.calls.map(
    (call, index) =>
      new Promise((resolve) => {
        const message = { ...call.message };
        if (typeof message.timestamp === 'string') message.timestamp = new Date(message.timestamp);
        const rec = { index, error: null };
        report.calls.push(rec);
        try {
          clients[call.client][call.method](message, (err) => {
            if (err) rec.error = String(err.message || err);
            resolve();
          });
        } catch (e) {
          rec.error = 'threw: ' + String(e.message || e);
          resolve();
        }
      }),
  );

  // Flush until every queue is empty (flush() sends at most flushAt events per request).
  for (const client of Object.values(clients)) {
    for (let i = 0; i < 1000; i++) {
      try {
        await client.flush();
      } catch (e) {
        report.flushErrors.push(String(e.message || e));
      }
      if (client.queue.length === 0) break;
    }
  }
  await Promise.race([
    Promise.all(settled),
    new Promise((resolve) => setTimeout(resolve, 60000)),
  ]);
  fs.writeFileSync(process.argv[3], JSON.stringify(report));
  process.exit(0); // the SDK may still hold timers
}

main().catch((e) => {
  console.error(e && e.stack ? e.stack : e);
  process.exit(1);
});
