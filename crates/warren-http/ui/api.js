// The management API over fetch, with basic auth from sessionStorage (as RabbitMQ's UI keeps it).

const KEY = 'warren.auth';

export function credentials() {
  return sessionStorage.getItem(KEY);
}

export function setCredentials(user, password) {
  sessionStorage.setItem(KEY, btoa(unescape(encodeURIComponent(`${user}:${password}`))));
}

export function clearCredentials() {
  sessionStorage.removeItem(KEY);
}

export class ApiError extends Error {
  constructor(status, reason) {
    super(reason || `HTTP ${status}`);
    this.status = status;
  }
}

/** Calls the API; answers the parsed JSON (or null for an empty body). */
export async function api(method, path, body) {
  const headers = { Authorization: `Basic ${credentials()}`, 'X-Requested-With': 'XMLHttpRequest' };
  const init = { method, headers };
  if (body !== undefined) {
    headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  const res = await fetch(path, init);
  const text = await res.text();
  let doc = null;
  if (text) {
    try { doc = JSON.parse(text); } catch { doc = text; }
  }
  if (!res.ok) {
    throw new ApiError(res.status, (doc && (doc.reason || doc.error)) || res.statusText);
  }
  return doc;
}

export const get = (path) => api('GET', path);

/** A path segment: vhosts and names are percent-encoded ("/" becomes %2F). */
export const enc = (s) => encodeURIComponent(s);
