// Unit tests of livehub.js with a mock WebSocket and mocked timers:
//   node --test clients/js/test/
import { test, mock, beforeEach, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import {
  LiveHub, LiveHubError, backoffCeiling, backoffDelay, closeAction, splitFrame, tokenExpiry, refreshDelay,
} from '../livehub.js';

// ---- a scripted WebSocket ----------------------------------------------------

class MockSocket {
  static all = [];
  constructor(url, protocols) {
    this.url = url;
    this.protocols = protocols;
    this.sent = [];
    this.closed = null;
    this.onopen = this.onmessage = this.onerror = this.onclose = null;
    MockSocket.all.push(this);
  }
  static last() {
    return MockSocket.all[MockSocket.all.length - 1];
  }
  send(s) {
    if (this.closed) throw new Error('send on a closed socket');
    this.sent.push(JSON.parse(s));
  }
  close(code, reason) {
    this.closed = { code, reason };
  }
  // Test side:
  open() {
    this.onopen && this.onopen({});
  }
  frame(...msgs) {
    this.onmessage && this.onmessage({ data: msgs.map((m) => (typeof m === 'string' ? m : JSON.stringify(m))).join('\n') });
  }
  connected(heartbeat = { pingInterval: 30, pingTimeout: 90 }) {
    this.open();
    this.frame({ type: 'connected', clientId: 'c1', version: 1, tenant: 't', user: 'u', heartbeat });
  }
  serverClose(code, reason = '') {
    this.closed = this.closed || { code, reason };
    this.onclose && this.onclose({ code, reason });
  }
  lastSent(type) {
    return [...this.sent].reverse().find((m) => m.type === type);
  }
}

function jwt(claims) {
  const b64 = (o) => Buffer.from(JSON.stringify(o)).toString('base64url');
  return b64({ alg: 'HS256', typ: 'JWT' }) + '.' + b64(claims) + '.sig';
}

const NOW0 = 1_700_000_000_000;
let clock;
beforeEach(() => {
  MockSocket.all = [];
  mock.timers.enable({ apis: ['setTimeout', 'setInterval', 'Date'], now: NOW0 });
  clock = mock.timers;
});
afterEach(() => mock.timers.reset());

const flush = () => new Promise((r) => setImmediate(r)); // let awaited getToken() settle
// setImmediate is not mocked: the promise jobs of _open() run on it.

function client(extra = {}) {
  return new LiveHub('ws://hub.test/ws', { token: jwt({ sub: 'u', exp: NOW0 / 1000 + 3600 }), WebSocket: MockSocket, random: () => 0.5, watchNetwork: false, ...extra });
}

async function connectedClient(extra) {
  const c = client(extra);
  await flush();
  MockSocket.last().connected();
  assert.equal(c.status, 'connected');
  return c;
}

// ---- pure helpers ------------------------------------------------------------------

test('backoff ceilings double from 1 s and stop at 30 s', () => {
  const got = [0, 1, 2, 3, 4, 5, 6, 7, 50].map((n) => backoffCeiling(n));
  assert.deepEqual(got, [1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000, 30000]);
  assert.deepEqual([0, 1, 2].map((n) => backoffCeiling(n, { initial: 100, max: 250, factor: 3 })), [100, 250, 250]);
});

test('full jitter stays within [0, ceiling) and spans it', () => {
  for (let n = 0; n < 10; n++) {
    const ceil = backoffCeiling(n);
    assert.equal(backoffDelay(n, undefined, () => 0), 0);
    assert.ok(backoffDelay(n, undefined, () => 0.999999) < ceil);
    assert.ok(backoffDelay(n, undefined, () => 0.999999) >= ceil - 1);
    for (let i = 0; i < 200; i++) {
      const d = backoffDelay(n);
      assert.ok(d >= 0 && d < ceil, `attempt ${n}: ${d} outside [0, ${ceil})`);
    }
  }
  assert.equal(backoffDelay(3, { jitter: 'none' }), 8000);
});

test('close codes: reconnect, refresh, stop', () => {
  for (const c of [1000, 1001, 1006, 1011, 4000, 4002, 4100, 4499, 3001]) assert.equal(closeAction(c), 'reconnect', String(c));
  assert.equal(closeAction(4001), 'refresh');
  for (const c of [1008, 4500, 4501, 4999]) assert.equal(closeAction(c), 'stop', String(c));
});

test('frames split on newlines; bad lines are reported, not fatal', () => {
  const { messages, errors } = splitFrame('{"type":"a"}\n{"type":"b","x":"l1\\nl2"}\n\nnot json\n[1]\n');
  assert.deepEqual(messages, [{ type: 'a' }, { type: 'b', x: 'l1\nl2' }]);
  assert.deepEqual(errors, ['not json', '[1]']);
});

test('token expiry is read from the payload; refresh comes ahead of it', () => {
  assert.equal(tokenExpiry(jwt({ exp: 1234 })), 1234);
  assert.equal(tokenExpiry(jwt({ sub: 'x' })), null);
  assert.equal(tokenExpiry('garbage'), null);
  assert.equal(refreshDelay(3_600_000, 0, 60_000), 3_540_000);
  assert.equal(refreshDelay(30_000, 0, 60_000), 10_000); // short token: a third of its life
  assert.equal(refreshDelay(0, 5, 60_000), 0);
});

// ---- the client --------------------------------------------------------------------

test('connects with the token in the query, or in Sec-WebSocket-Protocol', async () => {
  const t = jwt({ sub: 'u' });
  new LiveHub('ws://h/ws', { token: t, WebSocket: MockSocket, watchNetwork: false });
  await flush();
  assert.equal(MockSocket.last().url, 'ws://h/ws?token=' + t);
  new LiveHub('ws://h/ws', { token: t, WebSocket: MockSocket, tokenTransport: 'protocol', watchNetwork: false });
  await flush();
  assert.equal(MockSocket.last().url, 'ws://h/ws');
  assert.deepEqual(MockSocket.last().protocols, ['livehub.v1', 'bearer.' + t]);
  const c = new LiveHub('ws://h/ws', { token: t, WebSocket: MockSocket, tokenTransport: 'message', watchNetwork: false });
  await flush();
  MockSocket.last().open();
  assert.deepEqual(MockSocket.last().sent[0], { type: 'auth', token: t });
  c.close();
});

test('reconnects with the backoff schedule and resets it once connected', async () => {
  const c = client({ random: () => 0.999 });
  const delays = [];
  c.on('status', (s) => s.status === 'disconnected' && delays.push(s.delay));
  await flush();
  for (let i = 0; i < 7; i++) {
    MockSocket.last().serverClose(1006);
    clock.tick(delays[delays.length - 1]);
    await flush();
  }
  assert.deepEqual(delays, [999, 1998, 3996, 7992, 15984, 29970, 29970]);
  assert.equal(MockSocket.all.length, 8);
  MockSocket.last().connected();
  MockSocket.last().serverClose(1001);
  assert.equal(delays[delays.length - 1], 999);
  c.close();
});

test('4500, 4501 and 1008 stop the client and surface the error', async () => {
  for (const code of [4500, 4501, 1008]) {
    MockSocket.all = [];
    const c = await connectedClient();
    const errors = [];
    c.on('error', (e) => errors.push(e));
    const pending = c.ping();
    MockSocket.last().serverClose(code, 'bye');
    assert.equal(c.status, 'closed');
    assert.equal(errors.length, 1);
    assert.equal(errors[0].closeCode, code);
    assert.equal(errors[0].recoverable, false);
    await assert.rejects(pending, (e) => e instanceof LiveHubError);
    clock.tick(60_000);
    await flush();
    assert.equal(MockSocket.all.length, 1, 'no reconnect after ' + code);
  }
});

test('4001 gets a fresh token from getToken() before reconnecting', async () => {
  let n = 0;
  const tokens = [];
  const c = new LiveHub('ws://h/ws', {
    getToken: async () => { n++; const t = jwt({ sub: 'u', n, exp: Date.now() / 1000 + 3600 }); tokens.push(t); return t; },
    WebSocket: MockSocket, random: () => 0, watchNetwork: false,
  });
  await flush();
  assert.equal(n, 1);
  MockSocket.last().connected();
  MockSocket.last().serverClose(4001, 'TOKEN_EXPIRED');
  clock.tick(0);
  await flush();
  assert.equal(n, 2);
  assert.equal(MockSocket.last().url, 'ws://h/ws?token=' + tokens[1]);
  // 4000–4499 other than 4001 reconnect with the same (still valid) token.
  MockSocket.last().connected();
  MockSocket.last().serverClose(4100);
  clock.tick(0);
  await flush();
  assert.equal(n, 2);
  assert.equal(MockSocket.all.length, 3);
  c.close();
});

test('an expired static token stops instead of hammering the hub', async () => {
  const c = new LiveHub('ws://h/ws', { token: jwt({ sub: 'u', exp: NOW0 / 1000 - 10 }), WebSocket: MockSocket, watchNetwork: false });
  const errs = [];
  c.on('error', (e) => errs.push(e.code));
  await flush();
  assert.equal(MockSocket.all.length, 0);
  assert.equal(c.status, 'closed');
  assert.deepEqual(errs, ['TOKEN_EXPIRED']);
});

test('the token is refreshed ahead of exp with a refresh message', async () => {
  let n = 0;
  const c = new LiveHub('ws://h/ws', {
    getToken: () => jwt({ sub: 'u', n: ++n, exp: Date.now() / 1000 + 600 }), refreshMargin: 60_000,
    pingInterval: 1e8, pingTimeout: 1e8, // the mock answers no pings
    WebSocket: MockSocket, watchNetwork: false,
  });
  await flush();
  const ws = MockSocket.last();
  ws.connected();
  clock.tick(539_000);
  await flush();
  assert.equal(ws.lastSent('refresh'), undefined);
  clock.tick(1_000);
  await flush();
  const r = ws.lastSent('refresh');
  assert.ok(r, 'refresh sent at exp - 60 s');
  assert.equal(n, 2);
  assert.equal(tokenExpiry(r.token), NOW0 / 1000 + 540 + 600);
  ws.frame({ type: 'refreshed', exp: tokenExpiry(r.token), id: r.id });
  c.close();
});

test('subscribe, events to handlers and on(type), unsubscribe after the last handler', async () => {
  const c = await connectedClient();
  const ws = MockSocket.last();
  const a = [], b = [], typed = [];
  const offA = c.subscribe('job:1', (e) => a.push(e.offset));
  const offB = c.subscribe('job:1', (e) => b.push(e.offset));
  c.on('job:progress', (e) => typed.push(e.channel));
  const sub = ws.lastSent('subscribe');
  assert.equal(ws.sent.filter((m) => m.type === 'subscribe').length, 1);
  ws.frame({ type: 'subscribed', channel: 'job:1', id: sub.id, offset: 0, epoch: 'e1' });
  const info = await offA.ready;
  assert.equal(info.offset, 0);
  ws.frame({ type: 'job:progress', channel: 'job:1', offset: 1, epoch: 'e1', data: {} },
           { type: 'job:progress', channel: 'job:1', offset: 2, epoch: 'e1', data: {} });
  assert.deepEqual(a, [1, 2]);
  assert.deepEqual(b, [1, 2]);
  assert.deepEqual(typed, ['job:1', 'job:1']);
  offA();
  assert.equal(ws.lastSent('unsubscribe'), undefined);
  offB();
  assert.equal(ws.lastSent('unsubscribe').channel, 'job:1');
  c.close();
});

test('re-subscribes with since after a reconnect; recovered events are not duplicated', async () => {
  const c = await connectedClient();
  let ws = MockSocket.last();
  const got = [], recovery = [];
  c.subscribe('job:1', (e) => got.push(e.offset));
  c.on('recovery', (r) => recovery.push(r));
  ws.frame({ type: 'subscribed', channel: 'job:1', id: ws.lastSent('subscribe').id, offset: 3, epoch: 'e1' });
  ws.frame({ type: 'job:progress', channel: 'job:1', offset: 4, epoch: 'e1' });
  ws.serverClose(1006);
  clock.tick(1000);
  await flush();
  ws = MockSocket.last();
  ws.connected();
  const s = ws.lastSent('subscribe');
  assert.deepEqual(s.since, { offset: 4, epoch: 'e1' });
  ws.frame({ type: 'subscribed', channel: 'job:1', id: s.id, offset: 6, epoch: 'e1', recovered: true },
           { type: 'job:progress', channel: 'job:1', offset: 4, epoch: 'e1' }, // overlap: dropped
           { type: 'job:progress', channel: 'job:1', offset: 5, epoch: 'e1' },
           { type: 'job:progress', channel: 'job:1', offset: 6, epoch: 'e1' });
  assert.deepEqual(got, [4, 5, 6]);
  assert.deepEqual(recovery.map((r) => r.recovered), [true]);
  // History lost (hub restarted): recovered:false is surfaced, the new epoch starts over.
  ws.serverClose(1001);
  clock.tick(1000);
  await flush();
  ws = MockSocket.last();
  ws.connected();
  const s2 = ws.lastSent('subscribe');
  assert.deepEqual(s2.since, { offset: 6, epoch: 'e1' });
  ws.frame({ type: 'subscribed', channel: 'job:1', id: s2.id, offset: 0, epoch: 'e2', recovered: false },
           { type: 'job:progress', channel: 'job:1', offset: 1, epoch: 'e2' });
  assert.deepEqual(recovery.map((r) => r.recovered), [true, false]);
  assert.deepEqual(got, [4, 5, 6, 1]);
  c.close();
});

test('a hub without history (no recovered field) is reported as recovered:false', async () => {
  const c = await connectedClient();
  let ws = MockSocket.last();
  const recovery = [];
  c.on('recovery', (r) => recovery.push(r.recovered));
  c.subscribe('job:1', () => {});
  ws.frame({ type: 'subscribed', channel: 'job:1', id: ws.lastSent('subscribe').id },
           { type: 'job:progress', channel: 'job:1', offset: 1, epoch: 'e1' });
  ws.serverClose(1006);
  clock.tick(1000);
  await flush();
  ws = MockSocket.last();
  ws.connected();
  ws.frame({ type: 'subscribed', channel: 'job:1', id: ws.lastSent('subscribe').id });
  assert.deepEqual(recovery, [false]);
  c.close();
});

test('requests wait in a bounded offline queue and go out once connected', async () => {
  const c = client({ offlineQueueSize: 2 });
  await flush();
  const p1 = c.ping();
  const p2 = c.request({ type: 'presence', channel: 'board:1' });
  await assert.rejects(c.ping(), (e) => e.code === 'OFFLINE_QUEUE_FULL');
  assert.equal(c.queued, 2);
  const ws = MockSocket.last();
  ws.connected();
  assert.equal(c.queued, 0);
  const [ping, pres] = ws.sent;
  assert.equal(ping.type, 'ping');
  assert.equal(pres.type, 'presence');
  ws.frame({ type: 'pong', id: ping.id }, { type: 'error', code: 'BAD_REQUEST', message: 'no', recoverable: true, id: pres.id });
  assert.deepEqual(await p1, { type: 'pong', id: ping.id });
  await assert.rejects(p2, (e) => e.code === 'BAD_REQUEST' && e.recoverable === true);
  c.close();
});

test('requests in flight fail with DISCONNECTED; timeouts reject', async () => {
  const c = await connectedClient({ requestTimeout: 5000 });
  const p = c.ping();
  MockSocket.last().serverClose(1006);
  await assert.rejects(p, (e) => e.code === 'DISCONNECTED');
  clock.tick(1000);
  await flush();
  MockSocket.last().connected();
  const q = c.ping();
  clock.tick(5000);
  await assert.rejects(q, (e) => e.code === 'TIMEOUT');
  c.close();
});

test('the heartbeat watchdog drops a silent connection and pings keep it alive', async () => {
  const c = client();
  await flush();
  let ws = MockSocket.last();
  ws.connected({ pingInterval: 2, pingTimeout: 5 });
  clock.tick(2000);
  assert.equal(ws.lastSent('ping').type, 'ping', 'app-level ping every pingInterval');
  ws.frame({ type: 'pong' });
  clock.tick(4999);
  assert.equal(c.status, 'connected');
  clock.tick(1);
  assert.equal(c.status, 'disconnected');
  assert.equal(ws.closed.code, 3001);
  clock.tick(1000);
  await flush();
  assert.equal(MockSocket.all.length, 2);
  c.close();
});

test('subscribe errors reject ready and reach on(error)', async () => {
  const c = await connectedClient();
  const ws = MockSocket.last();
  const errs = [];
  c.on('error', (e) => errs.push(e));
  const off = c.subscribe('$tenant', () => {});
  ws.frame({ type: 'error', code: 'CHANNEL_ACCESS_DENIED', message: 'reserved', recoverable: true, id: ws.lastSent('subscribe').id });
  await assert.rejects(off.ready, (e) => e.code === 'CHANNEL_ACCESS_DENIED' && e.channel === '$tenant');
  assert.equal(errs[0].code, 'CHANNEL_ACCESS_DENIED');
  assert.deepEqual(c.subscriptions(), []);
  c.close();
});

test('browser offline/online events drop and restore the connection', async () => {
  const listeners = {};
  globalThis.window = { addEventListener: (n, f) => (listeners[n] = f), removeEventListener: (n) => delete listeners[n] };
  try {
    const c = client({ watchNetwork: true });
    await flush();
    MockSocket.last().connected();
    listeners.offline();
    assert.equal(c.status, 'disconnected');
    clock.tick(120_000);
    await flush();
    assert.equal(MockSocket.all.length, 1, 'no reconnect while offline');
    listeners.online();
    await flush();
    assert.equal(MockSocket.all.length, 2);
    MockSocket.last().connected();
    assert.equal(c.status, 'connected');
    c.close();
    assert.equal(listeners.online, undefined);
  } finally {
    delete globalThis.window;
  }
});

test('a Node without a global WebSocket needs the option', () => {
  const saved = globalThis.WebSocket;
  delete globalThis.WebSocket;
  try {
    assert.throws(() => new LiveHub('ws://h/ws', { token: 'x' }), /pass options.WebSocket/);
  } finally {
    if (saved) globalThis.WebSocket = saved;
  }
});

test('events on $tenant are recovered after a reconnect; a refusal is recovered:false', async () => {
  const c = await connectedClient();
  let ws = MockSocket.last();
  const got = [], recovery = [];
  c.on('price:updated', (e) => got.push(e.offset));
  c.on('recovery', (r) => recovery.push([r.channel, r.recovered]));
  ws.frame({ type: 'price:updated', channel: '$tenant', offset: 3, epoch: 't1', data: {} });
  ws.serverClose(1006);
  clock.tick(1000);
  await flush();
  ws = MockSocket.last();
  ws.connected();
  const s = ws.lastSent('subscribe');
  assert.deepEqual(s, { type: 'subscribe', channel: '$tenant', since: { offset: 3, epoch: 't1' }, id: s.id });
  ws.frame({ type: 'subscribed', channel: '$tenant', id: s.id, offset: 5, epoch: 't1', recovered: true },
           { type: 'price:updated', channel: '$tenant', offset: 3, epoch: 't1', data: {} },
           { type: 'price:updated', channel: '$tenant', offset: 4, epoch: 't1', data: {} },
           { type: 'price:updated', channel: '$tenant', offset: 5, epoch: 't1', data: {} });
  assert.deepEqual(got, [3, 4, 5]);
  ws.serverClose(1006);
  clock.tick(1000);
  await flush();
  ws = MockSocket.last();
  ws.connected();
  const s2 = ws.lastSent('subscribe');
  ws.frame({ type: 'error', code: 'CHANNEL_ACCESS_DENIED', message: 'reserved', recoverable: true, id: s2.id });
  assert.deepEqual(recovery, [['$tenant', true], ['$tenant', false]]);
  c.close();
});

test('a connect that hangs is given up after connectTimeout; an error before open reconnects', async () => {
  const c = client({ connectTimeout: 5000, random: () => 0.5 });
  await flush();
  const first = MockSocket.last();
  clock.tick(4999);
  assert.equal(c.status, 'connecting');
  clock.tick(1);
  assert.equal(c.status, 'disconnected');
  assert.equal(first.closed.code, 3001);
  clock.tick(500);
  await flush();
  const second = MockSocket.last();
  assert.notEqual(second, first);
  second.onerror({}); // refused: some WebSocket implementations send no close after it
  assert.equal(c.status, 'disconnected');
  clock.tick(1000);
  await flush();
  assert.equal(MockSocket.all.length, 3);
  second.serverClose(1006); // a late close of the old socket changes nothing
  assert.equal(MockSocket.all.length, 3);
  MockSocket.last().connected();
  assert.equal(c.status, 'connected');
  c.close();
});

test('outgoing messages are paced like the hub\'s rate limit (10 at once, then 100 a minute)', async () => {
  const c = client();
  for (let i = 0; i < 15; i++) c.subscribe('job:' + i, () => {});
  await flush();
  const ws = MockSocket.last();
  ws.connected();
  const subs = () => ws.sent.filter((m) => m.type === 'subscribe').length;
  assert.equal(subs(), 10);
  clock.tick(599);
  assert.equal(subs(), 10);
  clock.tick(1);
  assert.equal(subs(), 11);
  clock.tick(600 * 4);
  assert.equal(subs(), 15);
  c.close();
});

test('RATE_LIMITED: a subscribe is sent again after retryAfter; a request rejects with it', async () => {
  const c = await connectedClient({ rateLimit: false });
  const ws = MockSocket.last();
  const errs = [];
  c.on('error', (e) => errs.push(e));
  const off = c.subscribe('job:1', () => {});
  const s1 = ws.lastSent('subscribe');
  ws.frame({ type: 'error', code: 'RATE_LIMITED', message: 'slow down', retryAfter: 700, recoverable: true, id: s1.id });
  assert.deepEqual(c.subscriptions().map((s) => s.channel), ['job:1'], 'still wanted');
  const p = c.ping();
  clock.tick(699);
  assert.equal(ws.sent.filter((m) => m.type === 'subscribe').length, 1);
  assert.equal(ws.lastSent('ping'), undefined, 'nothing goes out during the pause');
  clock.tick(1);
  const s2 = ws.lastSent('subscribe');
  assert.notEqual(s2.id, s1.id);
  ws.frame({ type: 'subscribed', channel: 'job:1', id: s2.id });
  assert.equal((await off.ready).channel, 'job:1');
  const ping = ws.lastSent('ping');
  ws.frame({ type: 'error', code: 'RATE_LIMITED', message: 'slow down', retryAfter: 300, recoverable: true, id: ping.id });
  await assert.rejects(p, (e) => e.code === 'RATE_LIMITED' && e.retryAfter === 300);
  assert.deepEqual(errs, []);
  c.close();
});

test('close() then connect() keeps the subscriptions and re-sends them', async () => {
  const c = await connectedClient();
  let ws = MockSocket.last();
  const errs = [];
  c.on('error', (e) => errs.push(e.code));
  const off = c.subscribe('job:5', () => {});
  c.close(); // before the reply
  assert.equal(c.status, 'closed');
  c.connect();
  await flush();
  ws = MockSocket.last();
  ws.connected();
  const s = ws.lastSent('subscribe');
  assert.equal(s.channel, 'job:5');
  ws.frame({ type: 'subscribed', channel: 'job:5', id: s.id });
  assert.equal((await off.ready).channel, 'job:5');
  assert.deepEqual(errs, []);
  c.close();
});
