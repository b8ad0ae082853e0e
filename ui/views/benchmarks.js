// Benchmarks: run a concurrency and/or worker-scaling sweep with live
// progress, read its tables, charts and diagnosis, keep a history, compare.

import { del, download, enc, get, post } from '../api.js';
import { act, badge, confirmDialog, errorBox, field, fill, h } from '../dom.js';
import { chartFigure } from '../charts.js';
import { capacityCard } from './capacity.js';
import { int, jobStatus, num, pct, secs, severityTone, speedup, when } from '../format.js';
import { on, state, trackJob } from '../state.js';

// The run on screen survives switching views.
let shown = null; // {id, result, diagnosis?}
let compared = ''; // the run ids of the comparison on screen

const numbers = (text) => text.split(/[\s,]+/).filter(Boolean).map(Number);

function table(caption, head, rows) {
  return h('div', { class: 'table-wrap' }, h('table', {},
    h('caption', { text: caption }),
    h('thead', {}, h('tr', {}, head.map((t) => h('th', { scope: 'col', text: t })))),
    h('tbody', {}, rows.map((r) => h('tr', {}, r.map((v, i) => (i ? h('td', { text: v }) : h('th', { scope: 'row', text: v }))))))));
}

function resultTables(r) {
  return [
    r.concurrency_benchmark?.length > 0 && table('Concurrency benchmark',
      ['Concurrency', 'req/s', 'tok/s', 'Success', 'p50 latency', 'p95 latency', 'p99 latency', 'TTFT'],
      r.concurrency_benchmark.map((l) => [l.concurrency, num(l.requests_per_second, 2), num(l.output_tokens_per_second),
        `${num(l.success_rate)}%`, secs(l.p50_response_time), secs(l.p95_response_time), secs(l.p99_response_time), secs(l.ttft_avg)])),
    r.worker_scaling_benchmark?.length > 0 && table('Worker scaling benchmark',
      ['Workers', 'req/s', 'Speedup', 'Efficiency'],
      r.worker_scaling_benchmark.map((s) => [s.workers, num(s.requests_per_second, 2), speedup(s.speedup), pct(s.scaling_efficiency)])),
  ];
}

// The run's diagnosis: `{verdict, healthy, headline, findings: [...],
// waterfall?}` (or, from a hand-made result, just the list of findings).
function diagnosisCard(diag) {
  if (!diag) return null;
  const list = Array.isArray(diag) ? diag : diag.findings || [];
  const shown = list.filter((d) => d.severity !== 'info' || !diag.healthy);
  const waterfall = Array.isArray(diag.waterfall) && diag.waterfall.length > 1 ? diag.waterfall : null;
  return h('section', { class: 'card diagnosis', 'aria-label': 'Diagnosis' },
    h('h3', { text: 'Diagnosis' }),
    diag.headline && h('p', { class: 'hint', text: diag.headline }),
    shown.length
      ? h('ul', {}, shown.map((d) => h('li', {},
        h('div', { class: 'row' }, badge(severityTone(d.severity), d.severity || 'note'), h('b', { text: causeWord(d.cause) }), d.worker && h('span', { class: 'hint', text: d.worker })),
        d.evidence && h('p', { text: d.evidence }),
        d.remedy && h('p', { class: 'fix' }, h('b', { text: 'Fix: ' }), d.remedy))))
      : h('p', { class: 'ok-text', text: 'No problem found' }),
    waterfall && h('p', { class: 'hint', text: `Where the capacity went: ${waterfall.map((w) => `${w.label} ${num(w.requests_per_second, 2)} req/s`).join(' · ')}` }));
}

// The causes a diagnosis names, in words.
function causeWord(c) {
  return {
    dead_studio: 'Dead studio', flaky_studio: 'Flaky studio', slow_studio: 'Slow studio',
    network_bound: 'Network-bound', serialized: 'Serialized', saturated: 'Saturated',
    cold_model: 'Cold model', client_bound: 'Client-bound', short_level: 'Level too short',
    balancer_overhead: 'Balancer overhead',
  }[c] || c;
}

async function chartsOf(path, into) {
  fill(into, h('p', { class: 'hint', text: 'Loading charts…' }));
  try {
    const charts = await get(path);
    fill(into, (Array.isArray(charts) ? charts : [charts]).map(chartFigure));
  } catch (err) {
    fill(into, errorBox(err));
  }
}

function runForm(errSlot) {
  // Both by default, as the CLI: the scaling chart is what most come for.
  const mode = h('select', { name: 'mode' }, ['concurrency', 'scaling', 'both', 'capacity'].map((m) => h('option', { value: m, text: m[0].toUpperCase() + m.slice(1) })));
  mode.value = 'both';
  const unit = h('select', { name: 'unit', 'aria-label': 'Length unit' }, h('option', { value: 'duration_s', text: 'seconds' }), h('option', { value: 'requests', text: 'requests' }));
  const amount = h('input', { type: 'number', name: 'amount', min: 1, value: 5, 'aria-label': 'Length of each level' });
  const levels = h('input', { name: 'levels', value: '1 5 10 20', spellcheck: false, inputmode: 'numeric' });
  const counts = h('input', { name: 'workers', value: '1 2 3', spellcheck: false, inputmode: 'numeric' });
  const maxTokens = h('input', { type: 'number', name: 'max_tokens', min: 1, value: 64 });
  const prompt = h('textarea', { name: 'prompt', rows: 2, placeholder: 'Built-in prompts when empty' });
  const label = h('input', { name: 'label', placeholder: 'e.g. three studios', autocomplete: 'off' });
  // The preflight runs first; this says what a failing studio does to the run.
  const gate = h('select', { name: 'gate' },
    h('option', { value: 'require', text: 'Stop: fix it first' }),
    h('option', { value: 'exclude_unhealthy', text: 'Leave it out' }),
    h('option', { value: 'skip', text: 'Skip the preflight' }));
  const run = h('button', { type: 'submit', class: 'primary', text: 'Run benchmark' });
  // Capacity mode: the service level the search holds the pool to.
  const sloTtft = h('input', { type: 'number', name: 'slo_ttft_p95_ms', min: 1, value: 2000 });
  const sloTps = h('input', { type: 'number', name: 'slo_tokens_per_s', min: 0.1, step: 'any', value: 20 });
  const slo = [field('First token within (ms, p95)', sloTtft), field('Tokens/s per answer, at least', sloTps)];
  const sweep = [
    h('div', { class: 'field' }, h('span', { class: 'label', text: 'Each level runs for' }), h('div', { class: 'row tight' }, amount, unit)),
    field('Concurrency levels', levels), field('Worker counts (scaling)', counts)];
  const capacityMode = () => {
    for (const f of slo) f.hidden = mode.value !== 'capacity';
    for (const f of sweep) f.hidden = mode.value === 'capacity';
  };
  mode.addEventListener('change', capacityMode);
  capacityMode();
  const form = h('form', { class: 'grid-form bench-form' },
    field('Mode', mode), ...slo, ...sweep,
    field('Max tokens', maxTokens), field('If a studio fails preflight', gate), field('Label', label),
    h('label', { class: 'field wide' }, h('span', { class: 'label', text: 'Prompt' }), prompt),
    h('div', { class: 'row end wide' }, run));
  form.addEventListener('submit', (e) => {
    e.preventDefault();
    // A capacity search sizes its own points (enough answers for a p95).
    const body = mode.value === 'capacity' ? {
      mode: 'capacity', slo: { ttft_p95_ms: Number(sloTtft.value), tokens_per_s: Number(sloTps.value) },
      max_tokens: Number(maxTokens.value), gate: gate.value,
      ...(prompt.value.trim() && { prompt: prompt.value.trim() }),
      ...(label.value.trim() && { label: label.value.trim() }),
    } : {
      mode: mode.value, [unit.value]: Number(amount.value),
      concurrency_levels: numbers(levels.value), worker_counts: numbers(counts.value),
      max_tokens: Number(maxTokens.value), gate: gate.value,
      ...(prompt.value.trim() && { prompt: prompt.value.trim() }),
      ...(label.value.trim() && { label: label.value.trim() }),
    };
    act(run, errSlot, async () => {
      trackJob('bench', (await post('/api/bench', body)).job);
    });
  });
  return { form, run };
}

export function mount(root, life) {
  const errSlot = h('div', { class: 'slot' });
  const { form, run } = runForm(errSlot);
  const live = h('section', { class: 'card live', 'aria-label': 'Benchmark progress', hidden: true });
  const resultBox = h('div', { class: 'result' });
  const charts = h('div', { class: 'charts' });
  const history = h('div');
  const compareBox = h('div', { class: 'compare' });
  const histErr = h('div', { class: 'slot' });
  let runs = [];
  const picked = new Set();

  function renderLive() {
    const j = state.jobs.bench;
    run.disabled = j?.status === 'running';
    live.hidden = !j || (j.status === 'finished' && !j.levels.length);
    if (live.hidden) return;
    const p = j.progress;
    const js = jobStatus(j.status);
    const cancel = h('button', { type: 'button', text: 'Cancel' });
    cancel.addEventListener('click', () => act(cancel, errSlot, () => post(`/api/jobs/${enc(j.id)}/cancel`)));
    fill(live,
      h('div', { class: 'row' }, h('h2', { class: 'grow', text: 'Benchmark' }), badge(js.tone, js.word), j.status === 'running' && cancel),
      j.status === 'running' && h('p', { class: 'progress', role: 'status' },
        h('b', { text: p?.label || j.current?.label || 'Starting' }),
        p ? ` ${int(p.ok)} ok, ${int(p.failed)} failed` : '',
        p && (p.total || j.current?.planned) ? ` of ${int(p.total || j.current.planned)}` : '',
        !p && j.current?.duration_s ? ` for ${num(j.current.duration_s)} s` : ''),
      // In time order: the preflight's notes come before the levels.
      j.steps.length > 0 && h('ul', { class: 'steps' }, j.steps.map(({ note, level: l }) => (l
        ? h('li', { class: 'level' }, h('b', { text: l.label }), ` ${l.summary}`)
        : h('li', { class: 'note', text: note })))),
      errorBox(j.error));
  }

  function renderResult() {
    if (!shown) return fill(resultBox, h('p', { class: 'hint', text: 'No run selected.' })), fill(charts);
    const r = shown.result;
    const summary = runs.find((x) => x.id === shown.id);
    const id = shown.id;
    const report = h('button', { type: 'button', text: 'Download report', title: 'One HTML file with the tables, charts, diagnosis and capacity, to send to someone' });
    report.addEventListener('click', () => act(report, errSlot, () => download(`/api/runs/${enc(id)}/report.html`, `baton-run-${id}.html`)));
    fill(resultBox,
      h('h2', { text: `Run ${shown.id}${summary?.label ? `: ${summary.label}` : ''}` }),
      h('p', { class: 'hint', text: `${r.mode}, ${r.target}, model ${r.settings?.model || '–'}, ${r.settings?.max_tokens} max tokens${r.interrupted ? ' (interrupted: later levels were not run)' : ''}` }),
      h('div', { class: 'row' }, report),
      capacityCard(r.capacity),
      // A capacity run has no sweep to judge: only findings about its studios.
      (!r.capacity || (shown.diagnosis || r.diagnosis)?.findings?.length > 0) && diagnosisCard(shown.diagnosis || r.diagnosis),
      resultTables(r));
  }

  async function show(id, result, diagnosis) {
    shown = { id, result: result || await get(`/api/runs/${enc(id)}`), diagnosis };
    renderResult();
    await chartsOf(`/api/runs/${enc(id)}/charts`, charts);
  }

  async function loadRuns() {
    runs = await get('/api/runs');
    for (const id of [...picked]) if (!runs.some((r) => r.id === id)) picked.delete(id);
    renderHistory();
    if (shown) renderResult(); // its heading names the run's label
  }

  function renderHistory() {
    const compare = h('button', { type: 'button', text: 'Compare', disabled: picked.size < 2 });
    compare.addEventListener('click', () => act(compare, histErr, doCompare));
    fill(history, runs.length ? [
      h('div', { class: 'table-wrap' }, h('table', { class: 'runs' },
        h('caption', { text: 'Runs' }),
        h('thead', {}, h('tr', {}, ['', 'Run', 'Label', 'Mode', 'Workers', 'Best req/s', 'When', ''].map((t) => h('th', { scope: 'col', text: t })))),
        h('tbody', {}, runs.map((r) => {
          const box = h('input', { type: 'checkbox', checked: picked.has(r.id), 'aria-label': `Select run ${r.id}` });
          box.addEventListener('change', () => { if (box.checked) picked.add(r.id); else picked.delete(r.id); compare.disabled = picked.size < 2; });
          const view = h('button', { type: 'button', text: 'View', 'aria-label': `View run ${r.id}` });
          view.addEventListener('click', () => act(view, histErr, () => show(r.id)));
          const rm = h('button', { type: 'button', class: 'danger', text: 'Delete', 'aria-label': `Delete run ${r.id}` });
          rm.addEventListener('click', () => act(rm, histErr, async () => {
            if (!(await confirmDialog(`Delete run ${r.id}?`, 'Its results and charts leave the history.', 'Delete'))) return;
            await del(`/api/runs/${enc(r.id)}`);
            picked.delete(r.id);
            if (shown?.id === r.id) { shown = null; renderResult(); }
            await loadRuns();
          }));
          return h('tr', { class: shown?.id === r.id ? 'current' : '' },
            h('td', {}, box), h('th', { scope: 'row', text: r.id }), h('td', { text: r.label || '' }),
            h('td', { text: r.mode + (r.interrupted ? ' (interrupted)' : '') }), h('td', { text: r.workers }),
            h('td', { text: num(r.best_rps, 2) }), h('td', { text: when(r.created_at) }),
            h('td', { class: 'actions' }, view, ' ', rm));
        })))),
      h('div', { class: 'row end' }, h('span', { class: 'hint grow', text: 'Select two or more runs to compare them.' }), compare),
    ] : h('p', { class: 'hint', text: 'No runs yet.' }));
  }

  async function doCompare() {
    // Oldest first: speedup is measured against the first run.
    const ids = [...picked].sort((a, b) => a - b).join(',');
    const c = await get(`/api/compare?runs=${ids}`);
    compared = ids;
    const speedHead = c.runs.length === 2 ? ['Speedup'] : c.runs.slice(1).map((n) => `Speedup (${n})`);
    const chart = h('div', { class: 'charts' });
    fill(compareBox, h('section', { class: 'card', 'aria-label': 'Comparison' },
      h('h2', { text: 'Comparison' }),
      table('Speedup by concurrency', ['Concurrency', ...c.runs.map((n) => `req/s (${n})`), ...speedHead],
        c.rows.map((r) => [r.concurrency, ...r.requests_per_second.map((v) => num(v, 2)), ...r.speedup.slice(1).map(speedup)])),
      c.verdicts.length > 0 && h('ul', { class: 'verdicts' }, c.verdicts.map((v) => h('li', { text: v }))),
      chart));
    await chartsOf(`/api/compare/chart?runs=${ids}`, chart);
  }

  const onJob = (j) => {
    if (j.kind !== 'bench') return;
    renderLive();
    if (j.status === 'finished' && j.result?.run_id != null && shown?.id !== j.result.run_id) {
      loadRuns().catch(() => {});
      show(j.result.run_id, j.result.result, j.result.result?.diagnosis).catch((err) => fill(errSlot, errorBox(err)));
    }
  };
  life.push(on('job', onJob), on('state', renderLive));
  renderLive();
  renderResult();
  loadRuns().then(() => {
    const j = state.jobs.bench;
    if (compared) {
      for (const id of compared.split(',')) if (runs.some((r) => String(r.id) === id)) picked.add(Number(id));
      renderHistory();
      if (picked.size > 1) doCompare().catch((err) => fill(histErr, errorBox(err)));
    }
    if (shown) return show(shown.id, shown.result, shown.diagnosis);
    if (j?.result?.run_id != null) return show(j.result.run_id, j.result.result, j.result.result?.diagnosis);
    if (runs.length) return show(runs[0].id);
  }).catch((err) => fill(histErr, errorBox(err)));

  root.append(
    h('h1', { text: 'Benchmarks' }),
    h('section', { class: 'card', 'aria-label': 'New benchmark' }, h('h2', { text: 'New benchmark' }), form, errSlot),
    live,
    h('section', { class: 'card', 'aria-label': 'Result' }, resultBox, charts),
    h('section', { class: 'card', 'aria-label': 'History' }, h('h2', { text: 'History' }), histErr, history),
    compareBox);
}
