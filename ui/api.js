// The control API: the token, authenticated fetches, and the engine's errors
// as exceptions carrying its own message, fix, field and code.

const KEY = 'baton.token';

// The dashboard link carries the token in the fragment (never sent to a
// server). Keep it for this tab only and take it out of the address bar, so it
// does not end up in history, bookmarks or a screen share.
export function takeToken() {
  const params = new URLSearchParams(location.hash.slice(1));
  const fresh = params.get('token');
  if (fresh) {
    sessionStorage.setItem(KEY, fresh);
    params.delete('token');
    const rest = params.toString();
    history.replaceState(null, '', location.pathname + (rest ? `#${rest}` : ''));
  }
  return sessionStorage.getItem(KEY);
}

const token = () => sessionStorage.getItem(KEY);
export const forgetToken = () => sessionStorage.removeItem(KEY);
export const authHeader = () => ({ Authorization: `Bearer ${token()}` });

class ApiError extends Error {
  constructor(status, e = {}) {
    super(e.message || `Baton answered ${status}`);
    this.status = status;
    this.fix = e.fix;
    this.field = e.field;
    this.code = e.code;
  }
}

let onUnauthorized = () => {};
export const whenUnauthorized = (fn) => { onUnauthorized = fn; };

async function api(method, path, body) {
  const headers = authHeader();
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  let res;
  try {
    res = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body), cache: 'no-store' });
  } catch {
    throw new ApiError(0, { message: 'Cannot reach Baton.', fix: 'Is Baton still running? The page reconnects by itself when it is back.' });
  }
  if (res.status === 204) return null;
  const data = await res.json().catch(() => null);
  if (!res.ok) {
    const err = new ApiError(res.status, data?.error);
    if (res.status === 401) onUnauthorized(err);
    throw err;
  }
  return data;
}

export const get = (path) => api('GET', path);
export const post = (path, body) => api('POST', path, body ?? {});
export const put = (path, body) => api('PUT', path, body);
export const del = (path) => api('DELETE', path);
export const enc = encodeURIComponent;

// Save what an authenticated GET answers as a file (a plain link would not
// carry the token).
export async function download(path, filename) {
  const res = await fetch(path, { headers: authHeader() });
  if (!res.ok) {
    const e = await res.json().catch(() => ({}));
    throw new ApiError(res.status, e.error);
  }
  const url = URL.createObjectURL(await res.blob());
  const a = Object.assign(document.createElement('a'), { href: url, download: filename });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 60_000);
}
