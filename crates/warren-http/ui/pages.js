// The pages. Each takes a context ({main, args, flash, poll, go}) and renders into main.

import { api, get, enc } from './api.js';
import { drawChart, fmtRate } from './chart.js';

export const esc = (s) => String(s ?? '').replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' })[c]);
const num = (n) => (n === undefined || n === null ? '' : Number(n).toLocaleString('en-US'));
const rate = (stats, key) => (stats && stats[`${key}_details`] ? stats[`${key}_details`].rate : 0);
const rateCell = (v) => `${fmtRate(v || 0)}/s`;
const bytes = (b) => {
  let v = Number(b) || 0;
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  while (v >= 1024 && i < units.length - 1) { v /= 1024; i++; }
  return `${i ? v.toFixed(1) : v} ${units[i]}`;
};
const tags = (t) => (Array.isArray(t) ? t.join(', ') : t || '');

/**
 * A table that fetches nothing itself: rows in memory, sorted and filtered in memory, and
 * only the visible page rendered (so 10,000 rows stay fast).
 * columns: [{key, label, num, value(row) for sorting, html(row)}]
 */
export function dataTable(container, { id, columns, rows, pageSize = 100, filterKeys = ['name'], sort = null, empty = 'Nothing here yet.' }) {
  const state = { sort: sort || columns[0].key, dir: 1, filter: '', page: 0 };
  const colOf = (k) => columns.find((c) => c.key === k);
  const value = (c, r) => (c.value ? c.value(r) : r[c.key]);
  let view = rows;
  container.innerHTML = `<div class="toolbar">
      <label>Filter <input type="search" class="filter" id="${id}-filter" placeholder="regular expression or text"></label>
      <span class="grow"></span><span class="count muted" aria-live="polite"></span></div>
    <table id="${id}"><thead><tr>${columns.map((c) => `<th scope="col" class="${c.num ? 'num' : ''}" data-key="${c.key}" aria-sort="none"><button type="button">${esc(c.label)}</button></th>`).join('')}</tr></thead><tbody></tbody></table>
    <div class="pager"><button type="button" class="prev">Previous</button><span class="pageinfo"></span><button type="button" class="next">Next</button>
      <label>Page size <select class="pagesize">${[20, 100, 500].map((n) => `<option${n === pageSize ? ' selected' : ''}>${n}</option>`).join('')}</select></label></div>`;
  const tbody = container.querySelector('tbody');
  const recompute = () => {
    let re = null;
    if (state.filter) {
      try { re = new RegExp(state.filter, 'i'); } catch { re = null; }
    }
    const needle = state.filter.toLowerCase();
    view = state.filter
      ? rows.filter((r) => filterKeys.some((k) => { const s = String(r[k] ?? ''); return re ? re.test(s) : s.toLowerCase().includes(needle); }))
      : rows.slice();
    const c = colOf(state.sort);
    const cmp = c.num
      ? (a, b) => (Number(value(c, a)) || 0) - (Number(value(c, b)) || 0)
      : (a, b) => String(value(c, a) ?? '').localeCompare(String(value(c, b) ?? ''));
    view.sort((a, b) => state.dir * cmp(a, b));
  };
  const render = () => {
    const pages = Math.max(1, Math.ceil(view.length / pageSize));
    state.page = Math.min(state.page, pages - 1);
    const slice = view.slice(state.page * pageSize, (state.page + 1) * pageSize);
    tbody.innerHTML = slice.length
      ? slice.map((r) => `<tr>${columns.map((c) => `<td class="${c.num ? 'num' : ''}">${c.html ? c.html(r) : esc(r[c.key])}</td>`).join('')}</tr>`).join('')
      : `<tr><td colspan="${columns.length}" class="muted">${esc(empty)}</td></tr>`;
    for (const th of container.querySelectorAll('th')) {
      th.setAttribute('aria-sort', th.dataset.key === state.sort ? (state.dir > 0 ? 'ascending' : 'descending') : 'none');
    }
    container.querySelector('.count').textContent = `${num(view.length)} of ${num(rows.length)}`;
    container.querySelector('.pageinfo').textContent = `Page ${state.page + 1} of ${pages}`;
    container.querySelector('.prev').disabled = state.page === 0;
    container.querySelector('.next').disabled = state.page >= pages - 1;
  };
  container.querySelector('thead').addEventListener('click', (e) => {
    const th = e.target.closest('th');
    if (!th) return;
    if (state.sort === th.dataset.key) state.dir = -state.dir;
    else { state.sort = th.dataset.key; state.dir = colOf(th.dataset.key).num ? -1 : 1; }
    recompute();
    render();
  });
  container.querySelector('.filter').addEventListener('input', (e) => { state.filter = e.target.value; state.page = 0; recompute(); render(); });
  container.querySelector('.prev').addEventListener('click', () => { state.page--; render(); });
  container.querySelector('.next').addEventListener('click', () => { state.page++; render(); });
  container.querySelector('.pagesize').addEventListener('change', (e) => { pageSize = Number(e.target.value); state.page = 0; render(); });
  recompute();
  render();
  return { setRows(r) { rows = r; recompute(); render(); } };
}

/** Wires a form: on submit, runs fn(values) and says how it went. */
function onSubmit(form, ctx, fn) {
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    const values = Object.fromEntries(new FormData(form).entries());
    try {
      const said = await fn(values);
      if (said) ctx.flash(said);
    } catch (err) {
      ctx.flash(err.message, true);
    }
  });
}

/** Buttons inside a table that act on a row: data-action and data-* attributes. */
function onAction(container, ctx, actions) {
  container.addEventListener('click', async (e) => {
    const b = e.target.closest('button[data-action]');
    if (!b || !actions[b.dataset.action]) return;
    try {
      const said = await actions[b.dataset.action](b.dataset);
      if (said) ctx.flash(said);
    } catch (err) {
      ctx.flash(err.message, true);
    }
  });
}

const vhostOptions = async () => {
  let vhosts;
  try { vhosts = (await get('/api/vhosts')).map((v) => v.name); } catch { vhosts = ['/']; }
  return vhosts.map((v) => `<option>${esc(v)}</option>`).join('');
};

// ---- overview ---------------------------------------------------------------------------

const history = { rates: { publish: [], deliver: [], ack: [] }, queued: { ready: [], unacked: [] } };
const KEEP = 120;
const push = (arr, p) => { arr.push(p); if (arr.length > KEEP) arr.shift(); };

async function overview(ctx) {
  ctx.main.innerHTML = `<h1>Overview</h1>
    <div id="alarms" role="alert"></div>
    <div class="totals" id="totals"></div>
    <div class="cols">
      <section class="card"><h2>Message rates</h2><svg class="chart" id="rates-chart" role="img" aria-label="Message rates over time"></svg>
        <div class="legend"><span><i style="background:#b3541e"></i>publish</span><span><i style="background:#2f6db5"></i>deliver / get</span><span><i style="background:#2e7d32"></i>ack</span></div></section>
      <section class="card"><h2>Queued messages</h2><svg class="chart" id="queued-chart" role="img" aria-label="Queued messages over time"></svg>
        <div class="legend"><span><i style="background:#b3541e"></i>ready</span><span><i style="background:#7a4bb5"></i>unacknowledged</span></div></section>
    </div>
    <section class="card"><h2>Node</h2><dl class="details" id="node"></dl></section>
    <section class="card"><h2>Cluster</h2><p id="cluster-name"></p>
      <table id="nodes-table"><thead><tr><th scope="col">Node</th><th scope="col">State</th></tr></thead><tbody></tbody></table></section>`;
  const refresh = async () => {
    const [o, nodes] = await Promise.all([get('/api/overview'), get('/api/nodes').catch(() => [])]);
    if (!document.getElementById('totals')) return;
    // This node's figures; the others are listed with their state.
    const n = nodes.find((x) => x.name === o.node) || {};
    const t = o.object_totals || {};
    const q = o.queue_totals || {};
    const s = o.message_stats || {};
    const items = [
      ['Connections', t.connections], ['Channels', t.channels], ['Exchanges', t.exchanges], ['Queues', t.queues],
      ['Consumers', t.consumers], ['Ready', q.messages_ready], ['Unacked', q.messages_unacknowledged], ['Total', q.messages],
      ['Publish', rateCell(rate(s, 'publish'))], ['Deliver / get', rateCell(rate(s, 'deliver_get'))],
    ];
    document.getElementById('totals').innerHTML = items
      .map(([l, n]) => `<div class="total" data-total="${esc(l)}"><div class="n">${typeof n === 'string' ? esc(n) : num(n ?? 0)}</div><div class="l">${esc(l)}</div></div>`).join('');
    const alarms = [];
    if (n.mem_alarm) alarms.push(`Memory alarm: ${bytes(n.mem_used)} used, high watermark ${bytes(n.mem_limit)}.`);
    if (n.disk_free_alarm) alarms.push(`Disk alarm: ${bytes(n.disk_free)} free, limit ${bytes(n.disk_free_limit)}.`);
    document.getElementById('alarms').innerHTML = alarms.length
      ? `<div class="alarm">${alarms.map((a) => `<p>${esc(a)}</p>`).join('')}<p>Publishing connections are blocked until it clears; consumers go on.</p></div>`
      : '';
    const gauge = (used, limit, alarm, label) => (limit
      ? `<span class="gauge${alarm ? ' on' : ''}" role="meter" aria-label="${esc(label)}" aria-valuemin="0" aria-valuemax="${limit}" aria-valuenow="${Math.min(used, limit)}"><i style="width:${Math.min(100, (100 * used) / limit).toFixed(1)}%"></i></span>`
      : '');
    document.getElementById('node').innerHTML = `<dt>Node</dt><dd>${esc(o.node)}</dd><dt>Product</dt><dd>${esc(o.product_name)} ${esc(o.product_version)}</dd><dt>Rates mode</dt><dd>${esc(o.rates_mode)}</dd>
      <dt>Memory</dt><dd data-resource="memory">${bytes(n.mem_used)} of ${bytes(n.mem_limit)} high watermark ${gauge(n.mem_used, n.mem_limit, n.mem_alarm, 'Memory used against the high watermark')} ${n.mem_alarm ? '<strong class="bad">alarm</strong>' : '<span class="good">OK</span>'}</dd>
      <dt>Disk free</dt><dd data-resource="disk">${bytes(n.disk_free)} (limit ${bytes(n.disk_free_limit)}) ${n.disk_free_alarm ? '<strong class="bad">alarm</strong>' : '<span class="good">OK</span>'}</dd>`;
    document.getElementById('cluster-name').innerHTML = `Cluster name: <strong>${esc(o.cluster_name)}</strong>`;
    document.querySelector('#nodes-table tbody').innerHTML = nodes
      .map((x) => `<tr data-node="${esc(x.name)}"><td>${esc(x.name)}${x.name === o.node ? ' (this node)' : ''}</td><td>${x.running ? '<span class="good">running</span>' : '<strong class="bad">down</strong>'}</td></tr>`).join('');
    const now = Date.now();
    push(history.rates.publish, [now, rate(s, 'publish')]);
    push(history.rates.deliver, [now, rate(s, 'deliver_get')]);
    push(history.rates.ack, [now, rate(s, 'ack')]);
    push(history.queued.ready, [now, q.messages_ready || 0]);
    push(history.queued.unacked, [now, q.messages_unacknowledged || 0]);
    drawChart(document.getElementById('rates-chart'), [
      { color: '#b3541e', points: history.rates.publish },
      { color: '#2f6db5', points: history.rates.deliver },
      { color: '#2e7d32', points: history.rates.ack },
    ]);
    drawChart(document.getElementById('queued-chart'), [
      { color: '#b3541e', points: history.queued.ready },
      { color: '#7a4bb5', points: history.queued.unacked },
    ]);
  };
  await refresh();
  ctx.poll(() => refresh().catch((e) => ctx.flash(e.message, true)), 5000);
}

// ---- connections and channels -----------------------------------------------------------

async function connections(ctx) {
  ctx.main.innerHTML = '<h1>Connections</h1><div id="list"></div>';
  const list = document.getElementById('list');
  const load = () => get('/api/connections');
  const t = dataTable(list, {
    id: 'connections-table', rows: await load(), filterKeys: ['name', 'user', 'vhost'], empty: 'No connections.',
    columns: [
      { key: 'name', label: 'Name' },
      { key: 'vhost', label: 'Virtual host' },
      { key: 'user', label: 'User' },
      { key: 'client', label: 'Client', value: (c) => clientName(c), html: (c) => esc(clientName(c)) },
      { key: 'protocol', label: 'Protocol' },
      { key: 'channels', label: 'Channels', num: true },
      { key: 'state', label: 'State' },
      { key: 'close', label: 'Action', html: (c) => `<button type="button" class="danger" data-action="close" data-name="${esc(c.name)}">Close</button>` },
    ],
  });
  onAction(list, ctx, {
    close: async ({ name }) => {
      if (!confirm(`Close connection ${name}?`)) return null;
      await api('DELETE', `/api/connections/${enc(name)}`);
      t.setRows(await load());
      return `Closed ${name}`;
    },
  });
  ctx.poll(async () => t.setRows(await load()), 5000);
}

const clientName = (c) => {
  const p = c.client_properties || {};
  return [p.product, p.version].filter(Boolean).join(' ');
};

async function channels(ctx) {
  ctx.main.innerHTML = '<h1>Channels</h1><div id="list"></div>';
  const load = () => get('/api/channels');
  const t = dataTable(document.getElementById('list'), {
    id: 'channels-table', rows: await load(), filterKeys: ['name', 'user', 'vhost'], empty: 'No channels.',
    columns: [
      { key: 'name', label: 'Channel' },
      { key: 'vhost', label: 'Virtual host' },
      { key: 'user', label: 'User' },
      { key: 'mode', label: 'Mode', value: (c) => (c.confirm ? 'confirm' : c.transactional ? 'tx' : ''), html: (c) => (c.confirm ? 'confirm' : c.transactional ? 'transactional' : '') },
      { key: 'prefetch_count', label: 'Prefetch', num: true },
      { key: 'consumer_count', label: 'Consumers', num: true },
      { key: 'messages_unacknowledged', label: 'Unacked', num: true },
      { key: 'state', label: 'State' },
    ],
  });
  ctx.poll(async () => t.setRows(await load()), 5000);
}

// ---- exchanges --------------------------------------------------------------------------

const exchangeLink = (vhost, name) => `<a href="#/exchange/${enc(vhost)}/${enc(name || 'amq.default')}">${esc(name || '(AMQP default)')}</a>`;
const queueLink = (vhost, name) => `<a href="#/queue/${enc(vhost)}/${enc(name)}">${esc(name)}</a>`;

async function exchanges(ctx) {
  ctx.main.innerHTML = `<h1>Exchanges</h1><div id="list"></div>
    <section class="card"><h2>Add an exchange</h2><form class="grid" id="add-exchange">
      <label for="ex-vhost">Virtual host</label><select id="ex-vhost" name="vhost">${await vhostOptions()}</select>
      <label for="ex-name">Name</label><input id="ex-name" name="name" required>
      <label for="ex-type">Type</label><select id="ex-type" name="type"><option>direct</option><option>fanout</option><option>topic</option><option>headers</option></select>
      <label for="ex-durable">Durable</label><select id="ex-durable" name="durable"><option value="true">yes</option><option value="false">no</option></select>
      <div class="actions"><button class="primary" type="submit">Add exchange</button></div></form></section>`;
  const load = () => get('/api/exchanges');
  const t = dataTable(document.getElementById('list'), {
    id: 'exchanges-table', rows: await load(), filterKeys: ['name', 'vhost', 'type'],
    columns: [
      { key: 'name', label: 'Name', html: (x) => exchangeLink(x.vhost, x.name) },
      { key: 'vhost', label: 'Virtual host' },
      { key: 'type', label: 'Type' },
      { key: 'features', label: 'Features', value: (x) => features(x), html: (x) => esc(features(x)) },
      { key: 'publish_in', label: 'Rate in', num: true, value: (x) => rate(x.message_stats, 'publish_in'), html: (x) => rateCell(rate(x.message_stats, 'publish_in')) },
    ],
  });
  onSubmit(document.getElementById('add-exchange'), ctx, async (v) => {
    await api('PUT', `/api/exchanges/${enc(v.vhost)}/${enc(v.name)}`, { type: v.type, durable: v.durable === 'true' });
    t.setRows(await load());
    return `Exchange ${v.name} declared`;
  });
}

const features = (x) => [x.durable && 'durable', x.auto_delete && 'auto-delete', x.internal && 'internal'].filter(Boolean).join(', ');

function publishForm(id, routingKey) {
  return `<form class="grid" id="${id}">
    <label for="${id}-rk">Routing key</label><input id="${id}-rk" name="routing_key" value="${esc(routingKey)}">
    <label for="${id}-dm">Delivery mode</label><select id="${id}-dm" name="delivery_mode"><option value="1">1 - non-persistent</option><option value="2">2 - persistent</option></select>
    <label for="${id}-headers">Headers (JSON)</label><input id="${id}-headers" name="headers" placeholder='{"key": "value"}'>
    <label for="${id}-payload">Payload</label><textarea id="${id}-payload" name="payload"></textarea>
    <div class="actions"><button class="primary" type="submit">Publish message</button></div></form>`;
}

async function publishFrom(vhost, exchange, v) {
  const properties = { delivery_mode: Number(v.delivery_mode) };
  if (v.headers && v.headers.trim()) properties.headers = JSON.parse(v.headers);
  const r = await api('POST', `/api/exchanges/${enc(vhost)}/${enc(exchange || 'amq.default')}/publish`, {
    properties, routing_key: v.routing_key, payload: v.payload, payload_encoding: 'string',
  });
  return r && r.routed ? 'Message published.' : 'Message published, but not routed.';
}

async function exchange(ctx) {
  const [vhost, name] = ctx.args;
  const path = `/api/exchanges/${enc(vhost)}/${enc(name)}`;
  const x = await get(path);
  ctx.main.innerHTML = `<h1>Exchange ${esc(x.name || '(AMQP default)')}</h1>
    <section class="card"><dl class="details"><dt>Virtual host</dt><dd>${esc(x.vhost)}</dd><dt>Type</dt><dd>${esc(x.type)}</dd>
      <dt>Features</dt><dd>${esc(features(x)) || 'none'}</dd><dt>Arguments</dt><dd>${esc(JSON.stringify(x.arguments || {}))}</dd></dl></section>
    <h2>Bindings from this exchange</h2><div id="bindings"></div>
    <section class="card"><h2>Add a binding</h2><form class="grid" id="add-binding">
      <label for="b-kind">To</label><select id="b-kind" name="kind"><option value="q">queue</option><option value="e">exchange</option></select>
      <label for="b-dest">Destination</label><input id="b-dest" name="destination" required>
      <label for="b-rk">Routing key</label><input id="b-rk" name="routing_key">
      <div class="actions"><button class="primary" type="submit">Bind</button></div></form></section>
    <section class="card"><h2>Publish a message</h2>${publishForm('publish', '')}</section>
    ${x.name && !x.name.startsWith('amq.') ? '<section class="card"><h2>Delete</h2><button type="button" class="danger" id="delete-exchange">Delete this exchange</button></section>' : ''}`;
  const load = () => get(`${path}/bindings/source`);
  const holder = document.getElementById('bindings');
  const t = dataTable(holder, {
    id: 'bindings-table', rows: await load(), pageSize: 20, filterKeys: ['destination', 'routing_key'], empty: 'No bindings.',
    columns: [
      { key: 'destination', label: 'To', html: (b) => (b.destination_type === 'queue' ? queueLink(b.vhost, b.destination) : exchangeLink(b.vhost, b.destination)) },
      { key: 'destination_type', label: 'Kind' },
      { key: 'routing_key', label: 'Routing key' },
      { key: 'arguments', label: 'Arguments', value: (b) => JSON.stringify(b.arguments || {}), html: (b) => esc(JSON.stringify(b.arguments || {})) },
      { key: 'unbind', label: 'Action', html: (b) => `<button type="button" data-action="unbind" data-kind="${b.destination_type === 'queue' ? 'q' : 'e'}" data-dest="${esc(b.destination)}" data-props="${esc(b.properties_key)}">Unbind</button>` },
    ],
  });
  onAction(holder, ctx, {
    unbind: async (d) => {
      await api('DELETE', `/api/bindings/${enc(vhost)}/e/${enc(name)}/${d.kind}/${enc(d.dest)}/${enc(d.props)}`);
      t.setRows(await load());
      return 'Binding removed';
    },
  });
  onSubmit(document.getElementById('add-binding'), ctx, async (v) => {
    await api('POST', `/api/bindings/${enc(vhost)}/e/${enc(name)}/${v.kind}/${enc(v.destination)}`, { routing_key: v.routing_key, arguments: {} });
    t.setRows(await load());
    return 'Binding added';
  });
  onSubmit(document.getElementById('publish'), ctx, (v) => publishFrom(vhost, name, v));
  const del = document.getElementById('delete-exchange');
  if (del) del.addEventListener('click', async () => {
    if (!confirm(`Delete exchange ${name}?`)) return;
    try { await api('DELETE', path); ctx.flash(`Exchange ${name} deleted`); ctx.go('#/exchanges'); } catch (e) { ctx.flash(e.message, true); }
  });
}

// ---- queues -----------------------------------------------------------------------------

async function queues(ctx) {
  ctx.main.innerHTML = `<h1>Queues</h1><div id="list"></div>
    <section class="card"><h2>Add a queue</h2><form class="grid" id="add-queue">
      <label for="q-vhost">Virtual host</label><select id="q-vhost" name="vhost">${await vhostOptions()}</select>
      <label for="q-name">Name</label><input id="q-name" name="name" required>
      <label for="q-type">Type</label><select id="q-type" name="type"><option>classic</option><option>quorum</option><option>stream</option></select>
      <label for="q-durable">Durable</label><select id="q-durable" name="durable"><option value="true">yes</option><option value="false">no</option></select>
      <div class="actions"><button class="primary" type="submit">Add queue</button></div></form></section>`;
  const load = () => get('/api/queues');
  const started = performance.now();
  const t = dataTable(document.getElementById('list'), {
    id: 'queues-table', rows: await load(), filterKeys: ['name'], empty: 'No queues.',
    columns: [
      { key: 'name', label: 'Name', html: (q) => queueLink(q.vhost, q.name) },
      { key: 'vhost', label: 'Virtual host' },
      { key: 'type', label: 'Type' },
      { key: 'state', label: 'State' },
      { key: 'messages_ready', label: 'Ready', num: true, html: (q) => num(q.messages_ready) },
      { key: 'messages_unacknowledged', label: 'Unacked', num: true, html: (q) => num(q.messages_unacknowledged) },
      { key: 'messages', label: 'Total', num: true, html: (q) => num(q.messages) },
      { key: 'publish', label: 'Incoming', num: true, value: (q) => rate(q.message_stats, 'publish'), html: (q) => rateCell(rate(q.message_stats, 'publish')) },
      { key: 'deliver_get', label: 'Deliver / get', num: true, value: (q) => rate(q.message_stats, 'deliver_get'), html: (q) => rateCell(rate(q.message_stats, 'deliver_get')) },
    ],
  });
  document.getElementById('queues-table').dataset.renderMs = String(Math.round(performance.now() - started));
  onSubmit(document.getElementById('add-queue'), ctx, async (v) => {
    await api('PUT', `/api/queues/${enc(v.vhost)}/${enc(v.name)}`, { durable: v.durable === 'true', arguments: { 'x-queue-type': v.type } });
    t.setRows(await load());
    return `Queue ${v.name} declared`;
  });
}

async function queue(ctx) {
  const [vhost, name] = ctx.args;
  const path = `/api/queues/${enc(vhost)}/${enc(name)}`;
  ctx.main.innerHTML = `<h1>Queue ${esc(name)}</h1>
    <section class="card"><dl class="details" id="queue-details"></dl></section>
    <h2>Bindings</h2><div id="bindings"></div>
    <div class="cols">
    <section class="card"><h2>Publish a message</h2><p class="muted">Through the default exchange, routed to this queue.</p>${publishForm('publish', name)}</section>
    <section class="card"><h2>Get messages</h2><form class="grid" id="get-messages">
      <label for="get-ackmode">Ack mode</label><select id="get-ackmode" name="ackmode">
        <option value="ack_requeue_true">Nack message, requeue true</option><option value="ack_requeue_false">Ack message, requeue false</option>
        <option value="reject_requeue_true">Reject, requeue true</option><option value="reject_requeue_false">Reject, requeue false</option></select>
      <label for="get-encoding">Encoding</label><select id="get-encoding" name="encoding"><option value="auto">Auto string / base64</option><option value="base64">base64</option></select>
      <label for="get-count">Messages</label><input id="get-count" name="count" type="number" min="1" value="1">
      <div class="actions"><button class="primary" type="submit">Get messages</button></div></form>
      <div id="messages" aria-live="polite"></div></section>
    </div>
    <section class="card"><h2>Purge and delete</h2><div class="toolbar"><button type="button" id="purge">Purge messages</button><button type="button" class="danger" id="delete-queue">Delete queue</button></div></section>`;
  const refresh = async () => {
    const q = await get(path);
    const box = document.getElementById('queue-details');
    if (!box) return;
    const s = q.message_stats;
    box.innerHTML = [
      ['Virtual host', esc(q.vhost)], ['Type', esc(q.type)], ['State', esc(q.state)],
      ['Features', esc([q.durable && 'durable', q.auto_delete && 'auto-delete', q.exclusive && 'exclusive'].filter(Boolean).join(', ') || 'none')],
      ['Policy', esc(q.policy || '')], ['Consumers', num(q.consumers)],
      ['Ready', `<span id="q-ready">${num(q.messages_ready)}</span>`], ['Unacked', `<span id="q-unacked">${num(q.messages_unacknowledged)}</span>`],
      ['Total', `<span id="q-total">${num(q.messages)}</span>`],
      ['Incoming', rateCell(rate(s, 'publish'))], ['Deliver / get', rateCell(rate(s, 'deliver_get'))],
      ['Arguments', esc(JSON.stringify(q.arguments || {}))],
    ].map(([k, v]) => `<dt>${k}</dt><dd>${v}</dd>`).join('');
  };
  await refresh();
  const bindings = await get(`${path}/bindings`);
  dataTable(document.getElementById('bindings'), {
    id: 'queue-bindings', rows: bindings, pageSize: 20, filterKeys: ['source', 'routing_key'], empty: 'No bindings.',
    columns: [
      { key: 'source', label: 'From', html: (b) => exchangeLink(b.vhost, b.source) },
      { key: 'routing_key', label: 'Routing key' },
      { key: 'arguments', label: 'Arguments', value: (b) => JSON.stringify(b.arguments || {}), html: (b) => esc(JSON.stringify(b.arguments || {})) },
    ],
  });
  onSubmit(document.getElementById('publish'), ctx, async (v) => { const said = await publishFrom(vhost, '', v); await refresh(); return said; });
  onSubmit(document.getElementById('get-messages'), ctx, async (v) => {
    const msgs = await api('POST', `${path}/get`, { count: Number(v.count) || 1, ackmode: v.ackmode, encoding: v.encoding, truncate: 50000 });
    const out = document.getElementById('messages');
    out.innerHTML = msgs.length
      ? msgs.map((m, i) => `<div class="message card"><h3>Message ${i + 1}</h3><dl class="details">
          <dt>Exchange</dt><dd>${esc(m.exchange || '(AMQP default)')}</dd><dt>Routing key</dt><dd>${esc(m.routing_key)}</dd>
          <dt>Redelivered</dt><dd>${m.redelivered ? 'yes' : 'no'}</dd><dt>Remaining</dt><dd>${num(m.message_count)}</dd>
          <dt>Properties</dt><dd>${esc(JSON.stringify(m.properties || {}))}</dd>
          <dt>Payload</dt><dd>${num(m.payload_bytes)} bytes, ${esc(m.payload_encoding)}<pre class="payload">${esc(m.payload)}</pre></dd></dl></div>`).join('')
      : '<p class="muted">Queue is empty.</p>';
    await refresh();
    return null;
  });
  document.getElementById('purge').addEventListener('click', async () => {
    if (!confirm(`Purge all messages of ${name}?`)) return;
    try { await api('DELETE', `${path}/contents`); await refresh(); ctx.flash('Queue purged'); } catch (e) { ctx.flash(e.message, true); }
  });
  document.getElementById('delete-queue').addEventListener('click', async () => {
    if (!confirm(`Delete queue ${name}?`)) return;
    try { await api('DELETE', path); ctx.flash(`Queue ${name} deleted`); ctx.go('#/queues'); } catch (e) { ctx.flash(e.message, true); }
  });
  ctx.poll(() => refresh().catch(() => {}), 5000);
}

// ---- admin: users, vhosts, permissions ---------------------------------------------------

async function users(ctx) {
  ctx.main.innerHTML = `<h1>Users</h1><div id="list"></div>
    <section class="card"><h2>Add a user</h2><form class="grid" id="add-user">
      <label for="u-name">Username</label><input id="u-name" name="name" required autocomplete="off">
      <label for="u-password">Password</label><input id="u-password" name="password" type="password" autocomplete="new-password">
      <label for="u-tags">Tags</label><input id="u-tags" name="tags" placeholder="administrator, monitoring, management">
      <div class="actions"><button class="primary" type="submit">Add user</button></div></form></section>
    <section class="card"><h2>Set a user limit</h2><form class="grid" id="set-user-limit">
      <label for="ul-user">User</label><input id="ul-user" name="user" required autocomplete="off">
      <label for="ul-name">Limit</label><select id="ul-name" name="name"><option value="max-connections">Max connections</option><option value="max-channels">Max channels</option></select>
      <label for="ul-value">Value</label><input id="ul-value" name="value" type="number" min="-1" step="1" required>
      <div class="actions"><button class="primary" type="submit">Set user limit</button> <span class="muted">-1 removes the limit; 0 allows none</span></div></form></section>`;
  const holder = document.getElementById('list');
  const load = () => get('/api/users');
  const limitCell = (n) => (n === undefined || n < 0 ? '<span class="muted">none</span>' : num(n));
  const t = dataTable(holder, {
    id: 'users-table', rows: await load(), empty: 'No users.',
    columns: [
      { key: 'name', label: 'Name' },
      { key: 'tags', label: 'Tags', value: (u) => tags(u.tags), html: (u) => esc(tags(u.tags)) },
      { key: 'max_connections', label: 'Max connections', num: true, value: (u) => u.limits?.['max-connections'], html: (u) => limitCell(u.limits?.['max-connections']) },
      { key: 'max_channels', label: 'Max channels', num: true, value: (u) => u.limits?.['max-channels'], html: (u) => limitCell(u.limits?.['max-channels']) },
      { key: 'delete', label: 'Action', html: (u) => `<button type="button" class="danger" data-action="delete" data-name="${esc(u.name)}">Delete</button>` },
    ],
  });
  onAction(holder, ctx, {
    delete: async ({ name }) => {
      if (!confirm(`Delete user ${name}?`)) return null;
      await api('DELETE', `/api/users/${enc(name)}`);
      t.setRows(await load());
      return `User ${name} deleted`;
    },
  });
  onSubmit(document.getElementById('add-user'), ctx, async (v) => {
    await api('PUT', `/api/users/${enc(v.name)}`, { password: v.password, tags: v.tags.split(',').map((s) => s.trim()).filter(Boolean).join(',') });
    t.setRows(await load());
    return `User ${v.name} added`;
  });
  onSubmit(document.getElementById('set-user-limit'), ctx, async (v) => {
    const value = Number(v.value);
    if (value < 0) await api('DELETE', `/api/user-limits/${enc(v.user)}/${enc(v.name)}`);
    else await api('PUT', `/api/user-limits/${enc(v.user)}/${enc(v.name)}`, { value });
    t.setRows(await load());
    return value < 0 ? `Limit ${v.name} of ${v.user} removed` : `Limit ${v.name} of ${v.user} set to ${value}`;
  });
}

async function vhosts(ctx) {
  ctx.main.innerHTML = `<h1>Virtual hosts</h1><div id="list"></div>
    <section class="card"><h2>Add a virtual host</h2><form class="grid" id="add-vhost">
      <label for="v-name">Name</label><input id="v-name" name="name" required>
      <label for="v-description">Description</label><input id="v-description" name="description">
      <div class="actions"><button class="primary" type="submit">Add virtual host</button></div></form></section>
    <section class="card"><h2>Set a limit</h2><form class="grid" id="set-limit">
      <label for="l-vhost">Virtual host</label><select id="l-vhost" name="vhost">${await vhostOptions()}</select>
      <label for="l-name">Limit</label><select id="l-name" name="name"><option value="max-connections">Max connections</option><option value="max-queues">Max queues</option></select>
      <label for="l-value">Value</label><input id="l-value" name="value" type="number" min="-1" step="1" required>
      <div class="actions"><button class="primary" type="submit">Set limit</button> <span class="muted">-1 removes the limit; 0 allows none</span></div></form></section>`;
  const holder = document.getElementById('list');
  const load = async () => {
    const [vs, limits] = await Promise.all([get('/api/vhosts'), get('/api/vhost-limits').catch(() => [])]);
    const of = Object.fromEntries(limits.map((l) => [l.vhost, l.value || {}]));
    return vs.map((v) => ({ ...v, max_connections: of[v.name]?.['max-connections'], max_queues: of[v.name]?.['max-queues'] }));
  };
  const limitCell = (n) => (n === undefined || n < 0 ? '<span class="muted">none</span>' : num(n));
  const t = dataTable(holder, {
    id: 'vhosts-table', rows: await load(), empty: 'No virtual hosts.',
    columns: [
      { key: 'name', label: 'Name' },
      { key: 'description', label: 'Description' },
      { key: 'messages_ready', label: 'Ready', num: true, html: (v) => num(v.messages_ready ?? 0) },
      { key: 'messages_unacknowledged', label: 'Unacked', num: true, html: (v) => num(v.messages_unacknowledged ?? 0) },
      { key: 'messages', label: 'Total', num: true, html: (v) => num(v.messages ?? 0) },
      { key: 'max_connections', label: 'Max connections', num: true, html: (v) => limitCell(v.max_connections) },
      { key: 'max_queues', label: 'Max queues', num: true, html: (v) => limitCell(v.max_queues) },
      { key: 'delete', label: 'Action', html: (v) => `<button type="button" class="danger" data-action="delete" data-name="${esc(v.name)}">Delete</button>` },
    ],
  });
  onAction(holder, ctx, {
    delete: async ({ name }) => {
      if (!confirm(`Delete virtual host ${name} and everything in it?`)) return null;
      await api('DELETE', `/api/vhosts/${enc(name)}`);
      t.setRows(await load());
      document.getElementById('l-vhost').innerHTML = await vhostOptions();
      return `Virtual host ${name} deleted`;
    },
  });
  onSubmit(document.getElementById('add-vhost'), ctx, async (v) => {
    await api('PUT', `/api/vhosts/${enc(v.name)}`, { description: v.description });
    t.setRows(await load());
    document.getElementById('l-vhost').innerHTML = await vhostOptions();
    return `Virtual host ${v.name} added`;
  });
  onSubmit(document.getElementById('set-limit'), ctx, async (v) => {
    const value = Number(v.value);
    if (value < 0) await api('DELETE', `/api/vhost-limits/${enc(v.vhost)}/${enc(v.name)}`);
    else await api('PUT', `/api/vhost-limits/${enc(v.vhost)}/${enc(v.name)}`, { value });
    t.setRows(await load());
    return value < 0 ? `Limit ${v.name} of ${v.vhost} removed` : `Limit ${v.name} of ${v.vhost} set to ${value}`;
  });
}

async function permissions(ctx) {
  ctx.main.innerHTML = `<h1>Permissions</h1><div id="list"></div>
    <section class="card"><h2>Set permissions</h2><form class="grid" id="set-permission">
      <label for="p-user">User</label><input id="p-user" name="user" required>
      <label for="p-vhost">Virtual host</label><select id="p-vhost" name="vhost">${await vhostOptions()}</select>
      <label for="p-configure">Configure regexp</label><input id="p-configure" name="configure" value=".*">
      <label for="p-write">Write regexp</label><input id="p-write" name="write" value=".*">
      <label for="p-read">Read regexp</label><input id="p-read" name="read" value=".*">
      <div class="actions"><button class="primary" type="submit">Set permission</button></div></form></section>`;
  const holder = document.getElementById('list');
  const load = () => get('/api/permissions');
  const t = dataTable(holder, {
    id: 'permissions-table', rows: await load(), filterKeys: ['user', 'vhost'], sort: 'user', empty: 'No permissions.',
    columns: [
      { key: 'user', label: 'User' },
      { key: 'vhost', label: 'Virtual host' },
      { key: 'configure', label: 'Configure' },
      { key: 'write', label: 'Write' },
      { key: 'read', label: 'Read' },
      { key: 'delete', label: 'Action', html: (p) => `<button type="button" class="danger" data-action="delete" data-user="${esc(p.user)}" data-vhost="${esc(p.vhost)}">Clear</button>` },
    ],
  });
  onAction(holder, ctx, {
    delete: async ({ user, vhost }) => {
      await api('DELETE', `/api/permissions/${enc(vhost)}/${enc(user)}`);
      t.setRows(await load());
      return `Permissions of ${user} in ${vhost} cleared`;
    },
  });
  onSubmit(document.getElementById('set-permission'), ctx, async (v) => {
    await api('PUT', `/api/permissions/${enc(v.vhost)}/${enc(v.user)}`, { configure: v.configure, write: v.write, read: v.read });
    t.setRows(await load());
    return `Permissions of ${v.user} in ${v.vhost} set`;
  });
}

export const pages = { overview, connections, channels, exchanges, exchange, queues, queue, users, vhosts, permissions };
