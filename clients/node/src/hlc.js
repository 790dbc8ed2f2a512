// Hybrid logical clock: physical milliseconds plus a logical counter.
//
// The rules are those of the Python SDK (clients/python/src/relive/hlc.py),
// step for step, so a Node component and a Python one order events alike
// (tests/test_node_client.py replays the same steps through both):
//   now():          physical = max(wall, last.physical); logical is bumped when
//                   the physical part did not move, else reset to 0.
//   update(remote): on receiving a remote stamp, jump past it, so anything
//                   stamped afterwards is causally after the remote event.

/** @typedef {{physical_ms: number, logical: number}} HlcStamp */

const MAX_LOGICAL = 2 ** 31 - 1; // the proto's int32

export class HlcError extends Error {}

export class Hlc {
  /**
   * @param {{clock?: () => number, physicalMs?: number, logical?: number}} [options]
   *   clock returns wall-clock milliseconds (Date.now by default).
   */
  constructor({ clock = Date.now, physicalMs = 0, logical = 0 } = {}) {
    this._clock = clock;
    this.physicalMs = physicalMs;
    this.logical = logical;
  }

  /** The last stamp given out or received, without advancing the clock. */
  current() {
    return { physical_ms: this.physicalMs, logical: this.logical };
  }

  /** A new stamp, strictly greater than every stamp this clock gave or saw. */
  now() {
    const wall = Math.floor(this._clock());
    if (wall > this.physicalMs) {
      this.physicalMs = wall;
      this.logical = 0;
    } else {
      this._bump(this.logical + 1);
    }
    return this.current();
  }

  /**
   * Merges a stamp received from elsewhere (a parent process, a message) and
   * returns a stamp greater than both it and every earlier local stamp.
   * @param {HlcStamp | string} remote
   */
  update(remote) {
    const r = typeof remote === "string" ? parseHlc(remote) : normalize(remote);
    const wall = Math.floor(this._clock());
    const physical = Math.max(wall, this.physicalMs, r.physical_ms);
    let logical;
    if (physical === this.physicalMs && physical === r.physical_ms) {
      logical = Math.max(this.logical, r.logical) + 1;
    } else if (physical === this.physicalMs) {
      logical = this.logical + 1;
    } else if (physical === r.physical_ms) {
      logical = r.logical + 1;
    } else {
      logical = 0;
    }
    this.physicalMs = physical;
    this._bump(logical);
    return this.current();
  }

  /** "physical_ms.logical", the form RELIVE_HLC carries across a process hop. */
  toString() {
    return formatHlc(this.current());
  }

  _bump(logical) {
    if (logical > MAX_LOGICAL) {
      // Far more stamps in one millisecond than can happen; move time on instead.
      this.physicalMs += 1;
      this.logical = 0;
    } else {
      this.logical = logical;
    }
  }
}

/** @param {HlcStamp} stamp */
export function formatHlc(stamp) {
  return `${stamp.physical_ms}.${stamp.logical}`;
}

/**
 * Parses "physical_ms.logical" (or bare "physical_ms").
 * @param {string} text
 * @returns {HlcStamp}
 */
export function parseHlc(text) {
  const m = /^\s*(\d+)(?:\.(\d*))?\s*$/.exec(String(text));
  if (!m) {
    throw new HlcError(`RELIVE_HLC must look like "physical_ms.logical", got ${JSON.stringify(text)}`);
  }
  const stamp = { physical_ms: Number(m[1]), logical: m[2] ? Number(m[2]) : 0 };
  if (!Number.isSafeInteger(stamp.physical_ms) || stamp.logical > MAX_LOGICAL) {
    throw new HlcError(`RELIVE_HLC is out of range: ${JSON.stringify(text)}`);
  }
  return stamp;
}

/** Orders two stamps: negative, zero or positive. */
export function compareHlc(a, b) {
  return a.physical_ms - b.physical_ms || a.logical - b.logical;
}

function normalize(stamp) {
  return { physical_ms: Number(stamp.physical_ms ?? 0), logical: Number(stamp.logical ?? 0) };
}
