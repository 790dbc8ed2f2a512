import assert from "node:assert/strict";
import { mkdtempSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { test } from "node:test";

import { ConfigError, parseTraceparent, recorderEndpoint, resolveOptions } from "../src/config.js";

const TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

test("a command component takes everything from the environment", () => {
  const o = resolveOptions(
    {},
    {
      RELIVE_RECORDER_ENDPOINT: "127.0.0.1:5555",
      RELIVE_ION: "churn",
      RELIVE_RUN: "r1",
      RELIVE_NODE: "infer",
      RELIVE_COMPONENT: "score",
      RELIVE_HLC: "1732700000123.4",
      TRACEPARENT,
    },
  );
  assert.equal(o.endpoint, "127.0.0.1:5555");
  assert.equal(o.ion, "ions/churn");
  assert.equal(o.run, "ions/churn/runs/r1");
  assert.equal(o.node, "infer");
  assert.equal(o.component, "score");
  assert.deepEqual(o.parentHlc, { physical_ms: 1732700000123, logical: 4 });
  assert.equal(o.traceId, "4bf92f3577b34da6a3ce929d0e0e4736");
  assert.equal(o.spanId, "00f067aa0ba902b7");
});

test("explicit options win over the environment", () => {
  const o = resolveOptions(
    { endpoint: "h:1", ion: "ions/a", run: "ions/a/runs/x", node: "n" },
    { RELIVE_RECORDER_ENDPOINT: "h:2", RELIVE_ION: "b", RELIVE_NODE: "m" },
  );
  assert.equal(o.endpoint, "h:1");
  assert.equal(o.ion, "ions/a");
  assert.equal(o.run, "ions/a/runs/x");
  assert.equal(o.node, "n");
});

test("missing or malformed settings name the variable", () => {
  assert.throws(() => resolveOptions({}, { RELIVE_ION: "a" }), (e) => e instanceof ConfigError && e.field === "RELIVE_RECORDER_ENDPOINT");
  assert.throws(() => resolveOptions({}, { RELIVE_ENDPOINT: "h:1" }), (e) => e.field === "RELIVE_ION");
  assert.throws(
    () => resolveOptions({}, { RELIVE_ENDPOINT: "h:1", RELIVE_ION: "a", RELIVE_HLC: "yesterday" }),
    (e) => e.field === "RELIVE_HLC",
  );
});

test("the endpoint comes from RELIVE_ENDPOINT or the endpoints file", () => {
  const dir = mkdtempSync(path.join(os.tmpdir(), "relive-node-"));
  const file = path.join(dir, "endpoints.json");
  writeFileSync(file, JSON.stringify({ registry: "r:1", recorder: "c:2", executor: "e:3" }));
  assert.equal(recorderEndpoint({ RELIVE_ENDPOINT: "all:9" }), "all:9");
  assert.equal(recorderEndpoint({ RELIVE_ENDPOINT: file }), "c:2");
  assert.equal(recorderEndpoint({ RELIVE_DATA_DIR: dir }), "c:2");
  assert.equal(recorderEndpoint({ RELIVE_DATA_DIR: dir, RELIVE_RECORDER_ENDPOINT: "x:1" }), "x:1");
});

test("only a valid traceparent is used", () => {
  assert.deepEqual(parseTraceparent(TRACEPARENT), {
    traceId: "4bf92f3577b34da6a3ce929d0e0e4736",
    spanId: "00f067aa0ba902b7",
  });
  assert.equal(parseTraceparent("00-00000000000000000000000000000000-00f067aa0ba902b7-01"), null);
  assert.equal(parseTraceparent("garbage"), null);
  assert.equal(parseTraceparent(undefined), null);
});
