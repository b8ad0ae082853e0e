// The balancer's controls, shared by the Overview and the popover: start and
// stop, the endpoint with its copy button, and (full view) LAN exposure.

import { post, put } from '../api.js';
import { act, copyText, fill, h, showError } from '../dom.js';
import { emit, on, state } from '../state.js';

export function setBalancer(b) {
  state.balancer = b;
  emit('balancer');
}

export const startBalancer = () => post('/api/balancer/start').then(setBalancer);

function endpointOf(b) {
  return b?.url || (b?.listen ? `http://${b.listen.replace(/^0\.0\.0\.0:/, '127.0.0.1:')}/v1` : '');
}

export function balancerControls(life, { lan = true } = {}) {
  const errSlot = h('div', { class: 'slot' });
  const status = h('span', { class: 'badge' });
  const toggle = h('button', { type: 'button', class: 'primary' });
  toggle.addEventListener('click', () => act(toggle, errSlot, async () => {
    setBalancer(await post(state.balancer?.running ? '/api/balancer/stop' : '/api/balancer/start'));
  }));

  const url = h('code', { class: 'url' });
  const copied = h('span', { class: 'copied', role: 'status' });
  const copy = h('button', {
    type: 'button', text: 'Copy', 'aria-label': 'Copy endpoint URL',
    onclick: async () => {
      await copyText(endpointOf(state.balancer));
      copied.textContent = 'Copied';
      setTimeout(() => { copied.textContent = ''; }, 1500);
    },
  });

  const lanSlot = h('div', { class: 'slot' });
  const lanBox = h('input', { type: 'checkbox', role: 'switch', class: 'switch' });
  const lanNote = h('span', { class: 'hint' });
  lanBox.addEventListener('change', () => act(lanBox, lanSlot, async () => {
    const port = (state.balancer?.listen || '').split(':').pop() || '8421';
    try {
      setBalancer(await put('/api/balancer/listen', { listen: `${lanBox.checked ? '0.0.0.0' : '127.0.0.1'}:${port}` }));
    } catch (err) {
      lanBox.checked = !lanBox.checked;
      throw err;
    }
  }));

  const el = h('section', { class: 'card balancer', 'aria-label': 'Balancer' },
    h('div', { class: 'row' }, h('h2', { text: 'Balancer' }), status, h('span', { class: 'grow' }), toggle),
    h('div', { class: 'endpoint' }, h('span', { class: 'label', text: 'Endpoint' }), url, copy, copied),
    errSlot,
    lan && h('div', { class: 'lan' },
      h('label', { class: 'switch-row' }, lanBox, h('span', { text: 'Expose on LAN' })), lanNote),
    lan && lanSlot);

  function render() {
    const b = state.balancer;
    if (!b) return;
    toggle.textContent = b.running ? 'Stop balancer' : 'Start balancer';
    toggle.classList.toggle('primary', !b.running);
    fill(status, b.running ? 'Running' : 'Stopped');
    status.className = `badge ${b.running ? 'ok' : 'off'}`;
    url.textContent = endpointOf(b);
    url.classList.toggle('dim', !b.running);
    lanBox.checked = !!b.lan_exposed;
    lanNote.textContent = b.lan_exposed
      ? `Listening on ${b.listen}: clients on your network need the API key.`
      : `Only this Mac can connect (${b.listen}).`;
    if (b.error) showError(errSlot, { message: b.error });
  }
  life.push(on('balancer', render), on('state', render));
  render();
  return el;
}
