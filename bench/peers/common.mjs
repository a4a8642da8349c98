// Shared pieces of the Node peer hubs: JWT HS256 verification, channel
// bookkeeping (tenant-keyed channels, per-channel offsets, one epoch per
// process), the event envelope of docs/PROTOCOL.md and the livehub gRPC API
// served with @grpc/grpc-js. Each hub supplies only its transport: how a
// connection joins and leaves a channel and how one event string reaches the
// channel's sockets.
//
// These peers are what a Node team would write by hand (seed 004): no
// batching, no history, no backpressure limits. They exist to be measured.

import crypto from 'node:crypto';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import grpc from '@grpc/grpc-js';
import protoLoader from '@grpc/proto-loader';

const here = path.dirname(fileURLToPath(import.meta.url));
export const PROTO_ROOT = process.env.LIVEHUB_PROTO_ROOT || path.resolve(here, '../../proto');

// Fault injection, only to prove that the load generator's checks catch
// what they claim to: BENCH_FAULT=gap skips an offset every 100
// publications, dup sends every 100th event twice, leak also delivers each
// event to the same-named channel of tenant `bx` (node-ws-hub only).
// BENCH_FRAMING=split|batch exercises the load generator's frame parsing:
// every event in two fragments, or the events of one tick joined with `\n`
// into one frame (node-ws-hub only; not faults, the checks must pass).
export const FRAMING = process.env.BENCH_FRAMING || '';
export const FAULT = process.env.BENCH_FAULT || '';

const CHANNEL_RE = /^[A-Za-z0-9_.:@+=/-]{1,160}$/;

export function parseArgs(argv) {
  const o = { wsHost: '127.0.0.1', wsPort: 8080, grpcHost: '127.0.0.1', grpcPort: 50051,
    secret: process.env.LIVEHUB_JWT_SECRET || 'dev-secret', tenantClaim: 'tenant_id' };
  for (let i = 2; i < argv.length; i++) {
    const a = argv[i], v = argv[i + 1];
    if (a === '--ws-port') { o.wsPort = +v; i++; }
    else if (a === '--ws-host') { o.wsHost = v; i++; }
    else if (a === '--grpc-port') { o.grpcPort = +v; i++; }
    else if (a === '--grpc-host') { o.grpcHost = v; i++; }
    else if (a === '--jwt-secret') { o.secret = v; i++; }
    else { console.error(`unknown argument ${a}`); process.exit(2); }
  }
  return o;
}

function b64urlDecode(s) {
  return Buffer.from(s.replace(/-/g, '+').replace(/_/g, '/'), 'base64');
}

// Verifies an HS256 JWT; returns {tenant, user} or null.
export function verifyJwt(token, secret, tenantClaim = 'tenant_id') {
  if (typeof token !== 'string') return null;
  const parts = token.split('.');
  if (parts.length !== 3) return null;
  const mac = crypto.createHmac('sha256', secret).update(parts[0] + '.' + parts[1]).digest();
  const sig = b64urlDecode(parts[2]);
  if (sig.length !== mac.length || !crypto.timingSafeEqual(sig, mac)) return null;
  let hdr, claims;
  try {
    hdr = JSON.parse(b64urlDecode(parts[0]).toString());
    claims = JSON.parse(b64urlDecode(parts[1]).toString());
  } catch { return null; }
  if (hdr.alg !== 'HS256') return null;
  const now = Date.now() / 1000;
  if (typeof claims.exp === 'number' && now > claims.exp + 30) return null;
  if (typeof claims.nbf === 'number' && now + 30 < claims.nbf) return null;
  const tenant = claims[tenantClaim], user = claims.sub;
  if (typeof tenant !== 'string' || !/^[A-Za-z0-9_.-]{1,64}$/.test(tenant)) return null;
  if (typeof user !== 'string' || !/^[A-Za-z0-9_.:@+-]{1,128}$/.test(user)) return null;
  return { tenant, user };
}

export function tokenFromRequest(url, headers) {
  const auth = headers.authorization;
  if (auth && auth.startsWith('Bearer ')) return auth.slice(7).trim();
  const q = url.indexOf('?');
  if (q < 0) return null;
  return new URLSearchParams(url.slice(q + 1)).get('token');
}

export const channelKey = (tenant, channel) => `${tenant}\u0000${channel}`;

// The channel registry: key -> {subs: Set, offset}. The transport decides
// what a subscriber is (a ws socket, a Socket.IO room name).
export class Hub {
  constructor() {
    this.channels = new Map();
    this.epoch = crypto.randomBytes(8).toString('hex');
    this.stats = { connections: 0, connectionsTotal: 0, subscriptions: 0, published: 0,
      delivered: 0, received: 0, started: Date.now() };
  }

  channel(key) {
    let c = this.channels.get(key);
    if (!c) { c = { subs: new Set(), offset: 0 }; this.channels.set(key, c); }
    return c;
  }

  // Builds the event envelope for one channel (offset taken here) and
  // returns [event, position, channelState]; the transport serializes the
  // event once.
  envelope(tenant, channel, type, data) {
    const c = this.channel(channelKey(tenant, channel));
    if (FAULT === 'gap' && c.offset % 100 === 99) c.offset++;
    const offset = ++c.offset;
    this.stats.published++;
    const ev = { type, channel, offset, epoch: this.epoch, ts: Date.now(), data };
    return [ev, { channel, offset: String(offset), epoch: this.epoch, subscribers: 0 }, c];
  }
}

export function validChannel(name) {
  return typeof name === 'string' && CHANNEL_RE.test(name) && name[0] !== '$';
}

// Client request handling shared by both hubs. `ops` gives join(key, name)
// and leave(key, name) for the connection; `reply(obj)` sends one message.
export function handleClientMessage(hub, conn, msg, ops, reply) {
  hub.stats.received++;
  if (msg === null || typeof msg !== 'object' || typeof msg.type !== 'string') {
    reply({ type: 'error', code: 'PROTOCOL_ERROR', message: 'not a JSON object with a string "type"', recoverable: true });
    return;
  }
  const withId = (o) => { if (msg.id !== undefined) o.id = msg.id; return o; };
  if (msg.type === 'ping') { reply(withId({ type: 'pong' })); return; }
  if (msg.type !== 'subscribe' && msg.type !== 'unsubscribe') {
    reply(withId({ type: 'error', code: 'PROTOCOL_ERROR', message: 'unknown type', recoverable: true }));
    return;
  }
  let name = msg.channel;
  if (name === undefined && typeof msg.projectId === 'string') name = `project:${msg.projectId}`;
  if (!validChannel(name)) {
    reply(withId({ type: 'error', code: typeof name === 'string' && name[0] === '$' ? 'CHANNEL_ACCESS_DENIED' : 'BAD_REQUEST',
      message: 'subscribe needs a valid "channel"', recoverable: true }));
    return;
  }
  const key = channelKey(conn.tenant, name);
  if (msg.type === 'subscribe') {
    if (!conn.channels.has(key)) {
      if (conn.channels.size >= 128) {
        reply(withId({ type: 'error', code: 'LIMIT_EXCEEDED', message: 'too many channels', recoverable: true }));
        return;
      }
      conn.channels.add(key); ops.join(key, name); hub.stats.subscriptions++;
    }
  } else if (conn.channels.delete(key)) {
    ops.leave(key, name); hub.stats.subscriptions--;
  }
  const r = withId({ type: msg.type === 'subscribe' ? 'subscribed' : 'unsubscribed', channel: name });
  if (msg.channel === undefined) r.projectId = msg.projectId;
  reply(r);
}

// google.protobuf.Struct / Value (proto-loader object form) -> plain JSON.
function valueToJson(v) {
  if (!v) return null;
  switch (v.kind) {
  case 'nullValue': return null;
  case 'numberValue': return v.numberValue;
  case 'stringValue': return v.stringValue;
  case 'boolValue': return v.boolValue;
  case 'structValue': return structToJson(v.structValue);
  case 'listValue': return (v.listValue.values || []).map(valueToJson);
  default: return null;
  }
}

export function structToJson(s) {
  const out = {};
  if (!s || !s.fields) return out;
  for (const k of Object.keys(s.fields)) out[k] = valueToJson(s.fields[k]);
  return out;
}

function timestampToJson(t) {
  const ms = Number(t.seconds) * 1000 + Math.floor((t.nanos || 0) / 1e6);
  return new Date(ms).toISOString();
}

// proto-loader object (camelCase, defaults, longs/enums as strings) -> the
// proto3 JSON mapping: Struct as plain object, Timestamp as text, unset
// message fields left out.
export function eventToJson(ev) {
  const out = {};
  for (const [k, v] of Object.entries(ev || {})) {
    if (v === null || v === undefined) continue;
    if (typeof v === 'object' && 'fields' in v) out[k] = structToJson(v);
    else if (typeof v === 'object' && 'seconds' in v && 'nanos' in v) out[k] = timestampToJson(v);
    else out[k] = v;
  }
  return out;
}

function invalid(cb, msg) { cb({ code: grpc.status.INVALID_ARGUMENT, details: msg }); }

// Starts the gRPC server. `deliver(channelState, event, key)` writes one
// event to every subscriber of the channel and returns how many it was
// queued for.
export async function startGrpc(hub, opts, deliver, onlineStats) {
  const def = protoLoader.loadSync('livehub/v1/hub.proto', { includeDirs: [PROTO_ROOT, '/usr/include'],
    keepCase: false, longs: String, enums: String, defaults: true, oneofs: true });
  const pkg = grpc.loadPackageDefinition(def);

  const publishMany = (tenant, chans, type, data) => {
    const result = { offset: '0', epoch: hub.epoch, subscribers: 0, channels: [] };
    for (const ch of chans) {
      const [ev, pos, c] = hub.envelope(tenant, ch, type, data);
      pos.subscribers = deliver(c, ev, channelKey(tenant, ch));
      hub.stats.delivered += pos.subscribers;
      result.subscribers += pos.subscribers;
      result.channels.push(pos);
    }
    result.offset = result.channels[0].offset;
    return { result };
  };
  const jobChans = (ev) => ev.projectId ? [`job:${ev.jobId}`, `project:${ev.projectId}`] : [`job:${ev.jobId}`];
  const typed = (type, required, chans) => (call, cb) => {
    const r = call.request;
    if (!r.tenantId || !r.event || !r.event[required]) return invalid(cb, `tenant_id and event.${required} are required`);
    cb(null, publishMany(r.tenantId, chans(r.event), type, eventToJson(r.event)));
  };
  const custom = (chanOf) => (call, cb) => {
    const r = call.request;
    if (!r.tenantId || !r.type) return invalid(cb, 'tenant_id and type are required');
    const ch = chanOf(r);
    if (!ch) return invalid(cb, 'bad channel');
    cb(null, publishMany(r.tenantId, [ch], r.type, structToJson(r.data)));
  };
  // PublishStream: each message is handled as the unary call it wraps.
  const streamMethods = {
    jobProgress: 'publishJobProgress', jobCompleted: 'publishJobCompleted', jobFailed: 'publishJobFailed',
    priceUpdated: 'publishPriceUpdated', orderStatus: 'publishOrderStatus',
    broadcastTenant: 'broadcastTenant', sendToUser: 'sendToUser', publish: 'publish',
  };
  const publishStream = (call, cb) => {
    let accepted = 0, rejected = 0, firstError = null;
    call.on('data', (msg) => {
      const which = msg.request, fn = which && impl[streamMethods[which]];
      if (!fn) { rejected++; return; }
      fn({ request: msg[which] }, (err) => {
        if (!err) { accepted++; return; }
        rejected++;
        if (!firstError) firstError = { sequence: msg.sequence, index: String(accepted + rejected - 1), code: err.code, message: err.details };
      });
    });
    call.on('end', () => cb(null, { accepted: String(accepted), rejected: String(rejected), firstError }));
    call.on('error', () => {});
  };
  const impl = {
    publishJobProgress: typed('job:progress', 'jobId', jobChans),
    publishJobCompleted: typed('job:completed', 'jobId', jobChans),
    publishJobFailed: typed('job:failed', 'jobId', jobChans),
    publishPriceUpdated: typed('price:updated', 'itemId', () => ['$tenant']),
    publishOrderStatus: typed('order:status', 'orderId', (ev) => [`order:${ev.orderId}`]),
    broadcastTenant: custom(() => '$tenant'),
    sendToUser: custom((r) => r.userId ? `$user:${r.userId}` : null),
    publish: custom((r) => validChannel(r.channel) ? r.channel : null),
    publishStream,
    getStats: (call, cb) => {
      const s = hub.stats, o = onlineStats();
      cb(null, { connections: String(s.connections), users: String(o.users), tenants: String(o.tenants),
        channels: String(hub.channels.size), subscriptions: String(s.subscriptions),
        connectionsTotal: String(s.connectionsTotal), messagesPublished: String(s.published),
        messagesDelivered: String(s.delivered), messagesReceived: String(s.received),
        uptimeSeconds: String(Math.floor((Date.now() - s.started) / 1000)), version: 'node-peer' });
    },
  };
  const server = new grpc.Server();
  server.addService(pkg.livehub.v1.HubService.service, impl);
  return new Promise((resolve, reject) => {
    server.bindAsync(`${opts.grpcHost}:${opts.grpcPort}`, grpc.ServerCredentials.createInsecure(), (err, port) => {
      if (err) return reject(err);
      resolve(port);
    });
  });
}

// Counts distinct users and tenants for GetStats.
export class Presence {
  constructor() { this.users = new Map(); this.tenants = new Map(); }
  add(t, u) { inc(this.users, `${t}\u0000${u}`); inc(this.tenants, t); }
  remove(t, u) { dec(this.users, `${t}\u0000${u}`); dec(this.tenants, t); }
  counts() { return { users: this.users.size, tenants: this.tenants.size }; }
}
function inc(m, k) { m.set(k, (m.get(k) || 0) + 1); }
function dec(m, k) { const n = (m.get(k) || 1) - 1; if (n) m.set(k, n); else m.delete(k); }
