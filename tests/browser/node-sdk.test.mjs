// clients/js/livehub.js in Node (its global WebSocket: Node 22, or Node 20
// with --experimental-websocket) against the real hub. The features other
// branches bring (in-session refresh and expiry close 4001, the token as a
// subprotocol, the auth message, the Disconnect RPC, presence and client
// events) are tested too; a hub without one of them fails the test.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { Hub, WAIT } from './harness.mjs';
import { LiveHub } from '../../clients/js/livehub.js';

const uniq = (p) => p + '-' + randomBytes(6).toString('hex');

async function until(fn, what) {
  const deadline = Date.now() + WAIT;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > deadline) throw new Error('timed out waiting for ' + what);
    await new Promise((r) => setTimeout(r, 20));
  }
}

function client(hub, opts) {
  const c = new LiveHub(`ws://127.0.0.1:${hub.wsPort}/ws`, { backoff: { initial: 100, max: 200 }, ...opts });
  c.seen = { statuses: [], errors: [], messages: [] };
  c.on('status', (s) => c.seen.statuses.push(s));
  c.on('error', (e) => c.seen.errors.push(e));
  c.on('message', (m) => c.seen.messages.push(m));
  return c;
}

async function withHub(args, fn) {
  const hub = await Hub.start({ args });
  try {
    await fn(hub);
  } finally {
    assert.equal(await hub.stop(), 0, 'hub exit status after SIGTERM\n' + hub.stderr);
  }
}

test('Node: a globally available WebSocket is there (Node 22, or 20 with --experimental-websocket)', () => {
  assert.equal(typeof globalThis.WebSocket, 'function', 'run with node --experimental-websocket on Node < 22');
});

test('Node: offline queue, subscribe, events in order, ping', () => withHub([], async (hub) => {
  const tenant = uniq('t');
  const c = client(hub, { token: hub.token(tenant, 'alice'), autoConnect: false });
  const early = c.ping(); // queued: not connected yet
  assert.equal(c.queued, 1);
  const got = [];
  const off = c.subscribe('job:1', (ev) => got.push([ev.offset, ev.data.progress]));
  c.connect();
  assert.equal((await early).type, 'pong');
  const info = await off.ready;
  assert.equal(info.channel, 'job:1');
  for (let i = 1; i <= 30; i++) await hub.progress(tenant, '1', '', i);
  await until(() => got.length === 30, '30 events');
  assert.deepEqual(got, Array.from({ length: 30 }, (_, i) => [i + 1, i + 1]));
  off();
  await until(() => c.seen.messages.some((m) => m.type === 'unsubscribed'), 'unsubscribed');
  c.close();
}));

test('Node: a hub shutdown (1001) is survived; the new hub reports recovered:false', async () => {
  let hub = await Hub.start();
  const port = hub.wsPort;
  const tenant = uniq('t');
  const c = client(hub, { token: hub.token(tenant, 'alice') });
  const recoveries = [];
  c.on('recovery', (r) => recoveries.push(r));
  try {
    const off = c.subscribe('job:9', () => {});
    await off.ready;
    await hub.progress(tenant, '9', '', 5);
    await until(() => c.subscriptions()[0].offset === 1, 'the event');
    assert.equal(await hub.stop(), 0, hub.stderr);
    await until(() => c.seen.statuses.some((s) => s.status === 'disconnected' && s.code === 1001), 'close 1001');
    // Same port, so the client's URL works again (free again after the stop).
    hub = await Hub.start({ secret: hub.secret, args: ['--ws-port', String(port)] }).catch((e) => { hub = null; throw e; });
    await until(() => recoveries.length === 1, 'a recovery report');
    assert.equal(recoveries[0].channel, 'job:9');
    assert.equal(recoveries[0].recovered, false);
    assert.deepEqual(recoveries[0].since, { offset: 1, epoch: c.seen.messages.find((m) => m.type === 'job:progress').epoch });
    assert.equal(c.status, 'connected');
  } finally {
    c.close();
    if (hub) assert.equal(await hub.stop(), 0, hub.stderr);
  }
});

test('Node: 20 subscriptions come back after a reconnect without tripping the hub\'s rate limit', async () => {
  let hub = await Hub.start();
  const port = hub.wsPort;
  const tenant = uniq('t');
  const c = client(hub, { token: hub.token(tenant, 'alice') });
  const channels = Array.from({ length: 20 }, (_, i) => 'job:' + i);
  const got = new Set();
  try {
    await Promise.all(channels.map((ch) => c.subscribe(ch, (ev) => got.add(ev.channel)).ready));
    assert.equal(await hub.stop(), 0, hub.stderr);
    hub = await Hub.start({ secret: hub.secret, args: ['--ws-port', String(port)] }).catch((e) => { hub = null; throw e; });
    await until(() => c.seen.messages.filter((m) => m.type === 'subscribed').length === 40, 'all 20 re-subscribed');
    for (const ch of channels) await hub.progress(tenant, ch.slice(4), '', 1);
    await until(() => got.size === 20, 'an event on every channel');
    assert.deepEqual(c.seen.errors.map((e) => e.code), []);
    assert.ok(!c.seen.statuses.some((s) => s.code === 1008), 'never closed for rate abuse');
  } finally {
    c.close();
    if (hub) assert.equal(await hub.stop(), 0, hub.stderr);
  }
});

test('Node: refresh keeps the session past the first token\'s exp (issue 3)', (t) => withHub(['--jwt-leeway', '0'], async (hub) => {
  const tenant = uniq('t');
  let n = 0;
  const c = client(hub, { getToken: () => { n++; return hub.token(tenant, 'alice', 3); } });
  await until(() => c.status === 'connected', 'connected');
  const first = c.clientId;
  // Refreshes come at a third of the remaining lifetime: wait for two.
  await until(() => c.seen.messages.filter((m) => m.type === 'refreshed').length >= 2 ||
                    c.seen.messages.some((m) => m.type === 'error' && m.code === 'BAD_REQUEST') ||
                    c.seen.statuses.some((s) => s.status === 'disconnected'), 'two refreshes');
  if (c.seen.messages.some((m) => m.type === 'error' && m.code === 'BAD_REQUEST' && /refresh|reserved/i.test(m.message))) {
    c.close();
    assert.fail('this hub answers refresh with BAD_REQUEST (in-session refresh comes with issue 3)');
  }
  assert.deepEqual(c.seen.statuses.filter((s) => s.status === 'disconnected'), [], 'no reconnect while refreshing');
  assert.equal(c.clientId, first);
  assert.ok(n >= 3, 'getToken() was called for each refresh');
  const r = c.seen.messages.find((m) => m.type === 'refreshed');
  assert.equal(typeof r.exp, 'number');
  c.close();
}));

test('Node: an expired session closes with 4001; the client gets a token and reconnects (issue 3)', (t) => withHub(['--jwt-leeway', '0'], async (hub) => {
  const tenant = uniq('t');
  let n = 0;
  // refreshMargin far below zero: no refresh before exp, so the hub's expiry close happens.
  const c = client(hub, { getToken: () => { n++; return hub.token(tenant, 'alice', n === 1 ? 2 : 3600); }, refreshMargin: -600000 });
  await until(() => c.status === 'connected', 'connected');
  const first = c.clientId;
  const deadline = Date.now() + 8000;
  while (!c.seen.statuses.some((s) => s.code === 4001) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
  if (!c.seen.statuses.some((s) => s.code === 4001)) {
    c.close();
    assert.fail('this hub keeps a connection open past its token\'s exp (close 4001 comes with issue 3)');
  }
  await until(() => c.status === 'connected' && c.clientId !== first, 'reconnected');
  assert.equal(n, 2, 'one new token for the reconnect');
  c.close();
}));

test('Node: the token as a Sec-WebSocket-Protocol entry (issue 3)', (t) => withHub([], async (hub) => {
  const token = hub.token(uniq('t'), 'alice');
  const probe = await new Promise((resolve) => {
    const ws = new WebSocket(`ws://127.0.0.1:${hub.wsPort}/ws`, ['livehub.v1', 'bearer.' + token]);
    ws.onopen = () => { resolve(ws.protocol); ws.close(); };
    ws.onerror = () => resolve(null);
  });
  if (probe === null) assert.fail('this hub refuses a token offered as a subprotocol (comes with issue 3)');
  assert.equal(probe, 'livehub.v1');
  const c = client(hub, { token, tokenTransport: 'protocol' });
  await until(() => c.status === 'connected', 'connected');
  assert.equal(c.connectedInfo.user, 'alice');
  c.close();
}));

test('Node: first-message auth (issue 3)', async (t) => {
  let hub;
  try {
    hub = await Hub.start({ args: ['--auth-timeout', '5'] });
  } catch (e) {
    assert.fail('this hub has no --auth-timeout (first-message auth comes with issue 3)');
  }
  try {
    const c = client(hub, { token: hub.token(uniq('t'), 'bob'), tokenTransport: 'message' });
    await until(() => c.status === 'connected', 'connected');
    assert.equal(c.connectedInfo.user, 'bob');
    c.close();
  } finally {
    assert.equal(await hub.stop(), 0, hub.stderr);
  }
});

test('Node: a refused refresh (4500) stops the client for good (issue 3)', (t) => withHub([], async (hub) => {
  const tenant = uniq('t');
  let n = 0;
  // The second token names another user: the hub must refuse it.
  const c = client(hub, { getToken: () => hub.token(tenant, ++n === 1 ? 'alice' : 'mallory') });
  await until(() => c.status === 'connected', 'connected');
  const err = await c.refreshToken().then(() => null, (e) => e);
  if (err === null && !c.seen.statuses.some((s) => s.status === 'closed')) {
    c.close();
    assert.fail('this hub does not handle refresh (comes with issue 3)');
  }
  await until(() => c.status === 'closed', 'closed');
  assert.equal(c.lastClose.code, 4500);
  const closed = c.seen.statuses.find((s) => s.status === 'closed');
  assert.equal(closed.error.recoverable, false);
  await new Promise((r) => setTimeout(r, 500)); // a reconnect would be scheduled within 200 ms
  assert.equal(c.status, 'closed');
}));

test('Node: Disconnect RPC: 4100 reconnects, 4501 stops (issue 3/4)', (t) => withHub([], async (hub) => {
  if (typeof hub.client.Disconnect !== 'function') assert.fail('no Disconnect RPC in proto/ yet');
  const tenant = uniq('t');
  const c = client(hub, { token: hub.token(tenant, 'alice') });
  await until(() => c.status === 'connected', 'connected');
  const first = c.clientId;
  try {
    await hub.call('Disconnect', { tenantId: tenant, clientId: first, reconnect: true });
  } catch (e) {
    c.close();
    if (e.code === 12) assert.fail('Disconnect is not implemented by this hub (UNIMPLEMENTED)');
    throw e;
  }
  await until(() => c.status === 'connected' && c.clientId !== first, 'reconnected after 4100');
  assert.ok(c.seen.statuses.some((s) => s.code === 4100));
  await hub.call('Disconnect', { tenantId: tenant, clientId: c.clientId, reconnect: false });
  await until(() => c.status === 'closed', 'stopped after 4501');
  assert.equal(c.lastClose.code, 4501);
}));

test('Node: presence, join events and client events (issue 4)', async (t) => {
  let hub;
  try {
    hub = await Hub.start({ args: ['--client-events', 'board:*', '--presence-channels', 'board:*'] });
  } catch (e) {
    assert.fail('this hub has no --client-events / --presence-channels (presence comes with issue 4)');
  }
  const tenant = uniq('t');
  const a = client(hub, { token: hub.token(tenant, 'alice') });
  const b = client(hub, { token: hub.token(tenant, 'bob') });
  try {
    const onBoard = [];
    await b.subscribe('board:1', (ev) => onBoard.push(ev)).ready;
    await a.subscribe('board:1', () => {}).ready;
    await until(() => onBoard.some((ev) => ev.type === 'presence:join' && ev.user === 'alice'), 'presence:join of alice at bob');
    const pres = await a.presence('board:1');
    assert.equal(pres.type, 'presence');
    assert.equal(pres.connections, 2);
    assert.deepEqual(pres.users.map((u) => u.user).sort(), ['alice', 'bob']);
    const before = b.subscriptions()[0].offset;
    const reply = await a.publish('board:1', 'typing', { field: 'title' });
    assert.equal(reply.type, 'published');
    await until(() => onBoard.some((ev) => ev.type === 'client:typing'), 'client:typing at bob');
    const ev = onBoard.find((e) => e.type === 'client:typing');
    assert.equal(ev.user, 'alice');
    assert.equal(ev.clientId, a.clientId);
    assert.deepEqual(ev.data, { field: 'title' });
    // A client event has no offset: it never moves the recovery position.
    assert.equal(b.subscriptions()[0].offset, before);
    a.close();
    await until(() => onBoard.some((e) => e.type === 'presence:leave' && e.user === 'alice'), 'presence:leave of alice');
  } finally {
    a.close();
    b.close();
    assert.equal(await hub.stop(), 0, hub.stderr);
  }
});
