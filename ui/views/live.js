// Live figures: the pool's rates, its headroom against the capacity on
// record, and one row per studio (status dot, slots, in flight, tokens/s,
// TTFT, share, a one-minute sparkline, why it is out).
// Rows are built when the studio list changes and only their text is updated
// on each stats event.

import { sparkBox, sparkline } from '../charts.js';
import { get, post } from '../api.js';
import { act, dot, errorBox, fill, h } from '../dom.js';
import { failureWord, int, ms, num, pct, studioStatus } from '../format.js';
import { liveOf, on, state, trackJob } from '../state.js';

// "declared 4, runs 2 in parallel": what the user set, and what Baton
// learned, once it has (before, slow start gives a studio a cautious few).
export function slotsWords(declared, l) {
  const runs = l.slots_basis === 'slow_start' ? 'in parallel: not measured yet' : `runs ${l.slots} in parallel`;
  return declared === 'auto' ? `auto: ${runs}` : `declared ${declared}, ${runs}`;
}

export function poolFigures(life) {
  const cell = (label) => {
    const v = h('span', { class: 'v', text: '–' });
    return [h('div', { class: 'figure' }, v, h('span', { class: 'k', text: label })), v];
  };
  const [tokEl, tok] = cell('tokens/s');
  const [reqEl, req] = cell('requests/s');
  const [flightEl, flight] = cell('in flight');
  const [readyEl, ready] = cell('studios ready');
  const el = h('section', { class: 'figures', 'aria-label': 'Pool now' }, tokEl, reqEl, flightEl, readyEl);
  const render = () => {
    const p = state.balancer?.running ? state.stats?.pool : null;
    if (!p) {
      for (const v of [tok, req, flight, ready]) v.textContent = '–';
      return;
    }
    tok.textContent = num(p.tokens_per_second);
    req.textContent = num(p.requests_per_second);
    flight.textContent = p.queue_depth ? `${int(p.in_flight)} + ${int(p.queue_depth)} queued` : int(p.in_flight);
    ready.textContent = `${int(p.ready)} of ${int(p.total)}`;
  };
  life.push(on('stats', render), on('state', render), on('balancer', render));
  render();
  return el;
}

// `compact`: the popover's two-line rows, without sparklines.
export function studioRows(life, { compact = false } = {}) {
  const list = h('ul', { class: `studios ${compact ? 'compact' : ''}`, 'aria-label': 'Studios' });
  const head = compact ? null : h('div', { class: 'studios-head', 'aria-hidden': 'true' },
    ['Studio', 'Slots', 'In flight', 'Tokens/s', 'TTFT', 'Share', 'Last minute'].map((t) => h('span', { text: t })));
  let rows = new Map();

  function build() {
    rows = new Map();
    fill(list, state.workers.length ? null : h('li', { class: 'empty', text: 'No studios yet.' }));
    for (const w of state.workers) {
      const c = {};
      const fig = (key, label) => h('span', { class: `c ${key}` }, h('span', { class: 'k', text: label }), c[key] = h('span', { class: 'v' }));
      c.dot = h('span', { class: 'dotslot' });
      c.word = h('span', { class: 'word' });
      c.note = h('p', { class: 'note' });
      const spark = compact ? null : sparkBox(`${w.id} tokens per second, last minute`);
      c.line = spark?.line;
      const li = h('li', { class: 'studio' },
        h('span', { class: 'c name' }, c.dot, h('span', { class: 'id', text: w.id, title: w.id }), c.word),
        fig('slots', 'Slots'), fig('flight', 'In flight'), fig('tps', 'Tokens/s'),
        !compact && fig('ttft', 'TTFT'), !compact && fig('share', 'Share'),
        spark && h('span', { class: 'c spark-cell' }, spark.box),
        c.note);
      rows.set(w.id, c);
      list.append(li);
    }
    update();
  }

  function update() {
    const hist = state.history;
    const end = hist.length ? hist[hist.length - 1].at_ms : 0;
    // One scale for every sparkline, so studios compare at a glance.
    let max = 0;
    for (const s of hist) for (const w of s.workers) max = Math.max(max, w.tokens_per_second);
    for (const w of state.workers) {
      const c = rows.get(w.id);
      if (!c) continue;
      const l = liveOf(w.id) || {};
      const st = studioStatus(w.status === 'disabled' ? 'disabled' : l.state || w.status, l.in_flight);
      fill(c.dot, dot(st.tone, st.word));
      c.word.textContent = st.word;
      c.word.className = `word ${st.tone}`;
      const slots = l.slots ?? w.max_concurrent_requests;
      // Slow start's cautious figure is not how many the studio runs.
      const measured = l.slots_basis !== 'slow_start';
      c.slots.textContent = `${int(Math.min(l.in_flight || 0, slots))}/${measured ? int(slots) : '–'}`;
      // What the user declared, and what Baton learned the studio runs.
      c.slots.title = l.slots == null ? '' : slotsWords(l.slots_declared ?? 'auto', l);
      c.flight.textContent = int(l.in_flight || 0);
      c.tps.textContent = num(l.tokens_per_second);
      if (c.ttft) c.ttft.textContent = ms(l.ttft_ms ?? l.ewma_ttft_ms);
      if (c.share) c.share.textContent = pct(l.share);
      const why = l.ejected_for ? `Ejected: ${failureWord(l.ejected_for)}` : '';
      c.note.textContent = [why, l.last_error && st.key === 'ejected' ? l.last_error : ''].filter(Boolean).join(' — ');
      c.note.hidden = !c.note.textContent;
      if (c.line) {
        const pts = hist.map((s) => s.workers.find((x) => x.id === w.id)).map((x) => x?.tokens_per_second ?? 0);
        sparkline(c.line, pts, hist.map((s) => s.at_ms), end, max);
      }
    }
  }

  life.push(on('workers', build), on('state', build), on('stats', update), on('balancer', update));
  build();
  return compact ? list : h('div', { class: 'studios-wrap' }, head, list);
}

// Headroom: the agents at work now (requests in flight and queued) against
// the capacity measured for this pool under its service level, amber past
// 80%; without a measurement, the way to take one.
export function headroomGauge(life, { compact = false } = {}) {
  const slot = h('div', { class: 'slot' });
  const words = h('span', { class: 'v' });
  const bar = h('span', { class: 'fill' });
  const note = h('p', { class: 'hint' });
  const measure = h('button', { type: 'button', text: 'Measure capacity' });
  measure.addEventListener('click', () => act(measure, slot, async () => {
    trackJob('bench', (await post('/api/bench', { mode: 'capacity' })).job);
  }));
  const el = h('section', { class: `headroom card${compact ? ' compact' : ''}`, 'aria-label': 'Headroom' },
    h('div', { class: 'row' }, h('span', { class: 'k grow', text: 'Headroom' }), words),
    h('div', { class: 'gauge', role: 'meter', 'aria-label': 'Agents now against capacity', 'aria-valuemin': '0' }, bar),
    note, measure, slot);
  let record = null;
  const render = () => {
    const j = state.jobs.bench;
    measure.hidden = Boolean(record);
    measure.disabled = j?.status === 'running';
    if (!record) {
      el.classList.remove('amber');
      el.querySelector('.gauge').hidden = true;
      words.textContent = 'not measured';
      note.textContent = compact
        ? 'How many agents this pool serves at once is not measured yet.'
        : 'No capacity on record for this pool: measure how many agents it serves at once within 2 s to first token and 20 tok/s (a few minutes).';
      return;
    }
    const p = state.balancer?.running ? state.stats?.pool : null;
    const now = p ? (p.in_flight || 0) + (p.queue_depth || 0) : null;
    const cap = record.max_concurrency;
    const share = now == null || !cap ? 0 : now / cap;
    el.querySelector('.gauge').hidden = false;
    el.querySelector('.gauge').setAttribute('aria-valuemax', String(cap));
    el.querySelector('.gauge').setAttribute('aria-valuenow', String(now ?? 0));
    bar.style.width = `${Math.min(100, share * 100)}%`;
    el.classList.toggle('amber', share > 0.8);
    words.textContent = `${now == null ? '–' : int(now)} of ${int(cap)} agents`;
    note.textContent = `${record.sentence} (run ${record.run_id}).`;
  };
  const load = async () => {
    try {
      record = (await get('/api/capacity')).record;
      render();
    } catch (e) {
      fill(slot, errorBox(e, load));
    }
  };
  life.push(on('stats', render), on('balancer', render), on('state', render), on('workers', load),
    on('job', (j) => { if (j.kind === 'bench' && j.status !== 'running') load(); else render(); }));
  load();
  return el;
}
