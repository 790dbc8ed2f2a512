// Records events from a Node.js process into a relive timeline.
//
// Every event is stamped when it is recorded, not when it is sent: an HLC
// stamp, the wall time, and a client-made identity (producer id + a strictly
// increasing producer sequence). Events are buffered and sent in batches over
// StreamEvents; a batch that was not acknowledged is sent again, unchanged, so
// the recorder deduplicates it instead of storing it twice.

import { randomBytes } from "node:crypto";
import { readFileSync } from "node:fs";
import os from "node:os";

import * as grpc from "@grpc/grpc-js";

import { resolveOptions } from "./config.js";
import { Hlc, formatHlc } from "./hlc.js";
import { loadPackage } from "./protos.js";
import { toStruct } from "./struct.js";

/** Status codes worth another attempt. Appends are idempotent, so a lost ack is one too. */
const RETRYABLE = new Set([grpc.status.UNAVAILABLE, grpc.status.ABORTED, grpc.status.DEADLINE_EXCEEDED]);

const SEVERITIES = new Set(["DEBUG", "INFO", "WARNING", "ERROR"]);

/** A call to the recorder failed for good. `code` is the gRPC status code. */
export class RecorderError extends Error {
  constructor(message, { code = grpc.status.UNKNOWN, cause } = {}) {
    super(message, { cause });
    this.name = "RecorderError";
    this.code = code;
  }
}

/** The recorder refused some events; `rejections` names each with its field and reason. */
export class RejectedEventsError extends RecorderError {
  constructor(rejections) {
    const first = rejections[0];
    super(
      `recorder rejected ${rejections.length} event(s); first: ${first.field}: ${first.reason}`,
      { code: grpc.status.INVALID_ARGUMENT },
    );
    this.name = "RejectedEventsError";
    this.rejections = rejections;
  }
}

/** A producer id unique to this process, so its sequence can start at 1. */
export function newProducerId() {
  return `node-${os.hostname()}-${process.pid}-${randomBytes(4).toString("hex")}`;
}

export class Recorder {
  /**
   * @param {object} [options] explicit options win over the RELIVE_* environment.
   * @param {string} [options.endpoint] recorder host:port (RELIVE_RECORDER_ENDPOINT)
   * @param {string} [options.ion] "churn" or "ions/churn" (RELIVE_ION)
   * @param {string} [options.producerId] identity of this producer; unique per process by default
   * @param {string} [options.run] "r1" or "ions/churn/runs/r1" (RELIVE_RUN)
   * @param {string} [options.node] (RELIVE_NODE)
   * @param {string} [options.component] (RELIVE_COMPONENT)
   * @param {{physical_ms: number, logical: number}} [options.parentHlc] (RELIVE_HLC "physical_ms.logical")
   * @param {string} [options.traceparent] W3C trace context (TRACEPARENT)
   * @param {"stream"|"unary"} [options.transport] StreamEvents (default) or AppendEvents
   * @param {number} [options.maxBatchEvents] events per batch (500)
   * @param {number} [options.maxBufferedEvents] recording throws beyond this many unsent events (100000)
   * @param {number} [options.flushIntervalMs] a partial batch is sent after this long (200)
   * @param {number} [options.maxAttempts] attempts per batch without progress (8)
   * @param {(err: Error) => void} [options.onError] failures of background flushes
   * @param {() => number} [options.clock] wall clock in ms, for tests
   * @param {NodeJS.ProcessEnv} [options.env] the environment to read (process.env)
   */
  constructor(options = {}) {
    const env = options.env ?? process.env;
    this.options = resolveOptions(options, env);
    const o = this.options;
    this.ion = o.ion;
    this.producerId = o.producerId || newProducerId();
    this.hlc = new Hlc({ clock: options.clock });
    this._clock = options.clock ?? Date.now;
    // Causal order across the process hop: everything here is after the parent.
    if (o.parentHlc) this.hlc.update(o.parentHlc);
    this._onError = options.onError ?? ((err) => process.emitWarning(err));
    this._sequence = 0;
    this._batchId = 0;
    this._buffer = [];
    this._batches = [];
    this._timer = null;
    this._draining = null;
    this._closed = false;
    this._lostAcks = 0;
    // sent: events acked; stored + duplicates + rejected = sent; retries: failed attempts retried.
    this.stats = { sent: 0, stored: 0, duplicates: 0, rejected: 0, retries: 0 };
    this.rejections = [];
    this._reported = 0; // rejections already thrown by flush()

    const { RecorderService } = loadPackage().relive.recorder.v1;
    this._metadata = new grpc.Metadata();
    let credentials = grpc.credentials.createInsecure();
    if (o.tlsCa) {
      credentials = grpc.credentials.createSsl(readFileSync(o.tlsCa));
      if (o.token) {
        const bearer = grpc.credentials.createFromMetadataGenerator((_params, callback) => {
          const md = new grpc.Metadata();
          md.set("authorization", `Bearer ${o.token}`);
          callback(null, md);
        });
        credentials = grpc.credentials.combineChannelCredentials(credentials, bearer);
      }
    } else if (o.token) {
      this._metadata.set("authorization", `Bearer ${o.token}`);
    }
    if (o.project) this._metadata.set("relive-project", o.project);
    if (o.traceId && o.spanId) this._metadata.set("traceparent", `00-${o.traceId}-${o.spanId}-01`);
    this.client = new RecorderService(o.endpoint, credentials, {
      "grpc.max_send_message_length": 64 * 1024 * 1024,
      "grpc.max_receive_message_length": 64 * 1024 * 1024,
    });
  }

  // ---- recording -------------------------------------------------------

  /** One measured value. */
  stat(name, value, { step = 0, labels = {} } = {}) {
    if (typeof name !== "string" || !name) throw new TypeError("stat name must be a non-empty string");
    const number = Number(value);
    if (!Number.isFinite(number)) throw new TypeError(`stat ${name}: value must be a finite number, got ${value}`);
    const stringLabels = Object.fromEntries(Object.entries(labels).map(([k, v]) => [k, String(v)]));
    return this._record("stat", { stat: { name, value: number, step: String(step), labels: stringLabels } });
  }

  /** A model version logged, loaded, swapped or transferred; type "model.<action>". */
  model(modelVersion, sha256, action = "logged", { batch = 0 } = {}) {
    if (sha256 && !/^[0-9a-f]{64}$/.test(sha256)) throw new TypeError("sha256 must be 64 lowercase hex digits");
    return this._record(`model.${action}`, {
      model: { model_version: modelVersion || "", sha256: sha256 || "", action, batch: String(batch) },
    });
  }

  /** A dataset read, with its content hash. */
  dataset(uri, sha256, sizeBytes = 0) {
    return this._record("dataset.read", { dataset: { uri, sha256, size_bytes: String(sizeBytes) } });
  }

  /** A log line: severity is DEBUG, INFO, WARNING or ERROR. */
  log(severity, message) {
    const upper = String(severity).toUpperCase();
    const level = upper === "WARN" ? "WARNING" : upper;
    if (!SEVERITIES.has(level)) throw new TypeError(`severity must be one of ${[...SEVERITIES].join(", ")}`);
    return this._record("log", { log: { severity: level, message: String(message) } });
  }

  /** An error, from an Error object or {type, message, traceback}. */
  error(err) {
    const e = err instanceof Error ? { type: err.name, message: err.message, traceback: err.stack ?? "" } : err;
    return this._record("error", {
      error: { error_type: e.type || "Error", message: e.message || "", traceback: e.traceback || "" },
    });
  }

  /** A state change, "component.started" with state "STARTED". */
  lifecycle(type, state, details = undefined) {
    const attrs = { state };
    if (details) attrs.details = toStruct(details);
    return this._record(type, { lifecycle: attrs });
  }

  /** A custom event: a dotted type and a JSON-like object of attributes. */
  event(type, attrs = {}) {
    return this._record(type, { custom: { data: toStruct(attrs) } });
  }

  /**
   * Stamps the event with its identity and HLC now, and queues it.
   * @returns {object} the event as it will be sent
   */
  _record(type, attributes) {
    if (this._closed) throw new RecorderError("recorder is closed", { code: grpc.status.FAILED_PRECONDITION });
    if (typeof type !== "string" || !type) throw new TypeError("event type must be a non-empty string");
    const pending = this._buffer.length + this._batches.reduce((n, b) => n + b.events.length, 0);
    if (pending >= this.options.maxBufferedEvents) {
      throw new RecorderError(
        `${pending} events are waiting for the recorder (maxBufferedEvents); is it reachable at ${this.options.endpoint}?`,
        { code: grpc.status.RESOURCE_EXHAUSTED },
      );
    }
    const o = this.options;
    const wallMs = this._clock();
    this._sequence += 1;
    const event = {
      ion: this.ion,
      producer_id: this.producerId,
      producer_sequence: String(this._sequence),
      hlc: this.hlc.now(),
      time: { seconds: String(Math.floor(wallMs / 1000)), nanos: Math.floor(wallMs % 1000) * 1_000_000 },
      type,
      run: o.run,
      node: o.node,
      component: o.component,
      trace_id: o.traceId,
      span_id: o.spanId,
      ...attributes,
    };
    this._buffer.push(event);
    if (this._buffer.length >= o.maxBatchEvents) {
      this._background();
    } else if (!this._timer) {
      // Not unref'd: a pending partial batch keeps the process alive until it is sent.
      this._timer = setTimeout(() => {
        this._timer = null;
        this._background();
      }, o.flushIntervalMs);
    }
    return event;
  }

  /** The HLC as "physical_ms.logical", for RELIVE_HLC of a child process or a reply to a parent. */
  hlcString() {
    return formatHlc(this.hlc.current());
  }

  /** Environment for a child process, so its events follow this one's causally. */
  childEnv() {
    const env = { RELIVE_HLC: formatHlc(this.hlc.now()), RELIVE_ION: this.ion };
    env.RELIVE_RECORDER_ENDPOINT = this.options.endpoint;
    if (this.options.run) env.RELIVE_RUN = this.options.run;
    if (this.options.traceId && this.options.spanId) {
      env.TRACEPARENT = `00-${this.options.traceId}-${this.options.spanId}-01`;
    }
    return env;
  }

  // ---- sending ---------------------------------------------------------

  /**
   * Sends everything recorded so far and waits for the acks.
   * @returns {Promise<{stored: number, duplicates: number, rejected: number}>} counts since creation
   * @throws {RejectedEventsError} when the recorder refused events that no earlier flush() reported
   * @throws {RecorderError} when the recorder stayed unreachable; the events stay queued
   */
  async flush() {
    await this._sendAll();
    const fresh = this.rejections.slice(this._reported);
    this._reported = this.rejections.length;
    if (fresh.length) throw new RejectedEventsError(fresh);
    return { stored: this.stats.stored, duplicates: this.stats.duplicates, rejected: this.stats.rejected };
  }

  async _sendAll() {
    this._cutBatches();
    // A drain may already be running; run again until nothing is left.
    while (this._batches.length || this._draining) {
      if (!this._draining) {
        this._draining = this._drain().finally(() => {
          this._draining = null;
        });
      }
      await this._draining;
    }
  }

  /** Flushes and closes the channel. Recording afterwards throws. */
  async close() {
    if (this._closed) return;
    try {
      await this.flush();
    } finally {
      this._closed = true;
      if (this._timer) clearTimeout(this._timer);
      this._timer = null;
      this.client.close();
    }
  }

  /** A timer's or a full batch's send; refused events wait for the next flush() to report. */
  _background() {
    this._sendAll().catch((err) => this._onError(err));
  }

  _cutBatches() {
    if (this._timer) {
      clearTimeout(this._timer);
      this._timer = null;
    }
    while (this._buffer.length) {
      const events = this._buffer.splice(0, this.options.maxBatchEvents);
      this._batchId += 1;
      this._batches.push({ id: this._batchId, events, attempts: 0 });
    }
  }

  /** Sends queued batches in order, retrying with backoff while progress is possible. */
  async _drain() {
    let failures = 0;
    while (this._batches.length) {
      const before = this._batches.length;
      try {
        if (this.options.transport === "unary") await this._sendUnary();
        else await this._sendStream();
        failures = 0;
      } catch (err) {
        if (this._batches.length < before) failures = 0; // some batches got through
        failures += 1;
        const code = err.code ?? grpc.status.UNKNOWN;
        if (!RETRYABLE.has(code) || failures >= this.options.maxAttempts) {
          throw new RecorderError(
            `${statusName(code)}: cannot send events to the recorder at ${this.options.endpoint} ` +
              `(${failures} attempt(s)): ${err.details || err.message}`,
            { code, cause: err },
          );
        }
        this.stats.retries += 1;
        await sleep(this._backoff(failures));
      }
    }
  }

  _backoff(failures) {
    const { baseDelayMs, maxDelayMs } = this.options;
    const ceiling = Math.min(maxDelayMs, baseDelayMs * 2 ** (failures - 1));
    return ceiling * (0.5 + Math.random() / 2); // jitter
  }

  _request(batch) {
    return { parent: this.ion, events: batch.events };
  }

  /** Takes the recorder's answer for the head batch and drops the batch. */
  _acked(batch, result) {
    if (this.options.faults.loseAcks > this._lostAcks) {
      // Injected fault: act as if the connection dropped after the recorder
      // stored the batch, so the batch is sent again.
      this._lostAcks += 1;
      const err = new Error("ack lost (injected fault RELIVE_FAULT_LOSE_ACKS)");
      err.code = grpc.status.UNAVAILABLE;
      throw err;
    }
    if (this._batches[0] !== batch) return;
    this._batches.shift();
    this.stats.stored += Number(result.stored_count || 0);
    this.stats.duplicates += Number(result.duplicate_count || 0);
    const again = [];
    for (const r of result.rejections || []) {
      const event = batch.events[r.index];
      // ABORTED: a concurrent append of the same identity was in flight; the
      // recorder asks for a resend, which it will store or deduplicate.
      if (Number(r.code) === grpc.status.ABORTED && event && batch.attempts + 1 < this.options.maxAttempts) {
        again.push(event);
        continue;
      }
      this.stats.rejected += 1;
      this.rejections.push({
        index: r.index,
        field: r.field,
        reason: r.reason,
        type: event?.type,
        code: Number(r.code || 0),
        producerSequence: event ? Number(event.producer_sequence) : undefined,
      });
    }
    this.stats.sent += batch.events.length - again.length;
    if (again.length) {
      this._batchId += 1;
      this._batches.unshift({ id: this._batchId, events: again, attempts: batch.attempts + 1 });
    }
  }

  _deadline(ms) {
    return new Date(Date.now() + ms);
  }

  _sendUnary() {
    const batch = this._batches[0];
    return new Promise((resolve, reject) => {
      this.client.AppendEvents(
        this._request(batch),
        this._metadata,
        { deadline: this._deadline(this.options.ackTimeoutMs) },
        (err, response) => {
          if (err) return reject(err);
          try {
            this._acked(batch, response);
            resolve();
          } catch (e) {
            reject(e);
          }
        },
      );
    });
  }

  /**
   * One StreamEvents call: writes the head batch, waits for its ack, and so on
   * until the queue is empty. The recorder reads a batch only after acking the
   * previous one, so one batch in flight loses nothing.
   */
  _sendStream() {
    return new Promise((resolve, reject) => {
      const call = this.client.StreamEvents(this._metadata, {
        deadline: this._deadline(this.options.callTimeoutMs),
      });
      let inflight = null;
      let timer = null;
      let done = false;
      const finish = (err) => {
        if (done) return;
        done = true;
        if (timer) clearTimeout(timer);
        if (err) {
          call.cancel();
          reject(err);
        } else {
          call.end();
          resolve();
        }
      };
      const next = () => {
        inflight = this._batches[0];
        if (!inflight) return finish(null);
        timer = setTimeout(() => {
          const err = new Error(`no ack for batch ${inflight.id} within ${this.options.ackTimeoutMs} ms`);
          err.code = grpc.status.DEADLINE_EXCEEDED;
          finish(err);
        }, this.options.ackTimeoutMs);
        call.write({ batch_id: String(inflight.id), batch: this._request(inflight) });
      };
      call.on("data", (response) => {
        if (done || !inflight || Number(response.batch_id) !== inflight.id) return;
        clearTimeout(timer);
        try {
          this._acked(inflight, response.result || {});
        } catch (err) {
          return finish(err);
        }
        next();
      });
      call.on("error", (err) => finish(err));
      call.on("end", () => {
        if (!done) {
          const err = new Error("the recorder ended the stream before acking every batch");
          err.code = grpc.status.UNAVAILABLE;
          finish(err);
        }
      });
      next();
    });
  }
}

/** "NOT_FOUND" for 5, as the Python SDK prints codes. */
export function statusName(code) {
  return Object.keys(grpc.status).find((k) => grpc.status[k] === code) ?? String(code);
}

function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
