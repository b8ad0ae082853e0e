// Batch: a folder of documents through the pool with a preset of prompts;
// progress, failed tasks with their errors, retry, and past jobs to resume.

import { enc, get, post } from '../api.js';
import { act, badge, errorBox, field, fill, h } from '../dom.js';
import { int, jobStatus, num, when } from '../format.js';
import { on, state, trackJob } from '../state.js';

const track = (job) => trackJob('batch', job);

// A batch job's failed tasks: `failed_tasks` from the engine (where `failed`
// is their count); the contract's `failed` list is taken too.
const failedTasks = (b) => b.failed_tasks || (Array.isArray(b.failed) ? b.failed : []);
const count = (v) => (Array.isArray(v) ? v.length : v);
const batchId = (b) => b.id ?? b.job_id;

export function mount(root, life) {
  const errSlot = h('div', { class: 'slot' });
  const input = h('input', { name: 'input', required: true, spellcheck: false, autocomplete: 'off', placeholder: '/Users/you/papers' });
  const out = h('input', { name: 'out_dir', required: true, spellcheck: false, autocomplete: 'off', placeholder: '/Users/you/results' });
  const preset = h('select', { name: 'preset' });
  const presetHint = h('span', { class: 'hint' });
  const start = h('button', { type: 'submit', class: 'primary', text: 'Start batch' });
  const form = h('form', { class: 'grid-form' },
    field('Input folder', input, 'On the Mac running Baton: .txt, .md and .pdf'),
    field('Output folder', out),
    h('label', { class: 'field' }, h('span', { class: 'label', text: 'Preset' }), preset, presetHint),
    h('div', { class: 'row end wide' }, start));
  form.addEventListener('submit', (e) => {
    e.preventDefault();
    act(start, errSlot, async () => {
      const { job } = await post('/api/batch', { input: input.value.trim(), out_dir: out.value.trim(), preset: preset.value });
      track(job);
    });
  });

  let presets = [];
  const showPreset = () => {
    const p = presets.find((x) => x.name === preset.value);
    presetHint.textContent = p ? [p.description, p.prompts.map((x) => x.title || x.name).join(', ')].filter(Boolean).join(': ') : '';
  };
  preset.addEventListener('change', showPreset);
  get('/api/batch/presets').then((list) => {
    presets = list;
    fill(preset, list.map((p) => h('option', { value: p.name, text: p.name })));
    showPreset();
  }, (err) => fill(errSlot, errorBox(err)));

  const live = h('section', { class: 'card', 'aria-label': 'Batch progress', hidden: true });
  const failedBox = h('div');
  const past = h('div');
  const pastErr = h('div', { class: 'slot' });

  async function showFailed(id) {
    const b = await get(`/api/batch/${enc(id)}`);
    const failed = failedTasks(b);
    const retry = h('button', { type: 'button', text: 'Retry failed' });
    const slot = h('div', { class: 'slot' });
    retry.addEventListener('click', () => act(retry, slot, async () => track((await post(`/api/batch/${enc(id)}/retry-failed`)).job)));
    fill(failedBox, failed.length > 0 && h('section', { class: 'card', 'aria-label': 'Failed tasks' },
      h('div', { class: 'row' }, h('h2', { class: 'grow', text: `Failed tasks of job ${id}` }), retry),
      slot,
      h('ul', { class: 'failed' }, failed.map((t) => h('li', {},
        h('b', { text: t.document }), ` · ${t.prompt}`, t.attempts ? ` · ${t.attempts} attempt(s)` : '',
        h('p', { class: 'error-text', text: t.error }))))));
  }

  function renderLive() {
    const j = state.jobs.batch;
    start.disabled = j?.status === 'running';
    live.hidden = !j;
    if (!j) return;
    const p = j.progress;
    const s = j.result;
    const js = jobStatus(j.status);
    // tasks/min while running: finished tasks over the time since we saw it start.
    const mins = j.started ? (Date.now() - j.started) / 60000 : 0;
    const rate = s ? s.tasks_per_minute : mins > 0 && p ? p.done / mins : null;
    fill(live,
      h('div', { class: 'row' }, h('h2', { class: 'grow', text: 'Batch' }), badge(js.tone, js.word)),
      p && !s && h('p', { class: 'progress', role: 'status' }, `${int(p.ok ?? p.done)} done, ${int(p.failed)} failed of ${p.total == null ? '?' : int(p.total)}`,
        rate != null ? ` — ${num(rate)} tasks/min` : ''),
      p && p.total && !s ? h('progress', { max: p.total, value: p.done, 'aria-label': 'Batch progress' }) : null,
      s && h('p', { class: 'progress', role: 'status' },
        `${int(s.done)} done, ${int(s.failed)} failed of ${int(s.tasks)} — ${num(s.tasks_per_minute)} tasks/min, written to ${s.out_dir}`),
      s?.skipped_files?.length > 0 && h('details', {}, h('summary', { text: `${s.skipped_files.length} file(s) skipped` }),
        h('ul', {}, s.skipped_files.map(([f, why]) => h('li', { text: `${f}: ${why}` })))),
      j.notes.length > 0 && h('ul', { class: 'notes' }, j.notes.map((n) => h('li', { text: n }))),
      errorBox(j.error));
  }

  async function loadPast() {
    const jobs = await get('/api/batch');
    fill(past, jobs.length ? h('ul', { class: 'past' }, jobs.map((b) => {
      const id = batchId(b);
      const resume = h('button', { type: 'button', text: 'Resume', 'aria-label': `Resume batch job ${id}` });
      resume.addEventListener('click', () => act(resume, pastErr, async () => track((await post(`/api/batch/${enc(id)}/resume`)).job)));
      const failures = h('button', { type: 'button', text: 'Failed tasks', 'aria-label': `Failed tasks of batch job ${id}`, hidden: !count(b.failed) });
      failures.addEventListener('click', () => act(failures, pastErr, () => showFailed(id)));
      return h('li', { class: 'row wrap' },
        h('div', { class: 'grow' },
          h('b', { text: `Job ${id}` }), ` · ${b.preset} · ${b.input ?? b.input_dir ?? ''} → ${b.out_dir ?? ''}`,
          h('div', { class: 'hint', text: [b.tasks != null && `${int(count(b.done))} done, ${int(count(b.failed))} failed of ${int(b.tasks)}`, when(b.created_at)].filter(Boolean).join(' · ') })),
        failures, resume);
    })) : h('p', { class: 'hint', text: 'No batch jobs yet.' }));
  }

  const onJob = (j) => {
    if (j.kind !== 'batch') return;
    renderLive();
    if (j.status !== 'running') {
      loadPast().catch((err) => fill(pastErr, errorBox(err)));
      if (j.result?.job_id != null) showFailed(j.result.job_id).catch((err) => fill(pastErr, errorBox(err)));
    }
  };
  life.push(on('job', onJob), on('state', renderLive));
  renderLive();
  loadPast().catch((err) => fill(pastErr, errorBox(err)));

  root.append(
    h('h1', { text: 'Batch' }),
    h('section', { class: 'card', 'aria-label': 'New batch' }, h('h2', { text: 'New batch' }),
      h('p', { class: 'hint', text: 'Every document × every prompt of the preset goes through the pool; finished tasks are kept, so a job can be resumed.' }),
      form, errSlot),
    live, failedBox,
    h('section', { class: 'card', 'aria-label': 'Past batch jobs' }, h('h2', { text: 'Past jobs' }), pastErr, past));
}
