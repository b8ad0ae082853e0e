// What the engine told us, kept in one place and updated from the event
// stream; views subscribe to topics and redraw only what changed.

import { get } from './api.js';

export const state = {
  version: '',
  balancer: null,
  config: {},
  workers: [],
  stats: null,
  history: [], // LiveStats samples, oldest first, the last minute
  lastPreflight: null,
  jobs: {}, // the latest job of each kind, with what its events said
};

const subs = new Map();

// Subscribe; returns the unsubscribe function (views call it on leaving).
export function on(topic, fn) {
  if (!subs.has(topic)) subs.set(topic, new Set());
  subs.get(topic).add(fn);
  return () => subs.get(topic).delete(fn);
}

export function emit(topic, arg) {
  for (const fn of subs.get(topic) || []) fn(arg);
}

const WINDOW_MS = 60000;

function pushSample(s) {
  const h = state.history;
  const last = h[h.length - 1];
  // at_ms counts from the engine's start: a smaller one means a new engine.
  if (last && s.at_ms < last.at_ms - WINDOW_MS) h.length = 0;
  else if (last && s.at_ms <= last.at_ms) return;
  h.push(s);
  while (h.length && h[0].at_ms < s.at_ms - WINDOW_MS) h.shift();
}

// A job as the views read it: its events folded into lists.
function freshJob(id, kind) {
  return { id, kind, started: Date.now(), status: 'running', progress: null, notes: [], checks: [], found: [], levels: [], steps: [], result: null, error: null };
}

// A job just started from this page: show it as running at once; its events
// fill in the rest.
export function trackJob(kind, id) {
  if (state.jobs[kind]?.id !== id) state.jobs[kind] = freshJob(id, kind);
  emit('job', state.jobs[kind]);
}

function seedJob(j) {
  return { ...freshJob(j.id, j.kind), status: j.status, started: j.started_at * 1000, progress: j.progress || null,
    result: j.result ?? null, error: j.error ?? null };
}

export async function loadState() {
  const s = await get('/api/state');
  state.version = s.version;
  state.balancer = s.balancer;
  state.config = s.config || {};
  state.workers = s.workers || [];
  state.stats = s.stats || null;
  state.lastPreflight = s.last_preflight || null;
  // Keep each kind's newest job, and what we already folded for it.
  for (const j of [...(s.jobs || [])].sort((a, b) => (a.started_at ?? 0) - (b.started_at ?? 0))) {
    const had = state.jobs[j.kind];
    state.jobs[j.kind] = had && had.id === j.id
      ? { ...had, status: j.status, progress: j.progress || had.progress, result: j.result ?? had.result, error: j.error ?? had.error }
      : seedJob(j);
  }
  emit('state');
}

export async function loadHistory() {
  const h = await get('/api/stats/history');
  state.history = [];
  for (const s of h.samples || []) pushSample(s);
  if (state.stats) pushSample(state.stats);
}

function foldJob(e) {
  const u = e.update || {};
  let j = state.jobs[e.kind];
  if (!j || j.id !== e.id) j = state.jobs[e.kind] = freshJob(e.id, e.kind);
  j.status = e.status;
  switch (u.kind) {
    case 'progress': j.progress = u; break;
    // A benchmark level began: its counters start again.
    case 'level_started': j.current = u; j.progress = null; break;
    // steps: notes and finished levels together, in the order they came.
    case 'note': j.notes.push(u.line); j.steps.push({ note: u.line }); break;
    case 'check': {
      const at = j.checks.findIndex((c) => c.worker === u.worker && c.host === u.host && c.check.name === u.check.name);
      if (at >= 0) j.checks[at] = u; else j.checks.push(u);
      break;
    }
    case 'found': {
      const k = `${u.server.host}:${u.server.port}`;
      if (!j.found.some((f) => `${f.host}:${f.port}` === k)) j.found.push(u.server);
      break;
    }
    case 'level': j.levels.push(u); j.steps.push({ level: u }); break;
    case 'finished':
      j.result = u.result;
      if (e.kind === 'preflight') state.lastPreflight = u.result;
      break;
    case 'failed': j.error = u.error; break;
  }
  return j;
}

// Apply one stream event. Returns nothing; views hear about it through topics.
export function applyEvent({ type, data }) {
  switch (type) {
    case 'balancer':
      state.balancer = data;
      emit('balancer');
      break;
    case 'stats':
      state.stats = data;
      // A hidden page does no work for live figures: it refetches the
      // history when it becomes visible again.
      if (document.hidden) return;
      pushSample(data);
      emit('stats');
      break;
    case 'worker_state': {
      const w = state.workers.find((x) => x.id === data.id);
      if (w && w.status !== 'disabled') w.status = data.state;
      emit('workers');
      break;
    }
    case 'config':
      state.workers = data.workers || [];
      emit('workers');
      break;
    case 'job':
      emit('job', foldJob(data));
      break;
    case 'resync':
      loadState().catch(() => {});
      break;
  }
}

// Live figures of one studio: the latest stats sample, else what the
// workers list carried.
export function liveOf(id) {
  // Figures from before a stop are not "now".
  const now = state.balancer?.running ? state.stats?.workers?.find((w) => w.id === id) : null;
  return now || state.workers.find((w) => w.id === id)?.live || null;
}
