// First run (no workers file yet): two ways to a working balancer.

import { post } from '../api.js';
import { act, h } from '../dom.js';
import { setBalancer } from './balancer.js';
import { startDiscovery } from './discover.js';
import { loadState } from '../state.js';

// `onDiscover` runs after discovery starts (the dashboard opens Studios; the
// popover shows the results in place).
export function firstRunCard({ onDiscover }) {
  const slot = h('div', { class: 'slot' });
  const discover = h('button', { type: 'button', class: 'primary', text: 'Discover studios' });
  discover.addEventListener('click', () => act(discover, slot, async () => {
    await startDiscovery();
    onDiscover();
  }));
  const sim = h('button', { type: 'button', text: 'Try with simulated studios' });
  sim.addEventListener('click', () => act(sim, slot, async () => {
    setBalancer(await post('/api/setup/simulated', { count: 3 }));
    // The pool and config changed under us: take the engine's whole view.
    await loadState();
  }));
  return h('section', { class: 'card first-run', 'aria-label': 'Get started' },
    h('h2', { text: 'Welcome to Baton' }),
    h('p', { text: 'Baton pools the Macs running LM Studio, Ollama, llama.cpp or MLX on your network into one OpenAI-compatible endpoint.' }),
    h('div', { class: 'row wrap' }, discover, sim),
    slot);
}
