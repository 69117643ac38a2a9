// The scheduler loop at scale (issue #9: 30,000 schedules): the CPU time of one tick with the
// in-memory store, for a quiet minute (the few rows due), a busy minute (one in sixty due) and the
// worst case (every row due at once, e.g. all created at the same instant or after downtime).
// Prints milliseconds of CPU (user + system) per tick; the catalog's store adds its query time.
//   npx node bench/scheduler.ts [schedules]
import { SchedulerLoop } from '../src/scheduler/loop.ts';
import { MemoryScheduleStore } from '../src/scheduler/memory-store.ts';
import type { Schedule } from '../src/scheduler/plan.ts';
import { FakeClock } from '../src/testing/fake-clock.ts';

const MINUTE = 60_000;
const HOUR = 60 * MINUTE;
const DAY = 24 * HOUR;
const count = Number(process.argv[2] ?? 30_000);
const zones = ['Europe/Berlin', 'America/New_York', 'UTC', 'Asia/Tokyo', 'Australia/Sydney'];

/** A spread of realistic schedules: nightly calendars at many minutes, weekly fulls, frequencies, windows. */
function scheduleOf(i: number): Schedule {
  const timezone = zones[i % zones.length]!;
  const missed = i % 3 === 0 ? 'skip' : 'catch-up';
  switch (i % 4) {
    case 0: return { calendar: `${i % 60} ${(i >> 6) % 24} * * *`, timezone, missed };
    case 1: return { calendar: `${i % 60} 22 * * ${i % 7}`, timezone, missed, window: { start: '22:00', durationMs: 6 * HOUR } };
    case 2: return { every: ((i % 12) + 1) * HOUR, timezone, missed };
    default: return { calendar: `${i % 60} */4 * * *`, timezone, missed, window: { start: '20:00', durationMs: 10 * HOUR } };
  }
}

function cpuMs(): number {
  const u = process.cpuUsage();
  return (u.user + u.system) / 1000;
}

async function measure(label: string, loop: SchedulerLoop): Promise<void> {
  const before = cpuMs();
  const wall = performance.now();
  const report = await loop.tick();
  console.log(`${label.padEnd(44)} ${report.loaded.toString().padStart(6)} due  ${(cpuMs() - before).toFixed(1).padStart(8)} ms CPU  ${(performance.now() - wall).toFixed(1).padStart(8)} ms wall  (${report.decisions.length} queued or missed)`);
}

const start = Date.parse('2026-10-24T12:00:00Z');
const clock = new FakeClock(start - DAY);
const store = new MemoryScheduleStore();
for (let i = 0; i < count; i++) store.put(`s${i}`, scheduleOf(i), { since: clock.now() });
const loop = new SchedulerLoop(store, clock, { timezone: 'UTC' });
console.log(`${count} schedules`);
await measure('first tick: every row new (worst case)', loop);
// Run two days, minute by minute, as the loop would; report the slowest and the mean tick of the second.
for (; clock.now() < start; clock.advance(MINUTE)) await loop.tick();
let worst = 0, total = 0, ticks = 0, loaded = 0;
for (clock.set(start); clock.now() < start + DAY; clock.advance(MINUTE)) {
  const before = cpuMs();
  const report = await loop.tick();
  const ms = cpuMs() - before;
  worst = Math.max(worst, ms);
  total += ms;
  loaded += report.loaded;
  ticks++;
}
console.log(`a day of ticks, one a minute (across Berlin's fall-back): mean ${(total / ticks).toFixed(2)} ms CPU, slowest ${worst.toFixed(1)} ms, ${(loaded / ticks).toFixed(1)} rows due per tick`);
await measure('midnight UTC (the every-N-hours rows are due)', loop);
clock.set(start + 4 * DAY);
await measure('after 3 days of downtime (every row due)', loop);
