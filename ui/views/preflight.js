// Preflight: every network check for every studio, appearing as the checks
// finish, each with its verdict, measured value, detail and fix.

import { get, post } from '../api.js';
import { act, badge, errorBox, fill, h, lanDenied, localNetworkNote } from '../dom.js';
import { checkStatus, ms } from '../format.js';
import { on, state, trackJob } from '../state.js';

const ORDER = ['pass', 'skip', 'warn', 'fail'];
const worst = (list) => list.reduce((a, s) => (ORDER.indexOf(s) > ORDER.indexOf(a) ? s : a), 'pass');

export async function runPreflight() {
  trackJob('preflight', (await post('/api/preflight')).job);
}

// Hosts to show: the finished report, or the live checks of a running job
// grouped per host, or the last report.
export function shownHosts() {
  const j = state.jobs.preflight;
  if (j && j.status === 'running') {
    const hosts = new Map();
    for (const c of j.checks) {
      const k = `${c.worker} ${c.host}`;
      if (!hosts.has(k)) hosts.set(k, { worker: c.worker, host: c.host, checks: [] });
      hosts.get(k).checks.push(c.check);
    }
    return [...hosts.values()].map((x) => ({ ...x, status: worst(x.checks.map((c) => c.status)) }));
  }
  return (j?.result || state.lastPreflight)?.hosts || [];
}

export function summaryLine(report) {
  const verdict = { pass: 'all checks passed', warn: 'warnings', fail: 'FAILED', skip: 'skipped' }[report.status] || report.status;
  return `Preflight of ${report.hosts.length} studio(s) in ${ms(report.duration_ms)}: ${verdict}`;
}

function checkItem(c) {
  const s = checkStatus(c.status);
  return h('li', { class: `check ${s.tone}` },
    badge(s.tone, s.word),
    h('span', { class: 'name', text: c.name }),
    h('span', { class: 'value', text: c.value }),
    (c.detail || (c.remedy && !c.code)) && h('div', { class: 'more' },
      c.detail && h('p', { class: 'detail', text: c.detail }),
      // The note above the hosts says what to do about the denial.
      c.remedy && !c.code && h('p', { class: 'fix' }, h('b', { text: 'Fix: ' }), c.remedy)));
}

function hostCard(host) {
  const s = checkStatus(host.status);
  return h('section', { class: `card host ${s.tone}`, 'aria-label': `${host.worker} ${host.host}` },
    h('div', { class: 'row' },
      h('h3', { class: 'grow' }, host.worker, h('span', { class: 'addr', text: ` ${host.host}${host.port ? `:${host.port}` : ''}` })),
      badge(s.tone, s.word)),
    h('ul', { class: 'checks' }, host.checks.map(checkItem)));
}

export function mount(root, life) {
  const errSlot = h('div', { class: 'slot' });
  const run = h('button', { type: 'button', class: 'primary', text: 'Run preflight' });
  run.addEventListener('click', () => act(run, errSlot, runPreflight));
  const summary = h('p', { class: 'summary', role: 'status' });
  const hosts = h('div', { class: 'hosts' });
  const lan = h('div');

  function render() {
    const j = state.jobs.preflight;
    const running = j?.status === 'running';
    run.disabled = running;
    const report = running ? null : j?.result || state.lastPreflight;
    fill(summary, running ? 'Checking…' : report ? summaryLine(report) : 'No preflight yet: run one to check the network to every studio.');
    summary.className = `summary ${report ? checkStatus(report.status).tone : ''}`;
    if (j?.error) fill(errSlot, errorBox(j.error, runPreflight));
    const shown = shownHosts();
    // One note for macOS's Local Network denial, above the hosts it fails.
    fill(lan, lanDenied(shown.flatMap((x) => x.checks)) && localNetworkNote(runPreflight));
    fill(hosts, shown.map(hostCard));
  }
  life.push(on('job', (j) => j.kind === 'preflight' && render()), on('state', render));
  render();
  // The last report may be newer than what the page loaded with.
  if (state.jobs.preflight?.status !== 'running') {
    get('/api/preflight/last').then((r) => { state.lastPreflight = r; render(); }, (err) => { if (err.status !== 404) fill(errSlot, errorBox(err)); });
  }
  root.append(
    h('div', { class: 'row' }, h('h1', { class: 'grow', text: 'Preflight' }), run),
    h('p', { class: 'hint', text: 'Ping, port, server, model, a one-token completion and the subnet, for every enabled studio at once.' }),
    errSlot, summary, lan, hosts);
}
