// The Node.js `ws` peer hub, built the way seed 004 builds its progress
// server: a `ws` WebSocketServer on /ws, Map<channel, Set<socket>>, one
// JSON.stringify per broadcast and `ws.send(string)` per subscriber. Added
// so that one harness drives it and livehub alike: JWT HS256 at connect,
// livehub's client protocol (docs/PROTOCOL.md) and its gRPC API.
//
//   node bench/peers/node-ws-hub.mjs --ws-port 0 --grpc-port 0 --jwt-secret S
//
// prints `livehub ready ws=HOST:PORT grpc=HOST:PORT` once both listen.

import http from 'node:http';
import crypto from 'node:crypto';
import { WebSocketServer, WebSocket } from 'ws';
import { FAULT, FRAMING, parseArgs, verifyJwt, tokenFromRequest, channelKey, Hub, handleClientMessage,
  startGrpc, Presence } from './common.mjs';

const opts = parseArgs(process.argv);
const hub = new Hub();
const presence = new Presence();
let nextClient = 1;
const clientPrefix = crypto.randomBytes(4).toString('hex');

const server = http.createServer((req, res) => { res.writeHead(404); res.end('not found\n'); });
const wss = new WebSocketServer({ noServer: true, perMessageDeflate: false });

// Authentication before the upgrade: 401 with a short body, as livehub does.
server.on('upgrade', (req, socket, head) => {
  if (!req.url.startsWith('/ws') || (req.url.length > 3 && req.url[3] !== '?')) {
    socket.end('HTTP/1.1 404 Not Found\r\nContent-Length: 10\r\n\r\nnot found\n');
    return;
  }
  const who = verifyJwt(tokenFromRequest(req.url, req.headers), opts.secret, opts.tenantClaim);
  if (!who) {
    socket.end('HTTP/1.1 401 Unauthorized\r\nContent-Length: 12\r\n\r\nAUTH_FAILED\n');
    return;
  }
  wss.handleUpgrade(req, socket, head, (ws) => onConnection(ws, who));
});

function join(ws, key) {
  const c = hub.channel(key);
  c.subs.add(ws);
}

function leave(ws, key) {
  const c = hub.channels.get(key);
  if (!c) return;
  c.subs.delete(ws);
}

function onConnection(ws, who) {
  const conn = { tenant: who.tenant, user: who.user, channels: new Set(),
    implicit: [channelKey(who.tenant, '$tenant'), channelKey(who.tenant, `$user:${who.user}`)] };
  hub.stats.connections++; hub.stats.connectionsTotal++;
  presence.add(who.tenant, who.user);
  for (const k of conn.implicit) join(ws, k);
  const reply = (o) => ws.send(JSON.stringify(o));
  const ops = { join: (k) => join(ws, k), leave: (k) => leave(ws, k) };
  reply({ type: 'connected', clientId: `${clientPrefix}-${nextClient++}`, version: 1, server: 'node-ws-peer',
    tenant: who.tenant, user: who.user, heartbeat: { pingInterval: 30, pingTimeout: 90 } });
  ws.on('message', (data, isBinary) => {
    if (isBinary) { ws.close(1003); return; }
    let msg;
    try { msg = JSON.parse(data.toString()); } catch { msg = null; }
    handleClientMessage(hub, conn, msg, ops, reply);
  });
  ws.on('close', () => {
    hub.stats.connections--;
    presence.remove(who.tenant, who.user);
    for (const k of conn.implicit) leave(ws, k);
    for (const k of conn.channels) { leave(ws, k); hub.stats.subscriptions--; }
  });
  ws.on('error', () => {});
}

// Seed 004's broadcastToProject: the string is built once, sent per socket.
function deliver(c, ev, key) {
  const text = JSON.stringify(ev);
  let n = 0;
  for (const ws of c.subs) {
    if (ws.readyState === WebSocket.OPEN) { if (FRAMING) sendFramed(ws, text); else ws.send(text); n++; }
  }
  if (FAULT) injectFault(c, ev, key, text);
  return n;
}

function sendFramed(ws, text) {
  if (FRAMING === 'split') {
    const h = text.length >> 1;
    ws.send(text.slice(0, h), { fin: false });
    ws.send(text.slice(h), { fin: true });
    return;
  }
  if (!ws.batch) {
    ws.batch = [];
    setImmediate(() => { ws.send(ws.batch.join('\n')); ws.batch = null; });
  }
  ws.batch.push(text);
}

function injectFault(c, ev, key, text) {
  if (FAULT === 'dup' && ev.offset % 100 === 0) for (const ws of c.subs) ws.send(text);
  if (FAULT === 'leak') {
    const other = hub.channels.get(channelKey('bx', key.slice(key.indexOf('\u0000') + 1)));
    if (other) for (const ws of other.subs) ws.send(text);
  }
}

const grpcPort = await startGrpc(hub, opts, deliver, () => presence.counts());
server.listen(opts.wsPort, opts.wsHost, 65535, () => {
  const a = server.address();
  console.log(`livehub ready ws=${opts.wsHost}:${a.port} grpc=${opts.grpcHost}:${grpcPort}`);
});
for (const sig of ['SIGINT', 'SIGTERM']) process.on(sig, () => process.exit(0));
