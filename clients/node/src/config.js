// Reads the RELIVE_* environment in one place. A command component launched by
// the executor finds everything it needs here: where the recorder is, which
// ION/run/node/component it belongs to, its parent's HLC and trace context.

import { existsSync, readFileSync } from "node:fs";
import path from "node:path";

import { parseHlc } from "./hlc.js";

export class ConfigError extends Error {
  /** @param {string} message @param {string} field the option or variable at fault */
  constructor(message, field) {
    super(message);
    this.name = "ConfigError";
    this.field = field;
  }
}

/**
 * The recorder endpoint: RELIVE_RECORDER_ENDPOINT, else RELIVE_ENDPOINT (one
 * host:port for all services, or an endpoints.json file), else the
 * endpoints.json that `relive up` writes in RELIVE_DATA_DIR (default .relive/).
 */
export function recorderEndpoint(env = process.env) {
  if (env.RELIVE_RECORDER_ENDPOINT) return env.RELIVE_RECORDER_ENDPOINT;
  const endpoint = env.RELIVE_ENDPOINT || "";
  let file = "";
  if (endpoint.endsWith(".json")) file = endpoint;
  else if (endpoint) return endpoint;
  else file = path.join(env.RELIVE_DATA_DIR || ".relive", "endpoints.json");
  if (existsSync(file)) {
    const found = JSON.parse(readFileSync(file, "utf8"));
    if (found.recorder) return found.recorder;
  }
  return "";
}

/**
 * Parses a W3C traceparent ("00-<32 hex trace id>-<16 hex span id>-<flags>").
 * @returns {{traceId: string, spanId: string} | null} null when absent or malformed
 */
export function parseTraceparent(value) {
  const m = /^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$/.exec(String(value || "").trim().toLowerCase());
  if (!m || m[1] === "ff" || /^0+$/.test(m[2]) || /^0+$/.test(m[3])) return null;
  return { traceId: m[2], spanId: m[3] };
}

/** "churn" or "ions/churn" -> "ions/churn". */
export function ionName(ion) {
  const value = String(ion || "").trim();
  if (!value) return "";
  return value.startsWith("ions/") ? value : `ions/${value}`;
}

/** "r1" or "ions/churn/runs/r1" -> "ions/churn/runs/r1". */
export function runName(ion, run) {
  const value = String(run || "").trim();
  if (!value || value.startsWith("ions/")) return value;
  return `${ion}/runs/${value}`;
}

/**
 * Recorder options from the environment, overridden by explicit options.
 * @param {object} options what the caller gave `new Recorder(...)`
 * @param {NodeJS.ProcessEnv} env
 */
export function resolveOptions(options = {}, env = process.env) {
  const pick = (key, variable) => (options[key] !== undefined && options[key] !== null ? options[key] : env[variable] || "");
  const endpoint = options.endpoint || recorderEndpoint(env);
  if (!endpoint) {
    throw new ConfigError(
      "no recorder endpoint: pass {endpoint} or set RELIVE_RECORDER_ENDPOINT (or RELIVE_ENDPOINT)",
      "RELIVE_RECORDER_ENDPOINT",
    );
  }
  const ion = ionName(pick("ion", "RELIVE_ION"));
  if (!ion) throw new ConfigError("no ION: pass {ion} or set RELIVE_ION", "RELIVE_ION");

  let parentHlc = options.parentHlc ?? null;
  if (parentHlc === null && env.RELIVE_HLC) {
    try {
      parentHlc = parseHlc(env.RELIVE_HLC);
    } catch (err) {
      throw new ConfigError(err.message, "RELIVE_HLC");
    }
  }
  const trace = parseTraceparent(options.traceparent ?? env.TRACEPARENT);
  const loseAcks = Number(options.faults?.loseAcks ?? env.RELIVE_FAULT_LOSE_ACKS ?? 0);

  return {
    endpoint,
    ion,
    run: runName(ion, pick("run", "RELIVE_RUN")),
    node: String(pick("node", "RELIVE_NODE")),
    component: String(pick("component", "RELIVE_COMPONENT")),
    producerId: options.producerId || "",
    parentHlc,
    traceId: options.traceId ?? trace?.traceId ?? "",
    spanId: options.spanId ?? trace?.spanId ?? "",
    token: pick("token", "RELIVE_TOKEN"),
    // The project a service token works for (sent as relive-project; ignored for other tokens).
    project: pick("project", "RELIVE_PROJECT"),
    tlsCa: pick("tlsCa", "RELIVE_TLS_CA"),
    transport: options.transport || "stream",
    maxBatchEvents: options.maxBatchEvents ?? 500,
    maxBufferedEvents: options.maxBufferedEvents ?? 100_000,
    flushIntervalMs: options.flushIntervalMs ?? 200,
    maxAttempts: options.maxAttempts ?? 8,
    baseDelayMs: options.baseDelayMs ?? 100,
    maxDelayMs: options.maxDelayMs ?? 5_000,
    callTimeoutMs: options.callTimeoutMs ?? 30_000,
    ackTimeoutMs: options.ackTimeoutMs ?? 10_000,
    faults: { loseAcks: Number.isFinite(loseAcks) ? loseAcks : 0 },
  };
}
