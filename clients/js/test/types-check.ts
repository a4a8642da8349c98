// Compile-only check of livehub.d.ts and react.d.ts (tsc --noEmit, strict):
// typical uses must type-check, and misuses marked @ts-expect-error must not.
import { LiveHub, LiveHubError, Status, backoffDelay, closeAction, type HubEvent, type JobProgressData } from '../livehub.js';
import { LiveHubProvider, useChannel, useWebSocket, useStatus, useEvent } from '../react.js';

declare const WS: import('../livehub.js').WebSocketConstructor;

const hub = new LiveHub('wss://rt.example.com/ws', {
  getToken: async () => 'jwt',
  WebSocket: WS,
  backoff: { initial: 500, max: 10000, jitter: 'full' },
  tokenTransport: 'protocol',
});
const off = hub.subscribe<JobProgressData>('job:42', (ev) => {
  const p: number = ev.data!.progress;
  void p;
});
off.ready.then((info) => info.recovered === false && info.channel.length);
off();
hub.on('status', (s) => {
  const st: Status = s.status;
  if (s.status === 'disconnected') void (s.delay ?? 0);
  void st;
});
hub.on('job:progress', (ev) => void ev.data?.jobId.toUpperCase());
hub.on('recovery', (r) => void (r.recovered ? r.since.offset : r.channel));
hub.on('error', (e: LiveHubError) => void (e.code + e.recoverable));
hub.on('price:updated', (ev: HubEvent) => void ev.channel);
hub.ping().then((p) => p.type === 'pong');
hub.presence('board:1').then((p) => p.users.map((u) => u.user + u.connections));
hub.request<{ type: 'refreshed'; exp: number }>({ type: 'refresh', token: 'x' }, { timeout: 1000, queue: false });
const d: number = backoffDelay(3);
const a: 'reconnect' | 'refresh' | 'stop' = closeAction(4001);
void d; void a;
const s: Status = Status.CONNECTED;
void s;

// @ts-expect-error a channel is a string
hub.subscribe(42, () => {});
// @ts-expect-error tokenTransport has three values
new LiveHub('ws://h/ws', { token: 't', tokenTransport: 'cookie' });

function Project({ projectId }: { projectId: string }) {
  const { status, lastEvent, recovered } = useWebSocket<JobProgressData>(projectId);
  const other = useChannel('board:1', { onEvent: (ev) => void ev.type });
  useEvent('price:updated', (ev) => void ev.data);
  const st: Status = useStatus();
  return [status, lastEvent?.data?.progress, recovered, other.error?.code, st];
}
void Project;
void LiveHubProvider;
