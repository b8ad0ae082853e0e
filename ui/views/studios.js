// Studios: discover, add, edit, remove, enable/disable, drain, API keys.
// Every change goes to the workers file through the engine, which answers
// with the file loader's own message when something is wrong.

import { del, enc, post, put } from '../api.js';
import { act, badge, confirmDialog, dot, field, fill, h, modal, showError } from '../dom.js';
import { KINDS, kindName, studioStatus } from '../format.js';
import { emit, liveOf, on, state } from '../state.js';
import { discoverPanel } from './discover.js';
import { slotsWords } from './live.js';

// "auto" (or nothing) lets Baton learn the number; anything else is sent
// as typed, so the engine's own message explains a mistake.
function slotsValue(text) {
  const t = text.trim();
  if (t === '' || t.toLowerCase() === 'auto') return 'auto';
  return /^\d+$/.test(t) ? Number(t) : t;
}

// What a studio has shown it speaks besides OpenAI's API.
const API_NAMES = [['/v1/messages', 'Anthropic API'], ['/api/chat', 'Ollama API']];

function replaceWorker(w) {
  const i = state.workers.findIndex((x) => x.id === w.id);
  if (i >= 0) state.workers[i] = w; else state.workers.push(w);
  emit('workers');
}

// The workers-file fields; `field` in an engine error (e.g. "workers[0].port")
// names one of them by its last part.
function workerForm(w, onSaved) {
  const isNew = !w;
  w = w || { id: '', host: '', port: 1234, type: 'lm_studio', model: '', max_concurrent_requests: 4, weight: 1, enabled: true };
  const input = (name, props) => h('input', { name, ...props });
  const f = {
    id: input('id', { value: w.id, required: true, spellcheck: false, autocomplete: 'off' }),
    host: input('host', { value: w.host, required: true, spellcheck: false, autocomplete: 'off', placeholder: '192.168.1.105' }),
    port: input('port', { type: 'number', min: 1, max: 65535, value: w.port, required: true }),
    type: h('select', { name: 'type' }, KINDS.map((k) => h('option', { value: k, text: kindName(k), selected: k === w.type }))),
    model: input('model', { value: w.model || '', spellcheck: false, autocomplete: 'off' }),
    // A number (the most it is given; Baton learns what it really runs
    // below it) or "auto".
    max_concurrent_requests: input('max_concurrent_requests', { value: w.max_concurrent_requests ?? 'auto', spellcheck: false, autocomplete: 'off', placeholder: 'auto' }),
    weight: input('weight', { type: 'number', min: 0, step: 'any', value: w.weight ?? 1 }),
    enabled: input('enabled', { type: 'checkbox', checked: w.enabled !== false }),
  };
  const errSlot = h('div', { class: 'slot' });
  const save = h('button', { type: 'submit', class: 'primary', text: isNew ? 'Add studio' : 'Save' });
  const cancel = h('button', { type: 'button', text: 'Cancel' });
  // No browser validation: the engine's loader says what is wrong, and how to fix it.
  const form = h('form', { class: 'grid-form', noValidate: true },
    field('ID', f.id), field('Host', f.host), field('Port', f.port), field('Type', f.type),
    field('Model', f.model), field('Max concurrent requests', f.max_concurrent_requests), field('Weight', f.weight),
    h('label', { class: 'check' }, f.enabled, h('span', { text: 'Enabled' })),
    errSlot);
  const d = modal(isNew ? 'Add studio' : `Edit ${w.id}`, form, [cancel, save]);
  save.setAttribute('form', form.id = `wf-${Date.now()}`);
  cancel.addEventListener('click', () => d.close());
  form.addEventListener('submit', (e) => {
    e.preventDefault();
    for (const el of Object.values(f)) el.removeAttribute('aria-invalid');
    const body = {
      ...(isNew ? {} : { members: w.members || [] }),
      id: f.id.value.trim(), host: f.host.value.trim(), port: Number(f.port.value), type: f.type.value,
      model: f.model.value.trim(), max_concurrent_requests: slotsValue(f.max_concurrent_requests.value),
      weight: Number(f.weight.value), enabled: f.enabled.checked,
    };
    act(save, null, async () => {
      try {
        replaceWorker(isNew ? await post('/api/workers', body) : await put(`/api/workers/${enc(w.id)}`, body));
        d.close();
        onSaved?.();
      } catch (err) {
        showError(errSlot, err);
        const bad = f[String(err.field || '').split('.').pop()];
        if (bad) { bad.setAttribute('aria-invalid', 'true'); bad.focus(); }
      }
    });
  });
  f.id.focus();
}

function keyForm(w) {
  const key = h('input', { type: 'password', name: 'key', autocomplete: 'off', required: true });
  const errSlot = h('div', { class: 'slot' });
  const save = h('button', { type: 'submit', class: 'primary', text: 'Save key' });
  const cancel = h('button', { type: 'button', text: 'Cancel' });
  const form = h('form', { id: `kf-${Date.now()}` },
    h('p', { class: 'hint', text: 'Stored in the keychain; the workers file only refers to it. It is never shown again.' }),
    field('API key', key), errSlot);
  save.setAttribute('form', form.id);
  const d = modal(`API key for ${w.id}`, form, [cancel, save]);
  cancel.addEventListener('click', () => d.close());
  form.addEventListener('submit', (e) => {
    e.preventDefault();
    act(save, errSlot, async () => {
      await put(`/api/workers/${enc(w.id)}/key`, { key: key.value });
      key.value = '';
      replaceWorker({ ...w, has_api_key: true });
      d.close();
    });
  });
  key.focus();
}

function workerRow(w) {
  const errSlot = h('div', { class: 'slot' });
  const l = liveOf(w.id) || {};
  const st = studioStatus(w.status === 'disabled' ? 'disabled' : l.state || w.status, l.in_flight);
  const action = (label, fn, cls) => {
    const b = h('button', { type: 'button', text: label, 'aria-label': `${label} ${w.id}`, class: cls });
    b.addEventListener('click', () => act(b, errSlot, fn));
    return b;
  };
  const path = `/api/workers/${enc(w.id)}`;
  const draining = w.status === 'draining';
  return h('li', { class: 'worker' },
    h('div', { class: 'who' }, dot(st.tone, st.word),
      h('span', { class: 'id', text: w.id }),
      h('span', { class: `word ${st.tone}`, text: st.word }),
      w.has_api_key && badge('off', 'key set')),
    h('div', { class: 'meta' },
      h('span', { text: `${w.host}:${w.port}` }),
      h('span', { text: kindName(w.type) }),
      h('span', { class: 'model', text: w.model || 'any model' }),
      h('span', { text: slotsText(w, l) }),
      loadedText(w.live),
      w.weight !== 1 && h('span', { text: `weight ${w.weight}` }),
      ...API_NAMES.map(([path, name]) => {
        const c = (w.live?.capabilities || l.capabilities)?.[path];
        return c && h('span', { class: `cap ${c}`, text: c === 'yes' ? name : `no ${name}` });
      })),
    h('div', { class: 'actions' },
      action('Edit', () => workerForm(w)),
      w.enabled === false
        ? action('Enable', async () => replaceWorker(await post(`${path}/enable`)))
        : action('Disable', async () => replaceWorker(await post(`${path}/disable`))),
      w.enabled !== false && (draining
        ? action('Undrain', async () => replaceWorker(await post(`${path}/undrain`)))
        : action('Drain', async () => replaceWorker(await post(`${path}/drain`)))),
      action('Set API key', () => keyForm(w)),
      action('Remove', async () => {
        if (!(await confirmDialog(`Remove ${w.id}?`, 'It finishes the requests it has and leaves the workers file.', 'Remove'))) return;
        await del(path);
        state.workers = state.workers.filter((x) => x.id !== w.id);
        emit('workers');
      }, 'danger')),
    errSlot);
}

// The models it has in memory, from its own API (see the Models view).
function loadedText(live) {
  if (!live?.inventory?.length) return null;
  const loaded = live.inventory.filter((m) => m.state === 'loaded').map((m) => m.name);
  return h('span', { class: 'loaded', text: loaded.length ? `loaded: ${loaded.join(', ')}` : 'nothing loaded' });
}

// What the user set, and what Baton learned the studio runs.
function slotsText(w, l) {
  const declared = w.max_concurrent_requests;
  if (l.slots == null) return declared === 'auto' ? 'slots: auto' : `${declared} slot(s)`;
  return slotsWords(declared, l);
}

export function mount(root, life) {
  const list = h('ul', { class: 'workers', 'aria-label': 'Configured studios' });
  const simNote = h('p', { class: 'hint', text: 'Simulated studios are in use; adding a real one creates your workers file.' });
  const render = () => {
    simNote.hidden = !state.config.simulated;
    fill(list, state.workers.length
      ? state.workers.map(workerRow)
      : h('li', { class: 'empty', text: 'No studios configured: discover them, or add one by hand.' }));
  };
  // Rows carry live status words; rebuild on state changes, not on stats.
  life.push(on('workers', render), on('state', render));
  render();
  const add = h('button', { type: 'button', text: 'Add studio', onclick: () => workerForm(null) });
  root.append(
    h('div', { class: 'row' }, h('h1', { class: 'grow', text: 'Studios' }), add),
    simNote,
    discoverPanel(life),
    h('section', { class: 'card', 'aria-label': 'Configured studios' }, h('h2', { text: 'Configured' }), list),
  );
}
