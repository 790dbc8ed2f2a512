import assert from "node:assert/strict";
import { test } from "node:test";

import { Hlc, compareHlc, formatHlc, parseHlc } from "../src/hlc.js";

function fakeClock(start) {
  const clock = () => clock.t;
  clock.t = start;
  return clock;
}

test("now() is strictly increasing even when the wall clock stands still or goes back", () => {
  const clock = fakeClock(1000);
  const hlc = new Hlc({ clock });
  const seen = [hlc.now(), hlc.now()];
  clock.t = 900; // the wall clock steps back
  seen.push(hlc.now());
  clock.t = 2000;
  seen.push(hlc.now());
  assert.deepEqual(seen, [
    { physical_ms: 1000, logical: 0 },
    { physical_ms: 1000, logical: 1 },
    { physical_ms: 1000, logical: 2 },
    { physical_ms: 2000, logical: 0 },
  ]);
});

test("update(remote) jumps past a parent whose clock runs ahead", () => {
  const clock = fakeClock(1000);
  const hlc = new Hlc({ clock });
  hlc.now();
  assert.deepEqual(hlc.update("5000.7"), { physical_ms: 5000, logical: 8 });
  assert.deepEqual(hlc.now(), { physical_ms: 5000, logical: 9 });
  // Same physical on both sides: past the larger logical.
  assert.deepEqual(hlc.update({ physical_ms: 5000, logical: 20 }), { physical_ms: 5000, logical: 21 });
  // Local ahead of remote: bump local.
  assert.deepEqual(hlc.update({ physical_ms: 10, logical: 99 }), { physical_ms: 5000, logical: 22 });
  // Wall clock ahead of both: reset logical.
  clock.t = 9000;
  assert.deepEqual(hlc.update({ physical_ms: 10, logical: 99 }), { physical_ms: 9000, logical: 0 });
});

test("every stamp after update(parent) is after the parent", () => {
  const parent = { physical_ms: Date.now() + 60_000, logical: 3 };
  const hlc = new Hlc();
  hlc.update(parent);
  for (let i = 0; i < 100; i++) assert.ok(compareHlc(hlc.now(), parent) > 0);
});

test("RELIVE_HLC text form round-trips and bad input is named", () => {
  assert.deepEqual(parseHlc("1732700000123.4"), { physical_ms: 1732700000123, logical: 4 });
  assert.deepEqual(parseHlc("17"), { physical_ms: 17, logical: 0 });
  assert.equal(formatHlc(parseHlc("1732700000123.4")), "1732700000123.4");
  assert.throws(() => parseHlc("soon"), /RELIVE_HLC/);
  assert.throws(() => parseHlc("1.2.3"), /RELIVE_HLC/);
});
