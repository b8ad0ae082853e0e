// The capacity search of a run (`baton bench --mode capacity`): the one
// sentence that answers "how many agents?", the points searched, each studio
// alone and the what-ifs. The search's charts come with the run's charts.

import { h } from '../dom.js';
import { num } from '../format.js';

const LIMITS = {
  ttft_p95: 'time to first token', tokens_per_s: 'tokens per second per answer',
  errors: 'failed requests', search_ceiling: "the search's ceiling (nothing failed up to it)",
};

const seconds = (ms) => (ms >= 1000 ? `${num(ms / 1000, 2).replace(/\.?0+$/, '')} s` : `${Math.round(ms)} ms`);

export function serviceLevel(slo = {}) {
  const parts = [];
  if (slo.ttft_p95_ms != null) parts.push(`first tokens under ${seconds(slo.ttft_p95_ms)} (p95)`);
  if (slo.tokens_per_s != null) parts.push(`${num(slo.tokens_per_s, 1).replace(/\.0$/, '')} tok/s each`);
  return parts.length ? parts.join(' and ') : 'no more than 1% of requests failing';
}

// As the CLI says it: "This pool serves 11 agents at once with ...".
export function capacitySentence(c) {
  const level = serviceLevel(c.slo);
  const agents = (n) => `${n} agent${n === 1 ? '' : 's'}`;
  if (!c.max_concurrency) return `This pool cannot serve even 1 agent with ${level}; limited by ${LIMITS[c.limited_by || 'errors']}`;
  if (c.limited_by === 'search_ceiling') return `This pool serves at least ${agents(c.max_concurrency)} at once with ${level}; nothing missed it up to the search's ceiling`;
  return `This pool serves ${agents(c.max_concurrency)} at once with ${level}; limited by ${LIMITS[c.limited_by] || 'nothing measured'}`;
}

function table(caption, head, rows) {
  return h('div', { class: 'table-wrap' }, h('table', {},
    h('caption', { text: caption }),
    h('thead', {}, h('tr', {}, head.map((t) => h('th', { scope: 'col', text: t })))),
    h('tbody', {}, rows.map((r) => h('tr', {}, r.map((v, i) => (i ? h('td', { text: v }) : h('th', { scope: 'row', text: v }))))))));
}

export function capacityCard(c) {
  if (!c) return null;
  const points = [...(c.points || [])].sort((a, b) => a.concurrency - b.concurrency);
  const studios = c.per_studio || [];
  return h('section', { class: 'card capacity', 'aria-label': 'Capacity' },
    h('h3', { text: 'Capacity' }),
    h('p', { class: 'answer', text: `${capacitySentence(c)}.` }),
    table(`The search (${serviceLevel(c.slo)})`, ['Agents', 'Meets', 'TTFT p95', 'tok/s per answer', 'req/s', 'goodput/s'],
      points.map((p) => [p.concurrency, p.meets ? 'yes' : `no (${(p.misses || []).map((m) => LIMITS[m] || m).join(', ')})`,
        seconds(p.ttft_p95_ms), num(p.tokens_per_s_p50), num(p.rps, 2), num(p.goodput_rps, 2)])),
    studios.length > 0 && table('Each studio alone', ['Studio', 'Slots', 'Agents', 'goodput/s', 'Limited by'],
      studios.map((s) => (s.error ? [s.id, s.slots, `not measured: ${s.error}`, '', ''] : [s.id, s.slots, s.max_concurrency, num(s.goodput_rps, 2), LIMITS[s.limited_by] || '–']))),
    c.predicted && table('Predicted from the studios alone', ['Pool', 'Agents', 'goodput/s'],
      [[`this pool (measured ${c.max_concurrency}, ${c.predicted.error_pct >= 0 ? '+' : ''}${num(c.predicted.error_pct, 0)}%)`, c.predicted.max_concurrency, num(c.predicted.goodput_rps, 2)],
        ...(c.what_if || []).map((w) => [w.change, w.max_concurrency, num(w.goodput_rps, 2)])]),
    c.least_per_slot && h('p', { class: 'hint', text: `${c.least_per_slot} adds least per slot.` }),
    c.checked && h('p', { class: 'hint', text: `Run ${c.checked.run_id} predicted ${c.checked.predicted} agents for ${c.checked.studios.join(', ')} (each alone, summed): measured ${c.checked.measured} (${c.checked.error_pct >= 0 ? '+' : ''}${num(c.checked.error_pct, 0)}%).` }),
    (c.warnings || []).map((w) => h('p', { class: 'hint', text: `Warning: ${w}` })));
}
