// End-to-end tests of the web UI: Debian's Chromium driven by playwright-core against a real
// Warren (started by run.sh, which passes WARREN_HTTP and WARREN_AMQP).

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { spawn } from 'node:child_process';
import { chromium } from 'playwright-core';
import { connect } from '../amqp.js';

const HTTP = process.env.WARREN_HTTP;
const AMQP_PORT = Number(process.env.WARREN_AMQP_PORT);
const BASE = `http://${HTTP}`;
const SHOTS = process.env.UI_SCREENSHOTS || '';
const AUTH = `Basic ${Buffer.from('guest:guest').toString('base64')}`;
const TIMEOUT = 10_000;

let context;
let page;
let profile;

async function call(method, p, body) {
  const res = await fetch(BASE + p, {
    method,
    headers: { Authorization: AUTH, 'Content-Type': 'application/json' },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await res.text();
  return { status: res.status, body: text ? JSON.parse(text) : null };
}

async function shot(name) {
  if (!SHOTS) return;
  fs.mkdirSync(SHOTS, { recursive: true });
  await page.screenshot({ path: path.join(SHOTS, `${name}.png`) });
}

/** Goes to a page of the app and waits for its heading. */
async function open(hash, heading) {
  await page.evaluate((h) => { location.hash = h; }, hash);
  await page.getByRole('heading', { level: 1, name: heading }).waitFor({ timeout: TIMEOUT });
}

before(async () => {
  profile = fs.mkdtempSync(path.join(os.tmpdir(), 'warren-ui-chromium-'));
  context = await chromium.launchPersistentContext(profile, {
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    headless: true,
    viewport: { width: 1200, height: 760 },
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
      '--disable-component-update', '--disable-sync'],
  });
  page = context.pages()[0] || (await context.newPage());
  page.on('dialog', (d) => d.accept());
  page.setDefaultTimeout(TIMEOUT);
});

after(async () => {
  await context?.close();
  if (profile) fs.rmSync(profile, { recursive: true, force: true });
});

test('static files are served without auth, the API needs it', async () => {
  const index = await fetch(`${BASE}/`);
  assert.equal(index.status, 200);
  assert.match(index.headers.get('content-type'), /text\/html/);
  const js = await fetch(`${BASE}/ui/app.js`);
  assert.equal(js.status, 200);
  assert.match(js.headers.get('content-type'), /javascript/);
  assert.equal((await fetch(`${BASE}/ui/nope.js`)).status, 404);
  assert.equal((await fetch(`${BASE}/api/overview`)).status, 401);
});

test('login: a wrong password is refused, guest/guest logs in', async () => {
  await page.goto(`${BASE}/`);
  await page.getByLabel('Username').fill('guest');
  await page.getByLabel('Password').fill('wrong');
  await page.getByRole('button', { name: 'Log in' }).click();
  await page.getByText('Login failed').waitFor();
  await shot('login');
  await page.getByLabel('Password').fill('guest');
  await page.getByRole('button', { name: 'Log in' }).click();
  await page.getByRole('heading', { name: 'Overview' }).waitFor();
  assert.equal(await page.locator('#whoami').textContent(), 'User: guest');
});

test('overview shows totals as numbers and plots rates', async () => {
  await call('PUT', '/api/queues/%2F/ui-overview', { durable: true });
  await page.reload();
  await page.getByRole('heading', { name: 'Overview' }).waitFor();
  const queues = await page.locator('[data-total="Queues"] .n').textContent();
  assert.match(queues, /^\d[\d,]*$/);
  assert.ok(Number(queues.replace(/,/g, '')) >= 1);
  assert.match(await page.locator('[data-total="Connections"] .n').textContent(), /^\d+$/);
  assert.ok((await page.locator('#rates-chart path').count()) >= 1, 'the rates chart draws its series');
  // The cluster's nodes with their state: a node on its own lists itself, running.
  const { node, cluster_name: clusterName } = (await call('GET', '/api/overview')).body;
  const row = page.locator(`#nodes-table tr[data-node="${node}"]`);
  await row.waitFor();
  assert.equal(await row.locator('td').nth(1).textContent(), 'running');
  assert.equal(await page.locator('#nodes-table tbody tr').count(), 1);
  assert.equal(await page.locator('#cluster-name').textContent(), `Cluster name: ${clusterName}`);
  await shot('overview');
});

test('queues: a queue declared through the API is listed, sorted and filtered', async () => {
  for (const q of ['ui-test-b', 'ui-test-a', 'ui-test-c']) {
    assert.equal((await call('PUT', `/api/queues/%2F/${q}`, { durable: true })).status, 201);
  }
  await open('#/queues', 'Queues');
  const table = page.locator('#queues-table');
  await table.getByRole('link', { name: 'ui-test-a' }).waitFor();
  await page.getByLabel('Filter').fill('ui-test-');
  await page.locator('.count').getByText('3 of').waitFor();
  const names = async () => table.locator('tbody tr td:first-child').allTextContents();
  assert.deepEqual(await names(), ['ui-test-a', 'ui-test-b', 'ui-test-c']);
  await table.getByRole('button', { name: 'Name' }).click();
  assert.equal(await table.locator('th[data-key="name"]').getAttribute('aria-sort'), 'descending');
  assert.deepEqual(await names(), ['ui-test-c', 'ui-test-b', 'ui-test-a']);
  await page.getByLabel('Filter').fill('test-b$');
  assert.deepEqual(await names(), ['ui-test-b']);
  await page.getByLabel('Filter').fill('');
  await shot('queues');
});

test('queue page: publish a message, get it back, purge', async () => {
  await open('#/queues', 'Queues');
  await page.getByLabel('Filter').fill('ui-test-a');
  await page.locator('#queues-table').getByRole('link', { name: 'ui-test-a' }).click();
  await page.getByRole('heading', { name: 'Queue ui-test-a' }).waitFor();
  await page.locator('#publish-payload').fill('hello from the UI');
  await page.getByRole('button', { name: 'Publish message' }).click();
  await page.getByText('Message published.').waitFor();
  await page.locator('#q-ready').getByText('1', { exact: true }).waitFor();
  assert.equal((await call('GET', '/api/queues/%2F/ui-test-a')).body.messages_ready, 1);
  await page.getByLabel('Ack mode').selectOption('ack_requeue_true');
  await page.getByRole('button', { name: 'Get messages' }).click();
  await page.locator('#messages pre.payload').getByText('hello from the UI').waitFor();
  assert.match(await page.locator('#messages').textContent(), /Routing key\s*ui-test-a/);
  // Requeued: still there, and now a second get shows it as redelivered.
  assert.equal((await call('GET', '/api/queues/%2F/ui-test-a')).body.messages_ready, 1);
  await shot('queue');
  await page.getByRole('button', { name: 'Purge messages' }).click();
  await page.getByText('Queue purged').waitFor();
  await page.locator('#q-ready').getByText('0', { exact: true }).waitFor();
  assert.equal((await call('GET', '/api/queues/%2F/ui-test-a')).body.messages, 0);
  await page.getByRole('button', { name: 'Get messages' }).click();
  await page.getByText('Queue is empty.').waitFor();
});

test('queue page: delete the queue', async () => {
  await open('#/queue/%2F/ui-test-c', 'Queue ui-test-c');
  await page.getByRole('button', { name: 'Delete queue' }).click();
  await page.getByRole('heading', { name: 'Queues', exact: true }).waitFor();
  assert.equal((await call('GET', '/api/queues/%2F/ui-test-c')).status, 404);
});

test('exchanges: list, bind a queue and publish through the exchange', async () => {
  await open('#/exchanges', 'Exchanges');
  await page.locator('#exchanges-table').getByRole('link', { name: 'amq.direct' }).waitFor();
  await page.getByLabel('Name', { exact: true }).fill('ui-ex');
  await page.getByRole('button', { name: 'Add exchange' }).click();
  await page.getByText('Exchange ui-ex declared').waitFor();
  await shot('exchanges');
  await page.locator('#exchanges-table').getByRole('link', { name: 'ui-ex' }).click();
  await page.getByRole('heading', { name: 'Exchange ui-ex' }).waitFor();
  await page.getByLabel('Destination').fill('ui-test-b');
  await page.locator('#b-rk').fill('rk');
  await page.getByRole('button', { name: 'Bind' }).click();
  await page.locator('#bindings-table').getByRole('link', { name: 'ui-test-b' }).waitFor();
  await page.locator('#publish-rk').fill('rk');
  await page.locator('#publish-payload').fill('via exchange');
  await page.getByRole('button', { name: 'Publish message' }).click();
  await page.getByText('Message published.').waitFor();
  assert.equal((await call('GET', '/api/queues/%2F/ui-test-b')).body.messages_ready, 1);
  await page.locator('#publish-rk').fill('nowhere');
  await page.getByRole('button', { name: 'Publish message' }).click();
  await page.getByText('but not routed').waitFor();
});

test('connections and channels list a live AMQP connection, which can be closed', async () => {
  const conn = await connect({ port: AMQP_PORT, product: 'ui-tests-client' });
  const closed = new Promise((resolve) => conn.socket.on('close', resolve));
  try {
    await open('#/connections', 'Connections');
    const row = page.locator('#connections-table tbody tr', { hasText: 'ui-tests-client' });
    await row.waitFor();
    assert.match(await row.textContent(), /guest/);
    await shot('connections');
    await open('#/channels', 'Channels');
    await page.locator('#channels-table tbody tr', { hasText: '(1)' }).first().waitFor();
    await shot('channels');
    await open('#/connections', 'Connections');
    await row.getByRole('button', { name: 'Close' }).click();
    await closed;
    await page.getByText('Closed').waitFor();
  } finally {
    conn.close();
  }
});

test('admin: users, virtual hosts and permissions (list, add, delete)', async () => {
  await open('#/vhosts', 'Virtual hosts');
  await page.locator('#vhosts-table').getByRole('cell', { name: '/', exact: true }).waitFor();
  await page.getByLabel('Name', { exact: true }).fill('ui-vhost');
  await page.getByRole('button', { name: 'Add virtual host' }).click();
  await page.locator('#vhosts-table').getByRole('cell', { name: 'ui-vhost', exact: true }).waitFor();
  // A vhost limit set in the form is in force (the API shows it) and shown in the table.
  await page.locator('#l-vhost').selectOption('ui-vhost');
  await page.getByLabel('Limit').selectOption('max-queues');
  await page.getByLabel('Value').fill('5');
  await page.getByRole('button', { name: 'Set limit' }).click();
  const vhostRow = page.locator('#vhosts-table tbody tr', { hasText: 'ui-vhost' });
  await vhostRow.locator('td', { hasText: /^5$/ }).waitFor();
  assert.deepEqual((await call('GET', '/api/vhost-limits/ui-vhost')).body, [{ vhost: 'ui-vhost', value: { 'max-queues': 5 } }]);
  await shot('vhosts');

  await open('#/users', 'Users');
  await page.locator('#users-table').getByRole('cell', { name: 'guest', exact: true }).waitFor();
  await page.getByLabel('Username').fill('ui-user');
  await page.getByLabel('Password').fill('secret');
  await page.getByLabel('Tags').fill('management');
  await page.getByRole('button', { name: 'Add user' }).click();
  const userRow = page.locator('#users-table tbody tr', { hasText: 'ui-user' });
  await userRow.waitFor();
  assert.match(await userRow.textContent(), /management/);
  // A user limit set in the form is in force (the API shows it) and shown in the table.
  await page.getByLabel('User', { exact: true }).fill('ui-user');
  await page.locator('#ul-name').selectOption('max-channels');
  await page.locator('#ul-value').fill('7');
  await page.getByRole('button', { name: 'Set user limit' }).click();
  await userRow.locator('td', { hasText: /^7$/ }).waitFor();
  assert.deepEqual((await call('GET', '/api/user-limits/ui-user')).body, [{ user: 'ui-user', value: { 'max-channels': 7 } }]);
  await shot('users');

  await open('#/permissions', 'Permissions');
  await page.getByLabel('User', { exact: true }).fill('ui-user');
  await page.getByLabel('Virtual host').selectOption('ui-vhost');
  await page.getByLabel('Read regexp').fill('^ui-');
  await page.getByRole('button', { name: 'Set permission' }).click();
  const permRow = page.locator('#permissions-table tbody tr', { hasText: 'ui-user' });
  await permRow.waitFor();
  assert.match(await permRow.textContent(), /ui-vhost/);
  assert.match(await permRow.textContent(), /\^ui-/);
  await shot('permissions');
  await permRow.getByRole('button', { name: 'Clear' }).click();
  await permRow.waitFor({ state: 'detached' });

  await open('#/users', 'Users');
  await userRow.getByRole('button', { name: 'Delete' }).click();
  await userRow.waitFor({ state: 'detached' });
  await open('#/vhosts', 'Virtual hosts');
  await page.locator('#vhosts-table tbody tr', { hasText: 'ui-vhost' }).getByRole('button', { name: 'Delete' }).click();
  await page.locator('#vhosts-table').getByRole('cell', { name: 'ui-vhost', exact: true }).waitFor({ state: 'detached' });
});

/** Starts another warren with this config; resolves to {addr, stop}. */
async function startBroker(config) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'warren-ui-broker-'));
  fs.writeFileSync(path.join(dir, 'warren.conf'), config);
  const child = spawn(process.env.WARREN_BIN, ['--amqp-listen', '127.0.0.1:0', '--http-listen', '127.0.0.1:0',
    '--data-dir', path.join(dir, 'data'), '--config', path.join(dir, 'warren.conf')], { stdio: ['ignore', 'pipe', 'inherit'] });
  const stop = () => { child.kill(); fs.rmSync(dir, { recursive: true, force: true }); };
  const addr = await new Promise((resolve, reject) => {
    let seen = '';
    child.stdout.on('data', (chunk) => {
      seen += chunk;
      const m = seen.match(/^listening http (\S+)$/m);
      if (m) resolve(m[1]);
    });
    child.on('exit', (code) => reject(new Error(`warren exited with ${code}`)));
  });
  return { addr, stop };
}

test('overview: the memory and disk alarms in force are shown', async () => {
  // A disk limit larger than any disk and a watermark below any process's memory: both alarms.
  const broker = await startBroker('disk_free_limit.absolute = 1000000000000000000\nvm_memory_high_watermark.absolute = 1048576\n');
  try {
    await page.goto(`http://${broker.addr}/`);
    await page.getByLabel('Username').fill('guest');
    await page.getByLabel('Password').fill('guest');
    await page.getByRole('button', { name: 'Log in' }).click();
    await page.getByRole('heading', { name: 'Overview' }).waitFor();
    const banner = page.locator('#alarms .alarm');
    await banner.getByText(/^Memory alarm: .* used, high watermark 1\.0 MiB\.$/).waitFor();
    await banner.getByText(/^Disk alarm: .* free, limit /).waitFor();
    assert.match(await page.locator('[data-resource="memory"]').textContent(), /alarm/);
    assert.match(await page.locator('[data-resource="disk"]').textContent(), /alarm/);
    await shot('alarms');
  } finally {
    broker.stop();
  }
  // The main broker has neither: no banner, and both resources OK.
  await page.goto(`${BASE}/`);
  await page.getByRole('heading', { name: 'Overview' }).waitFor();
  await page.locator('[data-resource="memory"]', { hasText: 'OK' }).waitFor();
  assert.equal(await page.locator('#alarms .alarm').count(), 0);
});

test('10,000 queues: the queues page renders fast and sorts', async () => {
  const queues = [];
  for (let i = 0; i < 10_000; i++) {
    queues.push({ name: `bulk-${String(i).padStart(5, '0')}`, vhost: '/', durable: false, auto_delete: false, arguments: {} });
  }
  const imported = await call('POST', '/api/definitions', { queues });
  assert.ok(imported.status < 300, `definitions import answered ${imported.status}`);
  const total = (await call('GET', '/api/overview')).body.object_totals.queues;
  assert.ok(total >= 10_000, `the broker has ${total} queues`);

  await open('#/overview', 'Overview');
  const started = Date.now();
  await page.evaluate(() => { location.hash = '#/queues'; });
  await page.locator('#queues-table tbody tr').nth(99).waitFor();
  const elapsed = Date.now() - started;
  assert.ok(elapsed < 3000, `queues page took ${elapsed} ms`);
  assert.equal(await page.locator('#queues-table tbody tr').count(), 100, 'only one page of rows is rendered');
  assert.match(await page.locator('.count').textContent(), new RegExp(`^${total.toLocaleString('en-US')} of`));

  const table = page.locator('#queues-table');
  const t0 = Date.now();
  await table.getByRole('button', { name: 'Name' }).click();
  await table.locator('tbody tr').first().getByText('ui-test-b').waitFor();
  await table.getByRole('button', { name: 'Name' }).click();
  await table.locator('tbody tr').first().getByText('bulk-00000').waitFor();
  assert.ok(Date.now() - t0 < 3000, 'sorting 10,000 rows twice took under 3 s');
  // The queue with a message comes first when sorted by total, descending.
  await table.getByRole('button', { name: 'Total' }).click();
  await table.locator('tbody tr').first().getByText('ui-test-b').waitFor();
  await page.getByRole('button', { name: 'Next' }).click();
  await page.getByText('Page 2 of').waitFor();
  await page.getByLabel('Filter').fill('bulk-0999');
  assert.equal(await page.locator('#queues-table tbody tr').count(), 10);
});
