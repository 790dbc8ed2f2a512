// A small in-process RecorderService for the Node client's own unit tests: it
// keeps the recorder's contract (dedup on producer id + sequence, one ack per
// batch, per-event rejections) and can inject the faults the client must
// survive. The real recorder is exercised by tests/test_node_client.py.

import * as grpc from "@grpc/grpc-js";

import { loadPackage } from "../src/protos.js";

export class StandInRecorder {
  constructor() {
    this.events = []; // stored, in arrival order
    this.identities = new Map(); // "producer/seq" -> sequence
    this.batches = 0; // batches received, including resends
    this.faults = {
      // After storing the next N batches, fail the call instead of acking.
      failAfterStore: 0,
      // Refuse the next N calls before storing anything.
      unavailable: 0,
      // Fail the next N calls with this status code.
      code: null,
      // Reject the next N events with ABORTED, as for a concurrent append in flight.
      abortEvents: 0,
    };
    this.server = new grpc.Server();
    const { RecorderService } = loadPackage().relive.recorder.v1;
    this.server.addService(RecorderService.service, {
      AppendEvents: (call, callback) => this._unary(call, callback),
      StreamEvents: (call) => this._stream(call),
    });
  }

  /** @returns {Promise<string>} host:port */
  async start() {
    const port = await new Promise((resolve, reject) =>
      this.server.bindAsync("127.0.0.1:0", grpc.ServerCredentials.createInsecure(), (err, p) =>
        err ? reject(err) : resolve(p),
      ),
    );
    this.endpoint = `127.0.0.1:${port}`;
    return this.endpoint;
  }

  stop() {
    return new Promise((resolve) => this.server.tryShutdown(() => resolve()));
  }

  _fault() {
    if (this.faults.unavailable > 0) {
      this.faults.unavailable -= 1;
      return { code: grpc.status.UNAVAILABLE, details: "stand-in: unavailable" };
    }
    if (this.faults.code !== null) {
      const code = this.faults.code;
      this.faults.code = null;
      return { code, details: "stand-in: injected" };
    }
    return null;
  }

  append(request) {
    this.batches += 1;
    const result = { sequences: [], stored_count: 0, duplicate_count: 0, rejections: [] };
    request.events.forEach((event, index) => {
      if (!event.type || event.type.includes(" ")) {
        result.sequences.push("0");
        result.rejections.push({ index, field: `events[${index}].type`, reason: "bad type", code: 3 });
        return;
      }
      if (this.faults.abortEvents > 0) {
        this.faults.abortEvents -= 1;
        result.sequences.push("0");
        result.rejections.push({ index, field: `events[${index}]`, reason: "in flight", code: 10 });
        return;
      }
      const key = `${event.producer_id}/${event.producer_sequence}`;
      if (this.identities.has(key)) {
        result.sequences.push(String(this.identities.get(key)));
        result.duplicate_count += 1;
        return;
      }
      const sequence = this.events.length + 1;
      this.identities.set(key, sequence);
      this.events.push({ ...event, sequence });
      result.sequences.push(String(sequence));
      result.stored_count += 1;
    });
    return result;
  }

  _storedThenLost() {
    if (this.faults.failAfterStore > 0) {
      this.faults.failAfterStore -= 1;
      return { code: grpc.status.UNAVAILABLE, details: "stand-in: connection lost after storing" };
    }
    return null;
  }

  _unary(call, callback) {
    const fault = this._fault();
    if (fault) return callback(fault);
    const result = this.append(call.request);
    const lost = this._storedThenLost();
    if (lost) return callback(lost);
    callback(null, result);
  }

  _stream(call) {
    const fault = this._fault();
    if (fault) {
      call.emit("error", Object.assign(new Error(fault.details), fault));
      return;
    }
    call.on("data", (request) => {
      const result = this.append(request.batch);
      const lost = this._storedThenLost();
      if (lost) {
        call.emit("error", Object.assign(new Error(lost.details), lost));
        return;
      }
      call.write({ batch_id: request.batch_id, result });
    });
    call.on("end", () => call.end());
    call.on("error", () => {});
  }
}
