// Models: what each model of the pool is loaded on, where it is only
// available, its context length; load and unload through the studios' own
// APIs, and "Warm up the pool". Each action runs as a job; its error (with
// the fix) shows next to the model.

import { enc, get, post } from '../api.js';
import { act, badge, errorBox, fill, h } from '../dom.js';
import { int, kindName, ms } from '../format.js';
import { on, state, trackJob } from '../state.js';

const GB = 1024 ** 3;
const size = (b) => (b ? `${(b / GB).toFixed(1)} GB` : null);

// Wait for a job to end; its record.
async function finished(id) {
  for (;;) {
    const j = await get(`/api/jobs/${id}`);
    if (j.status !== 'running') return j;
    await new Promise((r) => setTimeout(r, 300));
  }
}

// Run a model job from a button; the job's error (not just the request's)
// lands in `slot`, and the view refreshes after.
function runner(slot, refresh) {
  return (button, path, body) => act(button, slot, async () => {
    const { job } = await post(path, body);
    trackJob('models', job);
    const j = await finished(job);
    await refresh();
    if (j.status === 'failed') fill(slot, errorBox(j.error));
    else {
      const bad = (j.result?.steps || []).filter((s) => !s.ok);
      fill(slot, bad.length ? errorBox({ message: bad.map((s) => s.error).join('\n') }) : null);
    }
  });
}

function modelRow(m, studios, run) {
  const slot = h('div', { class: 'slot' });
  const go = run(slot);
  const studio = (id) => studios.find((s) => s.id === id) || {};
  const button = (label, id, action) => {
    const b = h('button', { type: 'button', text: label, 'aria-label': `${label} ${m.name} on ${id}` });
    b.addEventListener('click', () => go(b, `/api/models/${enc(m.name)}/${action}`, { studio: id }));
    return b;
  };
  const place = (id, loaded) => {
    const s = studio(id);
    const info = (s.models || []).find((x) => x.name === m.name) || {};
    return h('li', { class: `place ${loaded ? 'loaded' : 'cold'}` },
      h('span', { class: 'id', text: id }),
      loaded && info.expires_at && h('span', { class: 'hint', text: `until ${new Date(info.expires_at).toLocaleTimeString()}` }),
      !loaded && info.load_ms != null && h('span', { class: 'hint', text: `loads in ${ms(info.load_ms)}` }),
      s.can_load
        ? button(loaded ? 'Unload' : 'Load', id, loaded ? 'unload' : 'load')
        : h('span', { class: 'hint', title: s.cannot_load, text: 'no load API' }));
  };
  const warmable = m.available_on.some((id) => studio(id).can_load);
  const warm = warmable && h('button', { type: 'button', text: 'Warm up the pool', 'aria-label': `Warm up the pool with ${m.name}` });
  if (warm) warm.addEventListener('click', () => go(warm, `/api/models/${enc(m.name)}/warm`, {}));
  return h('li', { class: 'pool-model' },
    h('div', { class: 'who' },
      h('span', { class: 'name', text: m.name }),
      m.loaded_on.length ? badge('ok', `loaded on ${m.loaded_on.length}`) : badge('off', 'cold')),
    h('div', { class: 'meta' },
      m.context_length && h('span', { text: `context ${int(m.context_length)}` }),
      size(m.size_bytes) && h('span', { text: size(m.size_bytes) }),
      m.served_by.length > 0 && h('span', { text: `served by ${m.served_by.join(', ')} (load state unknown)` })),
    h('div', { class: 'actions' }, warm),
    h('ul', { class: 'places', 'aria-label': `Where ${m.name} is` },
      m.loaded_on.map((id) => place(id, true)),
      m.available_on.map((id) => place(id, false))),
    slot);
}

function studioRow(s) {
  const loaded = s.models.filter((m) => m.state === 'loaded').map((m) => m.name);
  return h('li', { class: 'studio-models' },
    h('span', { class: 'id', text: s.id }),
    h('span', { class: 'hint', text: kindName(s.kind) }),
    h('span', { class: 'loaded', text: !s.models.length ? 'has not listed its models' : loaded.length ? loaded.join(', ') : 'nothing loaded' }),
    !s.can_load && h('span', { class: 'hint', text: s.cannot_load }));
}

export function mount(root, life) {
  const list = h('ul', { class: 'pool-models', 'aria-label': 'Models' });
  const perStudio = h('ul', { class: 'studio-list', 'aria-label': 'Loaded per studio' });
  const errSlot = h('div', { class: 'slot' });
  let gone = false;
  life.push(() => { gone = true; });
  // Refreshes overlap (a timer, events, a finished job): only the newest
  // answer is drawn, so an older one never puts back what just changed.
  let asked = 0;
  const refresh = async () => {
    const mine = ++asked;
    const v = await get('/api/models');
    if (gone || mine !== asked) return;
    const run = (slot) => runner(slot, refresh);
    fill(list, v.models.length
      ? v.models.map((m) => modelRow(m, v.studios, run))
      : h('li', { class: 'empty', text: state.balancer?.running ? 'No studio has listed its models yet.' : 'Start the balancer to see what each studio has loaded.' }));
    fill(perStudio, v.studios.map(studioRow));
  };
  const load = () => act(refreshButton, errSlot, refresh);
  const refreshButton = h('button', { type: 'button', text: 'Refresh', onclick: load });
  // The studios' inventories change on their own (Ollama unloads idle
  // models): look again now and then while the view is open.
  const timer = setInterval(() => { if (!document.hidden) refresh().catch(() => {}); }, 5000);
  life.push(() => clearInterval(timer), on('balancer', load), on('workers', load));
  root.append(
    h('div', { class: 'row' }, h('h1', { class: 'grow', text: 'Models' }), refreshButton),
    h('p', { class: 'hint', text: 'Requests go to a studio that has their model loaded; one that would load it first takes them only when the wait for a warm one is longer than the load.' }),
    errSlot,
    h('section', { class: 'card', 'aria-label': 'Models of the pool' }, h('h2', { text: 'Models' }), list),
    h('section', { class: 'card', 'aria-label': 'Loaded per studio' }, h('h2', { text: 'Per studio' }), perStudio),
  );
  load();
}
