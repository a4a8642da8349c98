// The demo page's script: job progress bars, a price ticker and the
// connection state, on the browser client served beside it (/livehub.js).
// Query parameters: token (a JWT; removed from the address bar once read),
// project (default "demo": the page follows channel project:{project}),
// ws (the hub's WebSocket URL; default this origin's /ws), backoffMax (ms),
// transport (how the token travels: query, protocol or message; default query).
import { LiveHub } from '/livehub.js';

const params = new URLSearchParams(location.search);
const project = params.get('project') || 'demo';
const channel = 'project:' + project;
const wsUrl = params.get('ws') || (location.protocol === 'https:' ? 'wss://' : 'ws://') + location.host + '/ws';
const $ = (id) => document.getElementById(id);

// What the page has seen, for people poking at the console (and for tests).
const state = { statuses: [], recoveries: [], subscribed: [], events: 0, errors: [] };
window.livehubDemo = { state };

function log(line) {
  const el = $('log');
  const t = new Date().toTimeString().slice(0, 8);
  el.textContent = (t + '  ' + line + '\n' + el.textContent).slice(0, 8000);
}

function takeToken() {
  let token = params.get('token');
  if (token) {
    // Keep the token out of the address bar, history and screenshots.
    sessionStorage.setItem('livehub-demo-token', token);
    params.delete('token');
    const q = params.toString();
    history.replaceState(null, '', location.pathname + (q ? '?' + q : '') + location.hash);
  }
  return token || sessionStorage.getItem('livehub-demo-token');
}

function jobRow(jobId) {
  let row = document.querySelector(`.job[data-job-id="${CSS.escape(jobId)}"]`);
  if (row) return row;
  const empty = $('jobs').querySelector('.empty');
  if (empty) empty.remove();
  row = document.createElement('div');
  row.className = 'job';
  row.dataset.jobId = jobId;
  row.innerHTML = '<div class="label"><span class="name"></span><span class="pct"></span></div><div class="bar"><div></div></div><div class="label"><span class="msg"></span><span class="eta"></span></div>';
  row.querySelector('.name').textContent = 'job ' + jobId;
  $('jobs').appendChild(row);
  return row;
}

function showJob(ev) {
  const d = ev.data || {};
  if (!d.jobId) return;
  const row = jobRow(d.jobId);
  let pct = Number(row.dataset.progress || 0);
  if (ev.type === 'job:progress') {
    pct = Math.max(0, Math.min(100, Number(d.progress) || 0));
    row.dataset.state = 'running';
    row.querySelector('.msg').textContent = d.message || '';
    row.querySelector('.eta').textContent = d.etaSeconds ? d.etaSeconds + ' s left' : '';
  } else if (ev.type === 'job:completed') {
    pct = 100;
    row.dataset.state = 'completed';
    row.querySelector('.msg').textContent = 'completed';
    row.querySelector('.eta').textContent = '';
  } else if (ev.type === 'job:failed') {
    row.dataset.state = 'failed';
    row.querySelector('.msg').textContent = 'failed: ' + (d.error || d.message || '');
    row.querySelector('.eta').textContent = '';
  } else {
    return;
  }
  row.dataset.progress = String(pct);
  row.dataset.offset = String(ev.offset);
  row.querySelector('.bar > div').style.width = pct + '%';
  row.querySelector('.pct').textContent = pct.toFixed(0) + '%';
}

function showPrice(ev) {
  const d = ev.data || {};
  const id = d.itemId || '?';
  const amount = Number(d.amountMinor || 0) / 100;
  const prev = Number(d.previousAmountMinor || 0) / 100;
  $('prices-empty').hidden = true;
  let row = document.querySelector(`#prices tr[data-item="${CSS.escape(id)}"]`);
  if (!row) {
    row = document.createElement('tr');
    row.dataset.item = id;
    row.innerHTML = '<td class="item"></td><td class="amount"></td><td class="delta"></td>';
    row.querySelector('.item').textContent = id;
    $('prices').tBodies[0].appendChild(row);
  }
  row.dataset.amountMinor = String(d.amountMinor || 0);
  row.querySelector('.amount').textContent = amount.toFixed(2) + ' ' + (d.currency || '');
  const delta = row.querySelector('.delta');
  delta.className = 'delta ' + (amount > prev ? 'up' : amount < prev ? 'down' : '');
  delta.textContent = prev ? (amount >= prev ? '▲ ' : '▼ ') + Math.abs(amount - prev).toFixed(2) : '';
}

function start(token) {
  $('channel').textContent = channel;
  const backoffMax = Number(params.get('backoffMax')) || undefined;
  const client = new LiveHub(wsUrl, {
    token,
    tokenTransport: params.get('transport') || 'query',
    backoff: backoffMax ? { initial: Math.min(1000, backoffMax), max: backoffMax } : undefined,
  });
  window.livehubDemo.client = client;
  client.on('status', (s) => {
    state.statuses.push(s.status);
    $('status').dataset.status = s.status;
    $('status').textContent = s.status;
    if (s.status === 'disconnected') {
      log(`disconnected${s.code ? ' (close ' + s.code + ')' : ''}${s.delay !== undefined ? ', retry in ' + (s.delay / 1000).toFixed(1) + ' s' : ''}${s.reason === 'offline' ? ', offline' : ''}`);
    } else if (s.status === 'closed') {
      log('stopped: ' + (s.error ? s.error.code + ' ' + s.error.message : s.reason || ''));
    }
  });
  client.on('connected', (c) => {
    $('conninfo').textContent = `${c.user}@${c.tenant} · ${c.clientId}`;
    log(`connected as ${c.user} (tenant ${c.tenant}), client ${c.clientId}`);
  });
  client.on('recovery', (r) => {
    state.recoveries.push({ channel: r.channel, recovered: r.recovered });
    log(r.recovered ? `${r.channel}: recovered the missed events since offset ${r.since.offset}`
                    : `${r.channel}: missed events are gone (recovered: false); the page would refetch its state`);
  });
  client.on('subscribed', (info) => state.subscribed.push(info.reply));
  client.on('error', (e) => {
    state.errors.push(e.code);
    log('error ' + e.code + ': ' + e.message);
  });
  client.on('price:updated', showPrice);
  client.subscribe(channel, (ev) => {
    state.events++;
    showJob(ev);
  });
}

const token = takeToken();
if (token) {
  start(token);
} else {
  $('token-form-section').hidden = false;
  log('no token: open the URL `make run` prints, or paste a token');
  $('token-form').addEventListener('submit', (e) => {
    e.preventDefault();
    const t = $('token-input').value.trim();
    if (!t) return;
    sessionStorage.setItem('livehub-demo-token', t);
    $('token-form-section').hidden = true;
    start(t);
  });
}
