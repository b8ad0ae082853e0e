// The menu-bar popover: start/stop, endpoint, studios at a glance, a
// one-click preflight with its verdict inline, and the way to the dashboard.

import { act, errorBox, fill, h, lanDenied, localNetworkNote } from '../dom.js';
import { on, state } from '../state.js';
import { balancerControls } from './balancer.js';
import { discoverPanel } from './discover.js';
import { firstRunCard } from './firstrun.js';
import { headroomGauge, studioRows } from './live.js';
import { runPreflight, shownHosts, summaryLine } from './preflight.js';

function openDashboard() {
  // In the menu-bar app the window belongs to Tauri; in a browser a new tab
  // opened from here inherits this tab's session storage, so the token too.
  if (window.__TAURI__) window.__TAURI__.core.invoke('open_dashboard');
  else window.open('/', '_blank');
}

function preflightBlock(life) {
  const slot = h('div', { class: 'slot' });
  const run = h('button', { type: 'button', text: 'Run preflight' });
  run.addEventListener('click', () => act(run, slot, runPreflight));
  const line = h('p', { class: 'summary', role: 'status' });
  const failures = h('ul', { class: 'failures' });
  const lan = h('div');
  const render = () => {
    const j = state.jobs.preflight;
    const running = j?.status === 'running';
    run.disabled = running;
    const report = running ? null : j?.result || (j ? null : state.lastPreflight);
    fill(line, running ? 'Checking…' : report ? summaryLine(report) : h('span', { class: 'hint', text: 'Checks the network to every studio.' }));
    line.className = `summary ${report?.status === 'fail' ? 'bad' : report?.status === 'warn' ? 'wait' : report ? 'ok' : ''}`;
    // Only what needs attention: failed and warned checks with their fix.
    const bad = report ? shownHosts().flatMap((host) => host.checks.filter((c) => c.status === 'fail' || c.status === 'warn').map((c) => ({ host, c }))) : [];
    // macOS's Local Network denial fails every check alike: one note with
    // the way out, above the list.
    fill(lan, lanDenied(bad.map((b) => b.c)) && localNetworkNote(runPreflight));
    fill(failures, bad.map(({ host, c }) => h('li', { class: c.status === 'fail' ? 'bad' : 'wait' },
      h('b', { text: `${host.worker} ${c.name}: ` }), c.value,
      // The note above says what to do about the denial.
      c.remedy && !c.code && h('div', { class: 'fix', text: c.remedy }))));
    if (j?.error) fill(slot, errorBox(j.error, runPreflight));
  };
  life.push(on('job', (j) => j.kind === 'preflight' && render()), on('state', render));
  render();
  return h('section', { class: 'pop-preflight', 'aria-label': 'Preflight' }, h('div', { class: 'row' }, run, h('span', { class: 'grow' })), line, lan, failures, slot);
}

export function mount(root, life) {
  const first = h('div');
  const showFirst = () => {
    if (!state.config.first_run) return fill(first);
    if (first.childElementCount) return; // keep the discovery in progress
    const found = h('div');
    fill(first, firstRunCard({ onDiscover: () => fill(found, discoverPanel(life, { cidrField: false })) }), found);
  };
  life.push(on('state', showFirst), on('workers', showFirst));
  showFirst();
  root.append(
    first,
    balancerControls(life, { lan: false }),
    headroomGauge(life, { compact: true }),
    h('section', { class: 'pop-studios', 'aria-label': 'Studios' }, studioRows(life, { compact: true })),
    preflightBlock(life),
    h('div', { class: 'row end' }, h('button', { type: 'button', text: 'Open dashboard', onclick: openDashboard })),
  );
}
