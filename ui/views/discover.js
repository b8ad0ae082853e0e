// Finding studios on the LAN: scan (optionally a CIDR), list what answers
// like an LLM server as it is found, add one or all to the workers file.

import { post } from '../api.js';
import { act, errorBox, fill, h, localNetworkNote } from '../dom.js';
import { kindName, ms } from '../format.js';
import { loadState, on, state, trackJob } from '../state.js';
import { startBalancer } from './balancer.js';

export async function startDiscovery(cidr) {
  const body = cidr ? { cidrs: cidr.split(/[\s,]+/).filter(Boolean) } : {};
  trackJob('discover', (await post('/api/discover', body)).job);
}

// Adding writes the workers file, which ends first run and simulated studios:
// take the engine's whole state again.
async function addServers(servers) {
  const r = await post('/api/discover/add', { servers });
  await loadState();
  return r.added.length;
}

const key = (f) => `${f.host}:${f.port}`;
const shownFound = () => state.jobs.discover?.result?.found || state.jobs.discover?.found || [];
const configured = (f) => state.workers.some((w) => `${w.host}:${w.port}` === key(f));

export function discoverPanel(life, { cidrField = true } = {}) {
  const errSlot = h('div', { class: 'slot' });
  const cidr = h('input', { type: 'text', name: 'cidr', placeholder: 'e.g. 192.168.1.0/24', spellcheck: false, autocomplete: 'off' });
  const run = h('button', { type: 'submit', class: 'primary', text: 'Discover' });
  const form = h('form', { class: 'row discover-form' },
    cidrField && h('label', { class: 'field inline' }, h('span', { class: 'label', text: 'CIDR (optional)' }), cidr),
    run);
  form.addEventListener('submit', (e) => {
    e.preventDefault();
    act(run, errSlot, () => startDiscovery(cidr.value.trim()));
  });

  const progress = h('p', { class: 'progress', role: 'status' });
  const lan = h('div');
  const again = () => startDiscovery(cidr.value.trim());
  const found = h('ul', { class: 'found', 'aria-label': 'Found servers' });
  const after = h('div', { class: 'slot' });
  const addAll = h('button', { type: 'button', text: 'Add all' });
  addAll.addEventListener('click', () => act(addAll, after, async () => {
    offerStart(await addServers(shownFound().filter((f) => !configured(f))));
  }));

  // After adding, the next click is starting the balancer.
  let added = 0;
  function offerStart(n = added) {
    added = n;
    const start = h('button', { type: 'button', class: 'primary', text: 'Start balancer' });
    start.addEventListener('click', () => act(start, after, startBalancer));
    fill(after, h('div', { class: 'row' }, h('span', { class: 'grow', role: 'status', text: `Added ${n} studio(s).` }),
      !state.balancer?.running && start));
  }

  function render() {
    const j = state.jobs.discover;
    run.disabled = j?.status === 'running';
    addAll.hidden = true;
    fill(lan);
    if (!j) return fill(progress, 'Scans this Mac’s networks (or the CIDR you give) for LM Studio, Ollama, llama.cpp, MLX, vLLM and exo.');
    const p = j.progress;
    const r = j.result;
    if (j.status === 'running') {
      fill(progress, `Scanning… ${p ? `${p.done}${p.total ? ` of ${p.total}` : ''} probed, ` : ''}${j.found.length} found`);
    } else if (r) {
      fill(progress, `Scanned ${r.addresses} address(es) in ${ms(r.duration_ms)}: ${r.found.length} LLM server(s).`,
        !r.found.length && !r.code && h('span', { class: 'hint', text: ' Is each studio’s server running and serving on the local network (LM Studio: Developer > Serve on Local Network)?' }));
      // Some hosts answered, but macOS blocked the rest.
      if (r.code === 'local_network_denied') fill(lan, localNetworkNote(again));
    } else fill(progress, j.status === 'cancelled' ? 'Discovery cancelled.' : '');
    fill(errSlot, errorBox(j.error, again));
    const list = shownFound();
    fill(found, list.map((f) => {
      const done = configured(f);
      const add = h('button', { type: 'button', text: done ? 'Added' : 'Add', disabled: done, 'aria-label': done ? `${key(f)} added` : `Add ${key(f)}` });
      add.addEventListener('click', () => act(add, after, async () => offerStart(added + await addServers([f]))));
      return h('li', { class: 'server' },
        h('span', { class: 'addr', text: key(f) }),
        h('span', { class: 'kind', text: kindName(f.kind) }),
        h('span', { class: 'models', text: f.models.join(', ') || 'no models listed', title: f.models.join(', ') }),
        h('span', { class: 'rtt', text: ms(f.rtt_ms) }),
        add);
    }));
    addAll.hidden = !list.some((f) => !configured(f));
  }

  const onJob = (j) => { if (j.kind === 'discover') render(); };
  life.push(on('job', onJob), on('workers', render), on('state', render), on('balancer', () => added && offerStart()));
  render();
  return h('section', { class: 'card discover', 'aria-label': 'Discover studios' },
    h('h2', { text: 'Discover' }), form, errSlot, progress, lan, found,
    h('div', { class: 'row end' }, addAll), after);
}
