// The Socket.IO peer hub: one Socket.IO room per tenant-keyed channel,
// `io.to(room).emit('message', event)` per publication (Socket.IO encodes a
// broadcast packet once and writes it to every socket of the room). Same
// JWT, client messages and gRPC API as livehub, carried in Socket.IO
// packets: every message in either direction is the event named "message"
// whose one argument is the livehub protocol object, e.g.
//   hub -> client  42["message",{"type":"job:progress","channel":"job:1",...}]
//   client -> hub  42["message",{"type":"subscribe","channel":"job:1"}]
// The token comes in the handshake `auth.token`, the `token` query parameter
// or `Authorization: Bearer`.
//
//   node bench/peers/socketio-hub.mjs --ws-port 0 --grpc-port 0 --jwt-secret S

import http from 'node:http';
import crypto from 'node:crypto';
import { Server } from 'socket.io';
import { parseArgs, verifyJwt, tokenFromRequest, channelKey, Hub, handleClientMessage,
  startGrpc, Presence } from './common.mjs';

const opts = parseArgs(process.argv);
const hub = new Hub();
const presence = new Presence();
let nextClient = 1;
const clientPrefix = crypto.randomBytes(4).toString('hex');

const server = http.createServer((req, res) => { res.writeHead(404); res.end('not found\n'); });
const io = new Server(server, { path: '/socket.io', transports: ['websocket', 'polling'],
  perMessageDeflate: false, httpCompression: false, serveClient: false });

io.use((socket, next) => {
  const hs = socket.handshake;
  const token = (hs.auth && hs.auth.token) || tokenFromRequest(socket.request.url, hs.headers);
  const who = verifyJwt(token, opts.secret, opts.tenantClaim);
  if (!who) { next(new Error('AUTH_FAILED')); return; }
  socket.data.who = who;
  next();
});

io.on('connection', (socket) => {
  const who = socket.data.who;
  const conn = { tenant: who.tenant, user: who.user, channels: new Set() };
  hub.stats.connections++; hub.stats.connectionsTotal++;
  presence.add(who.tenant, who.user);
  // Implicit channels; hub.channel() creates the offset state.
  for (const name of ['$tenant', `$user:${who.user}`]) {
    const k = channelKey(who.tenant, name);
    hub.channel(k);
    socket.join(k);
  }
  const reply = (o) => socket.emit('message', o);
  const ops = { join: (k) => { hub.channel(k); socket.join(k); }, leave: (k) => socket.leave(k) };
  reply({ type: 'connected', clientId: `${clientPrefix}-${nextClient++}`, version: 1, server: 'socketio-peer',
    tenant: who.tenant, user: who.user, heartbeat: { pingInterval: 25, pingTimeout: 20 } });
  socket.on('message', (msg) => {
    if (typeof msg === 'string') { try { msg = JSON.parse(msg); } catch { msg = null; } }
    handleClientMessage(hub, conn, msg, ops, reply);
  });
  socket.on('disconnect', () => {
    hub.stats.connections--;
    hub.stats.subscriptions -= conn.channels.size;
    presence.remove(who.tenant, who.user);
  });
});

function deliver(c, ev, key) {
  const room = io.sockets.adapter.rooms.get(key);
  const n = room ? room.size : 0;
  if (n) io.to(key).emit('message', ev);
  return n;
}

const grpcPort = await startGrpc(hub, opts, deliver, () => presence.counts());
server.listen(opts.wsPort, opts.wsHost, 65535, () => {
  const a = server.address();
  console.log(`livehub ready ws=${opts.wsHost}:${a.port} grpc=${opts.grpcHost}:${grpcPort}`);
});
for (const sig of ['SIGINT', 'SIGTERM']) process.on(sig, () => process.exit(0));
