// Types for livehub.js (hand-written; the module has no build step).
// The wire format is docs/PROTOCOL.md.

export declare const VERSION: string;

export type Status = 'idle' | 'connecting' | 'connected' | 'disconnected' | 'closed';
export declare const Status: {
  readonly IDLE: 'idle';
  readonly CONNECTING: 'connecting';
  readonly CONNECTED: 'connected';
  readonly DISCONNECTED: 'disconnected';
  readonly CLOSED: 'closed';
};

export interface BackoffOptions {
  /** First ceiling in ms (default 1000). */
  initial?: number;
  /** Largest ceiling in ms (default 30000). */
  max?: number;
  /** Growth per attempt (default 2). */
  factor?: number;
  /** 'full' (default): uniform in [0, ceiling). 'none': exactly the ceiling. */
  jitter?: 'full' | 'none';
}

/** The minimal WebSocket the client needs (the browser's, or npm "ws"). */
export interface WebSocketLike {
  send(data: string): void;
  close(code?: number, reason?: string): void;
  onopen: ((ev: unknown) => void) | null;
  onmessage: ((ev: { data: unknown }) => void) | null;
  onerror: ((ev: unknown) => void) | null;
  onclose: ((ev: { code: number; reason: string }) => void) | null;
}
export type WebSocketConstructor = new (url: string, protocols?: string | string[]) => WebSocketLike;

export interface LiveHubOptions {
  /** A JWT. With only a token, an expired token stops the client (TOKEN_EXPIRED). */
  token?: string;
  /** Called for the first token, before a connect when the token has expired,
   *  after close 4001, and ahead of exp to refresh the session. */
  getToken?: () => string | Promise<string>;
  /** How the token reaches the hub: '?token=' (default), the
   *  Sec-WebSocket-Protocol list ('livehub.v1', 'bearer.<JWT>'), or an
   *  `auth` message after open. */
  tokenTransport?: 'query' | 'protocol' | 'message';
  /** WebSocket constructor; required on Node < 22 (e.g. `import WebSocket from 'ws'`). */
  WebSocket?: WebSocketConstructor;
  backoff?: BackoffOptions;
  /** Refresh this many ms before exp (default 60000; never before a third of the lifetime). */
  refreshMargin?: number;
  /** Reply timeout for requests in ms (default 10000). */
  requestTimeout?: number;
  /** ms from opening a socket to the hub's `connected` frame before giving
   *  up on that attempt (default 10000). */
  connectTimeout?: number;
  /** Client-side pacing of outgoing messages (default { burst: 10, perMinute: 100 },
   *  the hub's default rate limit); false: none. A RATE_LIMITED reply also
   *  pauses sending for its retryAfter; subscriptions are then re-sent. */
  rateLimit?: { burst: number; perMinute: number } | false;
  /** Requests kept while offline (default 100); beyond, OFFLINE_QUEUE_FULL. */
  offlineQueueSize?: number;
  /** App-level ping interval in ms (default: the hub's `connected.heartbeat.pingInterval`). */
  pingInterval?: number;
  /** Silence in ms after which the connection is dropped and reopened
   *  (default: the hub's `connected.heartbeat.pingTimeout`). */
  pingTimeout?: number;
  /** After a reconnect, ask for the $tenant / $user events missed meanwhile
   *  (`subscribe` with `since` on the implicit channel; default true). */
  recoverImplicit?: boolean;
  /** React to window online/offline events (default true, where there is a window). */
  watchNetwork?: boolean;
  /** Connect in the constructor (default true). */
  autoConnect?: boolean;
  /** For tests: [0, 1) random source and clock. */
  random?: () => number;
  now?: () => number;
}

/** An event frame from the hub (PROTOCOL.md, "Hub → client: events"). */
export interface HubEvent<D = any> {
  type: string;
  channel: string;
  offset?: number;
  epoch?: string;
  ts?: number;
  data?: D;
  user?: string;
  clientId?: string;
  [key: string]: unknown;
}

export interface JobProgressData {
  jobId: string;
  projectId: string;
  kind: string;
  progress: number;
  etaSeconds: number;
  message: string;
  itemId: string;
}

export interface ConnectedFrame {
  type: 'connected';
  clientId: string;
  version: number;
  server: string;
  tenant: string;
  user: string;
  heartbeat: { pingInterval: number; pingTimeout: number };
  [key: string]: unknown;
}

export interface StatusChange {
  status: Status;
  /** Close code of the connection that was lost, when there was one. */
  code?: number;
  reason?: string;
  /** Reconnect attempt number and its delay in ms (status 'disconnected'). */
  attempt?: number;
  delay?: number;
  clientId?: string;
  error?: LiveHubError;
}

export interface SubscribedInfo {
  channel: string;
  /** The channel's top offset and epoch (hubs with history). */
  offset?: number;
  epoch?: string;
  /** True on a re-subscribe after a reconnect. */
  resubscribe: boolean;
  /** Present when `since` was sent: whether the missed events follow. */
  recovered?: boolean;
  since?: { offset: number; epoch: string };
  reply: Record<string, unknown>;
}

export interface RecoveryInfo {
  channel: string;
  /** false: events were missed and are gone (or the hub keeps no history): refetch state. */
  recovered: boolean;
  since: { offset: number; epoch: string };
  offset?: number;
  epoch?: string;
}

export type ErrorCode =
  | 'AUTH_FAILED' | 'TOKEN_EXPIRED' | 'PERMISSION_DENIED' | 'CHANNEL_ACCESS_DENIED' | 'RATE_LIMITED'
  | 'PROTOCOL_ERROR' | 'BAD_REQUEST' | 'LIMIT_EXCEEDED' | 'TOO_MANY_CONNECTIONS' | 'SLOW_CONSUMER'
  | 'SERVER_ERROR' | 'TIMEOUT' | 'DISCONNECTED' | 'OFFLINE_QUEUE_FULL' | 'CLOSED' | 'POLICY'
  | 'REFUSED' | 'HANDLER_ERROR' | 'CONNECT_FAILED' | 'TOKEN_FETCH_FAILED' | string;

export declare class LiveHubError extends Error {
  constructor(code: ErrorCode, message?: string, extra?: object);
  code: ErrorCode;
  recoverable: boolean;
  /** The hub's `error` message, when it sent one. */
  reply?: Record<string, unknown>;
  closeCode?: number;
  channel?: string;
  /** RATE_LIMITED: ms the hub asked to wait. */
  retryAfter?: number;
}

export interface Unsubscribe {
  (): void;
  /** Resolves with the first `subscribed` reply; rejects with the hub's error. */
  ready: Promise<SubscribedInfo>;
}

export interface LifecycleEvents {
  status: StatusChange;
  connected: ConnectedFrame;
  error: LiveHubError;
  recovery: RecoveryInfo;
  subscribed: SubscribedInfo;
  message: Record<string, unknown>;
  event: HubEvent;
  token: { token: string; exp: number | null };
}

export declare class LiveHub {
  constructor(url: string, options: LiveHubOptions);
  readonly url: string;
  readonly status: Status;
  readonly queued: number;
  clientId: string | null;
  connectedInfo: ConnectedFrame | null;
  lastClose: { code: number; reason: string } | null;

  connect(): void;
  close(code?: number, reason?: string): void;

  on<K extends keyof LifecycleEvents>(name: K, fn: (arg: LifecycleEvents[K]) => void): () => void;
  on(name: 'job:progress', fn: (ev: HubEvent<JobProgressData>) => void): () => void;
  on(eventType: string, fn: (ev: HubEvent) => void): () => void;
  off(name: string, fn: (arg: any) => void): void;

  subscribe<D = any>(channel: string, handler: (ev: HubEvent<D>) => void,
                     opts?: { since?: { offset: number; epoch: string } }): Unsubscribe;
  subscriptions(): Array<{ channel: string; offset: number | null; epoch: string | null; subscribed: boolean }>;

  request<R = Record<string, unknown>>(msg: { type: string; [k: string]: unknown },
                                       opts?: { timeout?: number; queue?: boolean }): Promise<R>;
  ping(): Promise<{ type: 'pong'; id: number }>;
  publish(channel: string, event: string, data?: unknown): Promise<{ type: 'published'; channel: string }>;
  presence(channel: string): Promise<{ type: 'presence'; channel: string; connections: number;
                                       users: Array<{ user: string; connections: number }> }>;
  refreshToken(): Promise<{ type: 'refreshed'; exp: number } | null>;
}

export declare function backoffCeiling(attempt: number, backoff?: BackoffOptions): number;
export declare function backoffDelay(attempt: number, backoff?: BackoffOptions, random?: () => number): number;
export declare function closeAction(code: number): 'reconnect' | 'refresh' | 'stop';
export declare function splitFrame(text: string): { messages: Array<Record<string, any>>; errors: string[] };
export declare function tokenExpiry(token: string): number | null;
export declare function refreshDelay(expMs: number, nowMs: number, margin?: number): number;

export default LiveHub;
