// Boot: take the token, load the engine's state, open the event stream, and
// route between views by the `view` parameter of the URL fragment.

import { forgetToken, takeToken, whenUnauthorized } from './api.js';
import { errorBox, fill, h } from './dom.js';
import { connect } from './events.js';
import { applyEvent, emit, loadHistory, loadState, state } from './state.js';
import * as overview from './views/overview.js';
import * as studios from './views/studios.js';
import * as models from './views/models.js';
import * as preflight from './views/preflight.js';
import * as benchmarks from './views/benchmarks.js';
import * as batch from './views/batch.js';
import * as popover from './views/popover.js';

const VIEWS = { overview, studios, models, preflight, benchmarks, batch };
const NAMES = { overview: 'Overview', studios: 'Studios', models: 'Models', preflight: 'Preflight', benchmarks: 'Benchmarks', batch: 'Batch' };

const main = document.getElementById('main');
const nav = document.getElementById('nav');
const banner = document.getElementById('banner');
let life = [];
let current = null;

const viewName = () => new URLSearchParams(location.hash.slice(1)).get('view') || 'overview';

function route() {
  const name = viewName();
  const popoverMode = name === 'popover';
  document.body.classList.toggle('popover', popoverMode);
  const key = popoverMode ? 'popover' : VIEWS[name] ? name : 'overview';
  if (key === current) return;
  current = key;
  for (const off of life) off();
  life = [];
  fill(main);
  (popoverMode ? popover : VIEWS[key]).mount(main, life);
  document.title = popoverMode ? 'Baton' : `${NAMES[key]} — Baton`;
  for (const a of nav.querySelectorAll('a')) {
    if (a.dataset.view === key) a.setAttribute('aria-current', 'page');
    else a.removeAttribute('aria-current');
  }
  if (!popoverMode) main.focus({ preventScroll: true });
}

function buildNav() {
  fill(nav, Object.entries(NAMES).map(([k, t]) => h('a', { href: `#view=${k}`, 'data-view': k, text: t })));
}

// Without a token there is nothing to show but how to get one.
function noToken(reason) {
  document.body.classList.add('locked');
  fill(main, h('section', { class: 'card locked-card' },
    h('h1', { text: 'Open Baton’s dashboard from Baton' }),
    h('p', { text: reason }),
    h('p', {}, 'Run ', h('code', { text: 'baton dashboard' }), ' in Terminal: it opens this page with its access key (or prints the link to open), or use “Open dashboard” in Baton’s menu.')));
}

// The state is loaded each time the stream (re)opens, so nothing that
// happened while we were away is missed; events arriving meanwhile wait and
// are applied on top of it, in order.
let held = null;

function onEvent(ev) {
  if (held) held.push(ev);
  else applyEvent(ev);
}

async function opened() {
  banner.hidden = true;
  held = [];
  try {
    await loadState();
    if (!document.hidden) await loadHistory();
  } catch (err) {
    if (err.status === 401) return;
    if (!current) fill(main, errorBox(err));
  } finally {
    const events = held;
    held = null;
    for (const ev of events) applyEvent(ev);
  }
  if (state.balancer) route();
  emit('stats');
}

function boot() {
  buildNav();
  if (!takeToken()) return noToken('This page needs the access key that comes with its link.');
  const locked = (why) => {
    forgetToken();
    noToken(why);
  };
  whenUnauthorized(() => locked('The access key of this page is not valid any more (Baton may have been reinstalled).'));
  fill(main, h('p', { class: 'hint', text: 'Connecting to Baton…' }));
  addEventListener('hashchange', route);
  connect({
    onEvent,
    onStatus: (s) => {
      if (s === 'unauthorized') locked('The access key of this page is not valid any more.');
      else if (s === 'lost') banner.hidden = false;
      else opened();
    },
  });

  // Nothing to draw while hidden (state.js skips stats then); catch up on show.
  document.addEventListener('visibilitychange', () => {
    if (!document.hidden) loadHistory().then(() => emit('stats'), () => {});
  });
}

boot();
