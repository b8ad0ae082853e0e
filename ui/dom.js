// Building DOM without a framework: every string goes in as text, never as
// HTML, so names and messages from studios cannot inject markup.

export function h(tag, props, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(props || {})) {
    if (v == null || v === false) continue;
    if (k === 'class') el.className = v;
    else if (k === 'text') el.textContent = v;
    else if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else if (k in el && !k.includes('-')) el[k] = v;
    else el.setAttribute(k, v === true ? '' : v);
  }
  add(el, children);
  return el;
}

function add(el, children) {
  for (const c of children.flat(Infinity)) {
    if (c == null || c === false) continue;
    el.append(c instanceof Node ? c : String(c));
  }
}

// Replace an element's content.
export function fill(el, ...children) {
  el.replaceChildren();
  add(el, children);
  return el;
}

export const dot = (tone, label) => h('span', { class: `dot ${tone}`, role: 'img', 'aria-label': label, title: label });
export const badge = (tone, word) => h('span', { class: `badge ${tone}`, text: word });

// A labelled field: the label element wraps its text and control so every
// control has an accessible name without id bookkeeping.
export function field(label, control, hint) {
  return h('label', { class: 'field' }, h('span', { class: 'label', text: label }), control,
    hint && h('span', { class: 'hint', text: hint }));
}

const LOCAL_NETWORK = 'x-apple.systempreferences:com.apple.preference.security?Privacy_LocalNetwork';

// Where macOS denies Local Network access: say so, link to the setting
// (the app opens it in System Settings), and, given `retry`, try again once
// the user has allowed it. `detail` is what was blocked, when known.
export function localNetworkNote(retry, detail) {
  const again = retry && h('button', { type: 'button', text: 'Try again' });
  if (again) again.addEventListener('click', () => act(again, null, retry));
  return h('div', { class: 'lan-denied', role: 'alert' },
    h('p', { class: 'msg', text: 'macOS is blocking Baton from your local network' }),
    h('p', { text: 'Baton cannot reach the studios until you allow it in System Settings > Privacy & Security > Local Network. Then try again.' }),
    detail && h('p', { class: 'hint', text: detail }),
    h('div', { class: 'row wrap' },
      h('a', { class: 'button', href: LOCAL_NETWORK, text: 'Open Local Network settings' }),
      again));
}

const LAN_DENIED = 'local_network_denied';

// Whether any of these checks (or errors) is the Local Network denial.
export const lanDenied = (items) => items.some((x) => x?.code === LAN_DENIED);

// The engine's own error, shown where it happened: message, then the fix;
// the Local Network denial as its note instead, `retry` redoing what failed.
export function errorBox(err, retry) {
  if (!err) return null;
  if (err.code === LAN_DENIED) return localNetworkNote(retry, err.message);
  return h('div', { class: 'error', role: 'alert' },
    h('p', { class: 'msg', text: err.message || String(err) }),
    err.fix && h('p', { class: 'fix' }, h('b', { text: 'Fix: ' }), err.fix));
}

// Show (or clear, with null) an error in a slot element.
export const showError = (slot, err) => fill(slot, errorBox(err));

// Run an action from a button: disabled while it runs (no double submits),
// its error shown in `slot`.
export async function act(button, slot, fn) {
  button.disabled = true;
  if (slot) fill(slot);
  try {
    return await fn();
  } catch (err) {
    if (slot) showError(slot, err);
  } finally {
    button.disabled = false;
  }
}

// A modal dialog: <dialog> gives focus trapping and Escape for free.
export function modal(title, body, actions) {
  const d = h('dialog', { class: 'modal', 'aria-label': title },
    h('h2', { text: title }), body, h('div', { class: 'actions' }, actions));
  d.addEventListener('close', () => d.remove());
  document.body.append(d);
  d.showModal();
  return d;
}

// A confirmation in our own dialog (window.confirm is unreliable in webviews).
export function confirmDialog(title, message, actionLabel) {
  return new Promise((resolve) => {
    let ok = false;
    const d = modal(title, h('p', { text: message }), [
      h('button', { type: 'button', text: 'Cancel', onclick: () => d.close() }),
      h('button', { type: 'button', class: 'danger', text: actionLabel, onclick: () => { ok = true; d.close(); } }),
    ]);
    d.addEventListener('close', () => resolve(ok));
  });
}

// Copy text; the clipboard API needs a secure context (127.0.0.1 is one), the
// fallback covers webviews that refuse it.
export async function copyText(text) {
  try {
    await navigator.clipboard.writeText(text);
  } catch {
    const t = h('textarea', { value: text, 'aria-hidden': 'true', class: 'offscreen' });
    document.body.append(t);
    t.select();
    document.execCommand('copy');
    t.remove();
  }
}
