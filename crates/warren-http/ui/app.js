// The single-page app: login, hash routing, polling.

import { credentials, setCredentials, clearCredentials, get, ApiError } from './api.js';
import { pages } from './pages.js';

const main = document.getElementById('main');
const nav = document.getElementById('nav');
let timer = null;

export function flash(text, error = false) {
  const box = document.getElementById('flash');
  const msg = document.createElement('div');
  msg.className = error ? 'msg err' : 'msg';
  msg.textContent = text;
  box.replaceChildren(msg);
  setTimeout(() => msg.remove(), 6000);
}

function showLogin(reason) {
  nav.hidden = true;
  document.getElementById('logout').hidden = true;
  document.getElementById('whoami').textContent = '';
  main.innerHTML = `<div class="login card"><h1>Log in</h1>
    <form id="login-form">
      <label>Username <input name="username" id="username" autocomplete="username" required></label>
      <label>Password <input name="password" id="password" type="password" autocomplete="current-password"></label>
      <button class="primary" type="submit">Log in</button>
      <p class="muted" id="login-error" role="alert"></p>
    </form></div>`;
  if (reason) document.getElementById('login-error').textContent = reason;
  document.getElementById('username').focus();
  document.getElementById('login-form').addEventListener('submit', async (e) => {
    e.preventDefault();
    const f = e.target;
    setCredentials(f.username.value, f.password.value);
    try {
      await get('/api/whoami');
      route();
    } catch (err) {
      clearCredentials();
      document.getElementById('login-error').textContent = err.status === 401 ? 'Login failed' : String(err.message);
    }
  });
}

// Each navigation renders into a view of its own, and only the latest one's view is in the
// page and may poll: a slower earlier page (the overview still loading when the user moves on)
// finishes into a detached view instead of over the current page.
let generation = 0;

async function route() {
  clearInterval(timer);
  timer = null;
  const mine = ++generation;
  const current = () => mine === generation;
  if (!credentials()) return showLogin();
  let me;
  try {
    me = await get('/api/whoami');
  } catch (err) {
    clearCredentials();
    return showLogin(err instanceof ApiError && err.status === 401 ? 'Please log in' : String(err.message));
  }
  nav.hidden = false;
  document.getElementById('logout').hidden = false;
  document.getElementById('whoami').textContent = `User: ${me.name}`;
  const hash = location.hash.replace(/^#\/?/, '') || 'overview';
  const [name, ...args] = hash.split('/').map(decodeURIComponent);
  const page = pages[name] || pages.overview;
  for (const a of nav.querySelectorAll('a')) {
    const active = a.getAttribute('href') === `#/${name}` ||
      (name === 'queue' && a.getAttribute('href') === '#/queues') ||
      (name === 'exchange' && a.getAttribute('href') === '#/exchanges');
    a.classList.toggle('active', active);
    if (active) a.setAttribute('aria-current', 'page'); else a.removeAttribute('aria-current');
  }
  if (!current()) return;
  const view = document.createElement('div');
  main.replaceChildren(view);
  const poll = (fn, ms) => {
    if (!current()) return;
    const id = setInterval(() => { if (current()) fn(); else clearInterval(id); }, ms);
    timer = id;
  };
  const ctx = { main: view, args, flash, poll, go: (h) => { location.hash = h; } };
  try {
    await page(ctx);
  } catch (err) {
    if (!current()) return;
    if (err instanceof ApiError && err.status === 401) { clearCredentials(); return showLogin('Please log in'); }
    view.innerHTML = '';
    const p = document.createElement('p');
    p.className = 'muted';
    p.textContent = `Could not load this page: ${err.message}`;
    view.append(p);
  }
}

document.getElementById('logout').addEventListener('click', () => { clearCredentials(); location.hash = ''; showLogin(); });
window.addEventListener('hashchange', route);
route();
