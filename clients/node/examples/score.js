#!/usr/bin/env node
// An example command component in Node.js: scores one JSON batch and records
// what it did into the relive timeline.
//
//   node examples/score.js [BATCH.json | -]     (or params, or stdin; see readBatch)
//
// The batch is {"rows": [[x1, x2, ...], ...], "weights": [w1, w2, ...]} or just
// the rows array. The component computes a linear score per row, records the
// row count and mean score as stats, and records a sha256 "model digest" of
// the weights as a model version. The executor (or any parent) passes where
// and under what identity to record in RELIVE_* variables and TRACEPARENT;
// see ../README.md. On success it prints one JSON line: the stats, the model
// digest and the final HLC, so the parent can update its clock past the child.

import { createHash } from "node:crypto";
import { readFileSync } from "node:fs";

import { Recorder } from "../src/index.js";

/**
 * The batch comes from, in order: a file named on the command line ("-" for
 * stdin), the component's params (RELIVE_PARAMS: {"rows", "weights"} inline or
 * {"batch_file": path}), or stdin when it is not a terminal.
 */
function readBatch(argv, env) {
  const file = argv.find((a) => !a.startsWith("-") || a === "-");
  const params = env.RELIVE_PARAMS ? JSON.parse(env.RELIVE_PARAMS) : {};
  let batch;
  if (file) batch = JSON.parse(readFileSync(file === "-" ? 0 : file, "utf8"));
  else if (Array.isArray(params.rows)) batch = params;
  else if (params.batch_file) batch = JSON.parse(readFileSync(params.batch_file, "utf8"));
  else if (!process.stdin.isTTY) batch = JSON.parse(readFileSync(0, "utf8") || "null");
  if (batch === undefined || batch === null) {
    throw new TypeError("no batch: name a JSON file, pipe one on stdin, or give params {rows, weights}");
  }
  const rows = Array.isArray(batch) ? batch : batch.rows;
  if (!Array.isArray(rows) || !rows.every((r) => Array.isArray(r) && r.every(Number.isFinite))) {
    throw new TypeError('the batch must be {"rows": [[number, ...], ...]} or an array of rows');
  }
  const width = rows[0]?.length ?? 0;
  const given = Array.isArray(batch.weights) ? batch.weights : params.weights;
  const weights = Array.isArray(given) ? given : Array(width).fill(1 / Math.max(width, 1));
  return { rows, weights };
}

/** Canonical bytes of the model, so the same weights always give the same digest. */
function modelDigest(weights) {
  return createHash("sha256").update(JSON.stringify({ kind: "linear", weights })).digest("hex");
}

async function main() {
  let recorder;
  try {
    recorder = new Recorder();
  } catch (err) {
    process.stderr.write(`score: ${err.message}\n`);
    process.exitCode = 2;
    return;
  }
  let status = 0;
  let failure = "";
  try {
    recorder.lifecycle("component.started", "RUNNING");
    const { rows, weights } = readBatch(process.argv.slice(2), process.env);
    const sha256 = modelDigest(weights);
    const modelVersion = process.env.RELIVE_MODEL_VERSION || `models/node-linear/versions/${sha256.slice(0, 12)}`;
    recorder.model(modelVersion, sha256, "loaded");

    const scores = rows.map((row) => row.reduce((sum, x, i) => sum + x * (weights[i] ?? 0), 0));
    const mean = scores.length ? scores.reduce((a, b) => a + b, 0) / scores.length : 0;
    recorder.stat("rows", rows.length);
    recorder.stat("mean_score", mean, { labels: { language: "node" } });
    const digest = createHash("sha256").update(JSON.stringify(scores)).digest("hex");
    recorder.event("predictions.digest", { sha256: digest, count: scores.length });
    recorder.log("INFO", `scored ${rows.length} rows, mean ${mean.toFixed(6)}`);
    recorder.lifecycle("component.finished", "SUCCEEDED");
    await recorder.flush();
    process.stdout.write(
      `${JSON.stringify({
        rows: rows.length,
        mean_score: mean,
        model_sha256: sha256,
        predictions_sha256: digest,
        producer_id: recorder.producerId,
        events: recorder.stats.sent,
        duplicates: recorder.stats.duplicates,
        hlc: recorder.hlcString(),
      })}\n`,
    );
  } catch (err) {
    status = 1;
    failure = err.message;
    process.stderr.write(`score: ${err.message}\n`);
    try {
      recorder.error(err);
      recorder.lifecycle("component.finished", "FAILED");
    } catch {
      // the recorder itself may be what failed
    }
  } finally {
    try {
      await recorder.close();
    } catch (err) {
      status = 1;
      if (err.message !== failure) process.stderr.write(`score: ${err.message}\n`);
    }
  }
  process.exitCode = status;
}

await main();
