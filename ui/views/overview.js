// Overview: the balancer, the pool's figures now, and every studio live.

import { fill, h } from '../dom.js';
import { on, state } from '../state.js';
import { balancerControls } from './balancer.js';
import { firstRunCard } from './firstrun.js';
import { headroomGauge, poolFigures, studioRows } from './live.js';

export function mount(root, life) {
  const first = h('div');
  const showFirst = () => fill(first, state.config.first_run && firstRunCard({ onDiscover: () => { location.hash = 'view=studios'; } }));
  life.push(on('state', showFirst), on('workers', showFirst));
  showFirst();
  root.append(
    h('h1', { text: 'Overview' }),
    first,
    balancerControls(life),
    poolFigures(life),
    headroomGauge(life),
    h('section', { class: 'card', 'aria-label': 'Studios now' }, h('h2', { text: 'Studios' }), studioRows(life)),
  );
}
