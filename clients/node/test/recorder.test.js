import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import path from "node:path";
import { after, before, beforeEach, test } from "node:test";
import { fileURLToPath } from "node:url";

import * as grpc from "@grpc/grpc-js";

import { Recorder, RecorderError, RejectedEventsError, compareHlc, fromStruct } from "../src/index.js";
import { StandInRecorder } from "../testing/stand_in_recorder.js";

const HERE = path.dirname(fileURLToPath(import.meta.url));

let recorder;
let endpoint;

before(async () => {
  recorder = new StandInRecorder();
  endpoint = await recorder.start();
});

after(() => recorder.stop());

beforeEach(() => {
  recorder.events = [];
  recorder.identities.clear();
  recorder.batches = 0;
  recorder.faults = { failAfterStore: 0, unavailable: 0, code: null, abortEvents: 0 };
});

function open(options = {}) {
  return new Recorder({ endpoint, ion: "churn", env: {}, baseDelayMs: 5, onError: () => {}, ...options });
}

test("recorded events arrive in order with strictly increasing identity and HLC", async () => {
  const rec = open({ run: "r1", node: "infer", component: "score", maxBatchEvents: 3 });
  rec.stat("accuracy", 0.93, { step: 2, labels: { split: "test" } });
  rec.model("models/m/versions/1", "a".repeat(64), "logged");
  rec.log("info", "hello");
  rec.event("predictions.digest", { sha256: "b".repeat(64), count: 3, nested: { ok: true, list: [1, "x", null] } });
  await rec.close();

  assert.equal(recorder.events.length, 4);
  assert.equal(recorder.batches, 2, "4 events at 3 per batch");
  const [stat, model, log, custom] = recorder.events;
  assert.deepEqual(
    recorder.events.map((e) => Number(e.producer_sequence)),
    [1, 2, 3, 4],
  );
  assert.ok(recorder.events.every((e) => e.producer_id === rec.producerId && e.ion === "ions/churn"));
  for (let i = 1; i < 4; i++) assert.ok(compareHlc(recorder.events[i].hlc, recorder.events[i - 1].hlc) > 0);
  assert.equal(stat.type, "stat");
  assert.equal(stat.attributes, "stat");
  assert.deepEqual({ ...stat.stat, value: stat.stat.value }, {
    name: "accuracy", value: 0.93, step: "2", labels: { split: "test" },
  });
  assert.equal(stat.run, "ions/churn/runs/r1");
  assert.equal(stat.node, "infer");
  assert.equal(stat.component, "score");
  assert.equal(model.type, "model.logged");
  assert.equal(model.model.sha256, "a".repeat(64));
  assert.equal(log.log.severity, "INFO");
  assert.deepEqual(fromStruct(custom.custom.data), {
    sha256: "b".repeat(64), count: 3, nested: { ok: true, list: [1, "x", null] },
  });
});

test("a batch whose ack was lost is sent again and stored once", async () => {
  recorder.faults.failAfterStore = 1;
  const rec = open();
  for (let i = 0; i < 5; i++) rec.stat("x", i);
  await rec.close();
  assert.equal(recorder.batches, 2, "the batch went twice");
  assert.equal(recorder.events.length, 5, "but was stored once");
  assert.equal(rec.stats.duplicates, 5);
  assert.equal(rec.stats.stored, 0, "the ack of the first send never arrived");
  assert.equal(rec.stats.retries, 1);
});

test("the unary transport resends the same way", async () => {
  recorder.faults.failAfterStore = 1;
  const rec = open({ transport: "unary" });
  rec.stat("x", 1);
  rec.stat("x", 2);
  await rec.close();
  assert.equal(recorder.batches, 2);
  assert.equal(recorder.events.length, 2);
  assert.equal(rec.stats.duplicates, 2);
});

test("the injected lost-ack fault resends, and the recorder deduplicates", async () => {
  const rec = open({ faults: { loseAcks: 2 } });
  rec.stat("x", 1);
  await rec.close();
  assert.equal(recorder.batches, 3);
  assert.equal(recorder.events.length, 1);
  assert.equal(rec.stats.duplicates, 1);
});

test("UNAVAILABLE is retried with backoff until the recorder answers", async () => {
  recorder.faults.unavailable = 3;
  const rec = open();
  rec.stat("x", 1);
  await rec.close();
  assert.equal(recorder.events.length, 1);
});

test("a recorder that stays away fails flush() after maxAttempts, keeping the events", async () => {
  recorder.faults.unavailable = 100;
  const rec = open({ maxAttempts: 3 });
  rec.stat("x", 1);
  await assert.rejects(rec.flush(), (e) => e instanceof RecorderError && e.code === grpc.status.UNAVAILABLE);
  recorder.faults.unavailable = 0;
  await rec.close();
  assert.equal(recorder.events.length, 1, "nothing was dropped");
});

test("a non-retryable error is not retried", async () => {
  recorder.faults.code = grpc.status.PERMISSION_DENIED;
  const rec = open();
  rec.stat("x", 1);
  await assert.rejects(rec.flush(), (e) => e.code === grpc.status.PERMISSION_DENIED);
  assert.equal(recorder.batches, 0);
  rec.client.close();
});

test("rejected events are reported with their field, the rest is stored", async () => {
  const rec = open();
  rec.stat("x", 1);
  rec.event("bad type", {});
  rec.stat("x", 2);
  await assert.rejects(rec.flush(), (e) => {
    assert.ok(e instanceof RejectedEventsError);
    assert.deepEqual(e.rejections.map((r) => [r.field, r.producerSequence]), [["events[1].type", 2]]);
    return true;
  });
  await rec.close();
  assert.equal(recorder.events.length, 2);
  assert.deepEqual(rec.stats, { sent: 3, stored: 2, duplicates: 0, rejected: 1, retries: 0 });
});

test("events rejected as ABORTED (a concurrent append in flight) are sent again", async () => {
  recorder.faults.abortEvents = 2;
  const rec = open();
  for (let i = 0; i < 4; i++) rec.stat("x", i);
  await rec.close();
  assert.deepEqual(recorder.events.map((e) => Number(e.producer_sequence)).sort(), [1, 2, 3, 4]);
  assert.equal(rec.stats.sent, 4);
  assert.equal(rec.stats.stored, 4);
  assert.equal(rec.rejections.length, 0);
});

test("a partial batch is sent on its own after flushIntervalMs", async () => {
  const rec = open({ flushIntervalMs: 20 });
  rec.stat("x", 1);
  await new Promise((r) => setTimeout(r, 300));
  assert.equal(recorder.events.length, 1);
  await rec.close();
});

test("recording is bounded and refused after close", async () => {
  recorder.faults.unavailable = 1000;
  const rec = open({ maxBufferedEvents: 3, maxAttempts: 1, flushIntervalMs: 60_000 });
  rec.stat("x", 1);
  rec.stat("x", 2);
  rec.stat("x", 3);
  assert.throws(() => rec.stat("x", 4), (e) => e.code === grpc.status.RESOURCE_EXHAUSTED);
  recorder.faults.unavailable = 0;
  await rec.close();
  assert.throws(() => rec.stat("x", 5), /closed/);
  assert.throws(() => open().stat("x", Number.NaN), TypeError);
});

test("the example component records its stats and model digest", async () => {
  const batch = JSON.stringify({ rows: [[1, 2], [3, 4], [5, 6]], weights: [0.5, 0.25] });
  const env = {
    ...process.env,
    RELIVE_RECORDER_ENDPOINT: endpoint,
    RELIVE_ION: "churn",
    RELIVE_RUN: "r9",
    RELIVE_NODE: "infer",
    RELIVE_COMPONENT: "score",
    RELIVE_HLC: `${Date.now() + 60_000}.5`,
    TRACEPARENT: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
  };
  const child = execFile(process.execPath, [path.join(HERE, "..", "examples", "score.js")], { env });
  child.stdin.end(batch);
  const out = await new Promise((resolve, reject) => {
    let stdout = "";
    child.stdout.on("data", (d) => (stdout += d));
    child.on("exit", (code) => (code === 0 ? resolve(JSON.parse(stdout)) : reject(new Error(`exit ${code}`))));
  });
  assert.equal(out.rows, 3);
  assert.equal(out.mean_score, (2 + 5 + 8) / 3 / 2 * 1); // 0.5*x1 + 0.25*x2 = 1, 2.5, 4
  const types = recorder.events.map((e) => e.type);
  assert.deepEqual(types, [
    "component.started", "model.loaded", "stat", "stat", "predictions.digest", "log", "component.finished",
  ]);
  const model = recorder.events[1].model;
  assert.match(model.sha256, /^[0-9a-f]{64}$/);
  assert.equal(model.sha256, out.model_sha256);
  const parent = { physical_ms: Number(env.RELIVE_HLC.split(".")[0]), logical: 5 };
  assert.ok(recorder.events.every((e) => compareHlc(e.hlc, parent) > 0), "all after the parent's HLC");
  assert.ok(recorder.events.every((e) => e.trace_id === "4bf92f3577b34da6a3ce929d0e0e4736"));
  assert.ok(recorder.events.every((e) => e.run === "ions/churn/runs/r9"));
});

test("refusals found by a background send are reported by the next flush()", async () => {
  const errors = [];
  const rec = open({ flushIntervalMs: 10, onError: (e) => errors.push(e) });
  rec.event("bad type", {});
  await new Promise((r) => setTimeout(r, 200));
  assert.equal(recorder.batches, 1, "the timer sent it");
  assert.deepEqual(errors, [], "not a transport failure");
  await assert.rejects(rec.flush(), RejectedEventsError);
  await rec.flush(); // reported once
  await rec.close();
});
