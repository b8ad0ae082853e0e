// The engine's event stream. EventSource cannot send the Authorization
// header, so this reads `GET /api/events` with fetch and parses SSE itself,
// reconnecting with backoff and Last-Event-ID.
//
// A hidden page (the app's closed popover, a background tab) holds no
// stream: the engine samples live figures only while a view is open. Shown
// again, the page resumes from Last-Event-ID.

import { authHeader } from './api.js';

const MIN_DELAY = 500;
const MAX_DELAY = 10000;
// The engine sends a keep-alive every 15 s: silence much longer than that
// means the connection is dead even if the socket has not said so (sleep,
// network change).
const SILENCE_MS = 40000;

// onEvent({id, type, data}); onStatus('open' | 'lost' | 'unauthorized').
export function connect({ onEvent, onStatus }) {
  let lastId = null;
  let delay = MIN_DELAY;
  let current = null;

  document.addEventListener('visibilitychange', () => {
    if (document.hidden && current) current.abort();
  });
  const visible = () => new Promise((resolve) => {
    if (!document.hidden) return resolve();
    const on = () => {
      if (document.hidden) return;
      document.removeEventListener('visibilitychange', on);
      resolve();
    };
    document.addEventListener('visibilitychange', on);
  });

  async function once() {
    const ctrl = new AbortController();
    current = ctrl;
    let watchdog;
    const arm = () => { clearTimeout(watchdog); watchdog = setTimeout(() => ctrl.abort(), SILENCE_MS); };
    try {
      const headers = { ...authHeader(), Accept: 'text/event-stream' };
      if (lastId != null) headers['Last-Event-ID'] = lastId;
      arm();
      const res = await fetch('/api/events', { headers, cache: 'no-store', signal: ctrl.signal });
      if (res.status === 401) return 'unauthorized';
      if (!res.ok || !res.body) return 'lost';
      onStatus('open');
      delay = MIN_DELAY;
      const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
      let buf = '';
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        arm();
        buf += value.replace(/\r\n?/g, '\n');
        let end;
        while ((end = buf.indexOf('\n\n')) >= 0) {
          dispatch(buf.slice(0, end));
          buf = buf.slice(end + 2);
        }
      }
    } catch {
      // Network error or watchdog abort: reconnect below.
    } finally {
      clearTimeout(watchdog);
      current = null;
    }
    return 'lost';
  }

  function dispatch(block) {
    let id = null;
    let type = 'message';
    const data = [];
    for (const line of block.split('\n')) {
      if (!line || line.startsWith(':')) continue;
      const i = line.indexOf(':');
      const name = i < 0 ? line : line.slice(0, i);
      const value = i < 0 ? '' : line.slice(i + 1).replace(/^ /, '');
      if (name === 'id') id = value;
      else if (name === 'event') type = value;
      else if (name === 'data') data.push(value);
    }
    if (id != null) lastId = id;
    if (!data.length) return;
    let parsed;
    try {
      parsed = JSON.parse(data.join('\n'));
    } catch {
      return;
    }
    onEvent({ id, type, data: parsed });
  }

  (async () => {
    for (;;) {
      await visible();
      const outcome = await once();
      if (outcome === 'lost' && document.hidden) {
        // Closed for being hidden, not lost: reconnect when shown.
        delay = MIN_DELAY;
        continue;
      }
      onStatus(outcome);
      if (outcome === 'unauthorized') return;
      await new Promise((r) => setTimeout(r, delay * (0.75 + Math.random() / 2)));
      delay = Math.min(delay * 2, MAX_DELAY);
    }
  })();
}
