// livehub browser and Node client: one ES module, no dependencies.
//
//   import { LiveHub } from './livehub.js';
//   const hub = new LiveHub('wss://hub.example.com/ws', { getToken: () => fetchToken() });
//   const off = hub.subscribe('job:42', (ev) => console.log(ev.type, ev.data));
//   hub.on('status', (s) => console.log(s.status));
//
// The wire protocol is docs/PROTOCOL.md. What this module adds on top:
// reconnects with exponential backoff and full jitter, reacting to close
// codes; re-subscribes with `since` after a reconnect and reports whether
// the missed events could be recovered; refreshes the token before it
// expires; a heartbeat watchdog; a bounded queue for requests made while
// offline; browser online/offline events. Types: livehub.d.ts.

export const VERSION = '0.1.0';

/** Connection states, in the order a connection goes through them. */
export const Status = Object.freeze({
  IDLE: 'idle', // created, connect() not called yet
  CONNECTING: 'connecting', // a socket is opening (first time or again)
  CONNECTED: 'connected', // the hub sent `connected`
  DISCONNECTED: 'disconnected', // lost; a reconnect is scheduled (or waiting for the network)
  CLOSED: 'closed', // close() was called, or the hub refused us for good
});

const DEFAULTS = {
  backoff: { initial: 1000, max: 30000, factor: 2, jitter: 'full' },
  tokenTransport: 'query', // 'query' (?token=), 'protocol' (Sec-WebSocket-Protocol), 'message' (auth message)
  refreshMargin: 60000, // refresh this long before exp (at most a third of the token's lifetime)
  requestTimeout: 10000,
  connectTimeout: 10000, // from opening the socket to the `connected` frame
  rateLimit: { burst: 10, perMinute: 100 }, // pace outgoing messages like the hub's defaults; false: no pacing
  offlineQueueSize: 100,
  pingInterval: null, // ms; null: from the `connected` frame
  pingTimeout: null, // ms; null: from the `connected` frame
  watchNetwork: true, // listen to window online/offline events when there is a window
  recoverImplicit: true, // recover $tenant / $user events missed while disconnected
};

// Names on() uses for the client's own events; event types from the hub
// with one of these names reach subscribe() handlers and on('event') only.
const LIFECYCLE = new Set(['status', 'connected', 'error', 'recovery', 'subscribed', 'message', 'event', 'token']);

/** An error surfaced by the client: `code` is a PROTOCOL.md error code
 *  (AUTH_FAILED, …) or one of the client's own (TIMEOUT, DISCONNECTED,
 *  OFFLINE_QUEUE_FULL, CLOSED, TOKEN_EXPIRED, SUBSCRIPTION_FAILED). */
export class LiveHubError extends Error {
  constructor(code, message, extra = {}) {
    super(message || code);
    this.name = 'LiveHubError';
    this.code = code;
    this.recoverable = extra.recoverable !== undefined ? extra.recoverable : true;
    if (extra.reply !== undefined) this.reply = extra.reply;
    if (extra.closeCode !== undefined) this.closeCode = extra.closeCode;
    if (extra.channel !== undefined) this.channel = extra.channel;
    if (extra.retryAfter !== undefined) this.retryAfter = extra.retryAfter;
  }
}

// ---------------------------------------------------------------------------
// Pure helpers (exported for tests and for apps that want the same policy).
// ---------------------------------------------------------------------------

/** The backoff ceiling before attempt n (0-based): initial·factor^n capped
 *  at max. With full jitter the delay is uniform in [0, ceiling). */
export function backoffCeiling(attempt, backoff = DEFAULTS.backoff) {
  const b = { ...DEFAULTS.backoff, ...backoff };
  const n = Math.max(0, Math.min(attempt, 60));
  return Math.min(b.max, b.initial * Math.pow(b.factor, n));
}

/** The delay in ms before reconnect attempt n: full jitter (AWS
 *  architecture blog, "Exponential Backoff And Jitter") unless jitter is
 *  'none'. `random` returns [0, 1). */
export function backoffDelay(attempt, backoff = DEFAULTS.backoff, random = Math.random) {
  const ceiling = backoffCeiling(attempt, backoff);
  const jitter = (backoff && backoff.jitter) || DEFAULTS.backoff.jitter;
  if (jitter === 'none') return ceiling;
  return Math.floor(random() * ceiling);
}

/** What to do after the socket closed with `code` (PROTOCOL.md, close
 *  codes): 'reconnect', 'refresh' (get a new token, then reconnect) or
 *  'stop' (must not reconnect with the same credentials). */
export function closeAction(code) {
  if (code === 4001) return 'refresh';
  if (code === 1008) return 'stop';
  if (code >= 4500 && code <= 4999) return 'stop';
  return 'reconnect'; // 1000, 1001, 1006, 1011, 4000–4499, the rest
}

/** Splits one text frame into messages: the hub may put several JSON
 *  messages in one frame, separated by '\n'. Returns {messages, errors}. */
export function splitFrame(text) {
  const messages = [];
  const errors = [];
  for (const line of String(text).split('\n')) {
    if (line === '' || line === '\r') continue;
    try {
      const m = JSON.parse(line);
      if (m && typeof m === 'object' && !Array.isArray(m) && typeof m.type === 'string') messages.push(m);
      else errors.push(line);
    } catch (e) {
      errors.push(line);
    }
  }
  return { messages, errors };
}

function base64UrlDecode(s) {
  let b = s.replace(/-/g, '+').replace(/_/g, '/');
  while (b.length % 4) b += '=';
  if (typeof atob === 'function') {
    const bin = atob(b);
    const bytes = Uint8Array.from(bin, (c) => c.charCodeAt(0));
    return new TextDecoder().decode(bytes);
  }
  return Buffer.from(b, 'base64').toString('utf8'); // Node < 16
}

/** The `exp` claim of a JWT in seconds since the Unix epoch, or null. The
 *  signature is not checked (the hub does that): this is only a timer. */
export function tokenExpiry(token) {
  if (typeof token !== 'string') return null;
  const parts = token.split('.');
  if (parts.length !== 3) return null;
  try {
    const claims = JSON.parse(base64UrlDecode(parts[1]));
    return typeof claims.exp === 'number' && isFinite(claims.exp) ? claims.exp : null;
  } catch (e) {
    return null;
  }
}

/** When to refresh a token expiring at expMs, issued around nowMs: margin
 *  before exp, but not before a third of the remaining lifetime has passed,
 *  so a short-lived token is not refreshed in a tight loop. Returns ms. */
export function refreshDelay(expMs, nowMs, margin = DEFAULTS.refreshMargin) {
  const left = expMs - nowMs;
  if (left <= 0) return 0;
  return Math.max(left - margin, Math.floor(left / 3));
}

// ---------------------------------------------------------------------------
// The client.
// ---------------------------------------------------------------------------

const MAX_TIMER = 2147483647; // setTimeout's ceiling

export class LiveHub {
  /**
   * @param {string} url  ws:// or wss:// URL of the hub's /ws endpoint.
   * @param {object} options  see livehub.d.ts (LiveHubOptions).
   */
  constructor(url, options = {}) {
    if (typeof url !== 'string' || !/^wss?:\/\//.test(url)) throw new TypeError('LiveHub: url must be ws:// or wss://');
    this.url = url;
    this.options = { ...DEFAULTS, ...options, backoff: { ...DEFAULTS.backoff, ...(options.backoff || {}) } };
    if (!this.options.token && !this.options.getToken) throw new TypeError('LiveHub: give a token or getToken()');
    this._WebSocket = options.WebSocket || globalThis.WebSocket;
    if (typeof this._WebSocket !== 'function') {
      throw new TypeError('LiveHub: no global WebSocket here (Node < 22): pass options.WebSocket (e.g. the "ws" package)');
    }
    this._random = options.random || Math.random;
    this._now = options.now || (() => Date.now());
    this._token = options.token || null;
    this._status = Status.IDLE;
    this._listeners = new Map(); // name -> Set(fn)
    this._subs = new Map(); // channel -> {handlers, offset, epoch, pending}
    this._implicit = new Map(); // '$tenant' / '$user:…' -> {offset, epoch}: positions to recover
    this._pending = new Map(); // request id -> {resolve, reject, timer, msg}
    this._queue = []; // requests waiting for a connection: {msg, resolve, reject}
    this._out = []; // messages waiting for a rate-limit token: {msg, onSent}
    this._bucket = { tokens: 0, at: 0, pausedUntil: 0 };
    this._nextId = 1;
    this._attempt = 0;
    this._ws = null;
    this._timers = { reconnect: null, ping: null, watchdog: null, refresh: null, pump: null };
    this._heartbeat = null; // {interval, timeout} in ms
    this.clientId = null;
    this.connectedInfo = null;
    this.lastClose = null; // {code, reason}
    this._offline = false;
    this._onOnline = () => this._networkChange(true);
    this._onOffline = () => this._networkChange(false);
    if (options.autoConnect !== false) this.connect();
  }

  /** The current status (Status.*). */
  get status() {
    return this._status;
  }

  // ---- events -------------------------------------------------------------

  /** Adds a listener: a lifecycle event ('status', 'connected', 'error',
   *  'recovery', 'subscribed', 'message', 'event', 'token') or an event type
   *  from the hub ('job:progress', 'price:updated', …). Returns a function
   *  that removes it. */
  on(name, fn) {
    if (typeof fn !== 'function') throw new TypeError('on: handler must be a function');
    if (!this._listeners.has(name)) this._listeners.set(name, new Set());
    this._listeners.get(name).add(fn);
    return () => this.off(name, fn);
  }

  off(name, fn) {
    const set = this._listeners.get(name);
    if (set) set.delete(fn);
  }

  _emit(name, arg) {
    const set = this._listeners.get(name);
    if (!set) return;
    for (const fn of [...set]) {
      try {
        fn(arg);
      } catch (e) {
        // A throwing handler must not break the client; report it once.
        if (name !== 'error') this._emit('error', new LiveHubError('HANDLER_ERROR', String((e && e.message) || e)));
        else if (typeof console !== 'undefined') console.error(e);
      }
    }
  }

  _setStatus(status, extra = {}) {
    if (this._status === status && !extra.force) return;
    this._status = status;
    this._emit('status', { status, ...extra });
  }

  // ---- connecting -----------------------------------------------------------

  /** Opens the connection (also after close()). Idempotent while connecting
   *  or connected. */
  connect() {
    if (this._ws || this._timers.reconnect) return;
    if (this._status === Status.CLOSED) this._attempt = 0;
    this._watchNetwork(true);
    if (this._offline) {
      this._setStatus(Status.DISCONNECTED, { reason: 'offline' });
      return;
    }
    this._open();
  }

  /** Closes the connection for good (until connect()): no reconnect;
   *  queued and pending requests are rejected with CLOSED. */
  close(code = 1000, reason = 'client closed') {
    this._clearTimer('reconnect');
    this._watchNetwork(false);
    this._dropSocket(code, reason);
    this._failAll('CLOSED', 'the client was closed');
    this._setStatus(Status.CLOSED, { code, reason });
  }

  async _freshToken(force) {
    const o = this.options;
    const exp = tokenExpiry(this._token);
    const stale = !this._token || force || (exp !== null && exp * 1000 <= this._now() + 1000);
    if (!stale) return this._token;
    if (!o.getToken) throw new LiveHubError('TOKEN_EXPIRED', 'the token has expired and there is no getToken()', { recoverable: false });
    const t = await o.getToken();
    if (typeof t !== 'string' || t === '') throw new LiveHubError('AUTH_FAILED', 'getToken() gave no token', { recoverable: false });
    this._token = t;
    this._emit('token', { token: t, exp: tokenExpiry(t) });
    return t;
  }

  async _open(forceToken = false) {
    const gen = (this._gen = (this._gen || 0) + 1);
    this._setStatus(Status.CONNECTING, { attempt: this._attempt });
    let token;
    try {
      token = await this._freshToken(forceToken);
    } catch (e) {
      if (gen !== this._gen || this._status === Status.CLOSED) return;
      if (e instanceof LiveHubError && !e.recoverable) return this._stop(e);
      // getToken() threw (network?): try again later.
      this._emit('error', e instanceof LiveHubError ? e : new LiveHubError('TOKEN_FETCH_FAILED', String((e && e.message) || e)));
      return this._scheduleReconnect({ reason: 'token fetch failed' });
    }
    if (gen !== this._gen || this._status === Status.CLOSED) return;
    const o = this.options;
    let url = this.url;
    let protocols;
    if (o.tokenTransport === 'query') url += (url.includes('?') ? '&' : '?') + 'token=' + encodeURIComponent(token);
    else if (o.tokenTransport === 'protocol') protocols = ['livehub.v1', 'bearer.' + token];
    let ws;
    try {
      ws = protocols ? new this._WebSocket(url, protocols) : new this._WebSocket(url);
    } catch (e) {
      this._emit('error', new LiveHubError('CONNECT_FAILED', String((e && e.message) || e)));
      return this._scheduleReconnect({ reason: 'connect failed' });
    }
    this._ws = ws;
    this._resetBucket();
    let opened = false;
    // Until `connected` arrives: a connect that neither fails nor succeeds
    // (a half-dead listener, a proxy that holds it) is given up on too.
    this._armWatchdog(o.connectTimeout);
    ws.onopen = () => {
      opened = true;
      if (o.tokenTransport === 'message') this._send({ type: 'auth', token });
    };
    ws.onmessage = (ev) => this._onFrame(ev.data);
    // Normally close follows error with the code; a socket that failed to
    // connect is treated as closed (1006) right away, whatever follows.
    ws.onerror = () => {
      if (!opened) this._onClose(ws, 1006, 'connect failed');
    };
    ws.onclose = (ev) => this._onClose(ws, ev.code, ev.reason);
  }

  _watchNetwork(on) {
    const w = globalThis.window;
    if (!this.options.watchNetwork || !w || typeof w.addEventListener !== 'function') return;
    if (on && !this._watching) {
      w.addEventListener('online', this._onOnline);
      w.addEventListener('offline', this._onOffline);
      this._watching = true;
      const nav = globalThis.navigator;
      if (nav && nav.onLine === false) this._offline = true;
    } else if (!on && this._watching) {
      w.removeEventListener('online', this._onOnline);
      w.removeEventListener('offline', this._onOffline);
      this._watching = false;
    }
  }

  _networkChange(online) {
    if (this._status === Status.CLOSED) return;
    this._offline = !online;
    if (!online) {
      // The browser says the network is gone: do not wait for the watchdog.
      this._clearTimer('reconnect');
      this._dropSocket(3002, 'offline');
      this._afterLoss({ code: 3002, reason: 'offline' });
      this._setStatus(Status.DISCONNECTED, { reason: 'offline', force: true });
    } else if (!this._ws) {
      this._clearTimer('reconnect');
      this._attempt = 0;
      this._open();
    }
  }

  // Detaches the socket's handlers and closes it; its close event (which
  // may come much later, or never on a dead network) is no longer ours.
  _dropSocket(code, reason) {
    const ws = this._ws;
    this._ws = null;
    this._gen = (this._gen || 0) + 1; // an _open() awaiting getToken() gives up
    this._clearTimer('ping');
    this._clearTimer('watchdog');
    this._clearTimer('refresh');
    this._clearTimer('pump');
    this._out = [];
    if (!ws) return;
    ws.onopen = ws.onmessage = ws.onerror = ws.onclose = null;
    try {
      ws.close(code, reason);
    } catch (e) {
      try {
        ws.close();
      } catch (e2) {
        /* already closed */
      }
    }
  }

  _onClose(ws, code, reason) {
    if (ws !== this._ws) return;
    this._ws = null;
    ws.onopen = ws.onmessage = ws.onerror = ws.onclose = null;
    this._lost(code, reason);
  }

  // The connection is gone (closed by the hub, or dropped by the watchdog):
  // stop, or schedule a reconnect, as the close code says.
  _lost(code, reason) {
    this._clearTimer('pump');
    this._out = [];
    this._clearTimer('ping');
    this._clearTimer('watchdog');
    this._clearTimer('refresh');
    this.lastClose = { code, reason };
    this._afterLoss({ code, reason });
    const action = closeAction(code);
    if (action === 'stop') {
      const what = code === 1008 ? 'POLICY' : code === 4500 ? 'AUTH_FAILED' : code === 4501 ? 'DISCONNECTED' : 'REFUSED';
      return this._stop(new LiveHubError(what, reason || 'the hub refused the connection (close ' + code + ')', { recoverable: false, closeCode: code }));
    }
    this._scheduleReconnect({ code, reason, refresh: action === 'refresh' });
  }

  // What a lost connection means for requests: those in flight may or may
  // not have been handled, so they fail with DISCONNECTED; queued ones wait.
  _afterLoss(info) {
    for (const [id, p] of this._pending) {
      clearTimeout(p.timer);
      this._pending.delete(id);
      if (p.sub) continue; // subscriptions are re-sent on reconnect
      p.reject(new LiveHubError('DISCONNECTED', 'the connection was lost before the reply', { recoverable: true }));
    }
    for (const sub of this._subs.values()) sub.pending = false;
  }

  _stop(err) {
    this._dropSocket(1000, 'stopped');
    this._failAll(err.code, err.message);
    this._watchNetwork(false);
    this._emit('error', err);
    this._setStatus(Status.CLOSED, { code: err.closeCode, reason: err.message, error: err });
  }

  _scheduleReconnect(info) {
    if (this._status === Status.CLOSED) return;
    this._clearTimer('reconnect');
    if (this._offline) {
      this._setStatus(Status.DISCONNECTED, { ...info, reason: 'offline' });
      return;
    }
    // A hub refusing an expired token at the handshake looks like 1006 to
    // a browser: the expiry check in _freshToken() catches that case.
    const delay = backoffDelay(this._attempt, this.options.backoff, this._random);
    const attempt = this._attempt++;
    this._setStatus(Status.DISCONNECTED, { ...info, delay, attempt, force: true });
    this._timers.reconnect = setTimeout(() => {
      this._timers.reconnect = null;
      this._open(!!info.refresh);
    }, delay);
  }

  _clearTimer(name) {
    if (this._timers[name]) {
      clearTimeout(this._timers[name]);
      clearInterval(this._timers[name]);
      this._timers[name] = null;
    }
  }

  // ---- heartbeat and token refresh ----------------------------------------------

  _armWatchdog(ms) {
    this._clearTimer('watchdog');
    this._timers.watchdog = setTimeout(() => {
      this._timers.watchdog = null;
      const ws = this._ws;
      if (!ws) return;
      const why = this._heartbeat && this._status === Status.CONNECTED ? 'heartbeat timeout' : 'connect timeout';
      this._dropSocket(3001, why);
      this._lost(3001, why);
    }, ms);
  }

  _onConnected(msg) {
    const o = this.options;
    const hb = msg.heartbeat || {};
    this._heartbeat = {
      interval: o.pingInterval || (hb.pingInterval > 0 ? hb.pingInterval * 1000 : 30000),
      timeout: o.pingTimeout || (hb.pingTimeout > 0 ? hb.pingTimeout * 1000 : 90000),
    };
    this.clientId = msg.clientId;
    this.connectedInfo = msg;
    this._attempt = 0;
    this._armWatchdog(this._heartbeat.timeout);
    this._clearTimer('ping');
    // An app-level ping keeps traffic flowing, so silence means a dead hub
    // (browsers answer WebSocket pings but never tell the page about them).
    this._timers.ping = setInterval(() => {
      if (this._status === Status.CONNECTED) this._send({ type: 'ping' });
    }, this._heartbeat.interval);
    this._scheduleRefresh();
    this._setStatus(Status.CONNECTED, { clientId: msg.clientId });
    this._emit('connected', msg);
    for (const [channel, sub] of this._subs) this._sendSubscribe(channel, sub);
    if (this.options.recoverImplicit) for (const [channel, pos] of this._implicit) this._recoverImplicit(channel, pos);
    const queued = this._queue;
    this._queue = [];
    for (const q of queued) this._dispatch(q);
  }

  _scheduleRefresh() {
    this._clearTimer('refresh');
    if (!this.options.getToken) return;
    const exp = tokenExpiry(this._token);
    if (exp === null) return;
    const delay = Math.min(MAX_TIMER, refreshDelay(exp * 1000, this._now(), this.options.refreshMargin));
    this._timers.refresh = setTimeout(() => {
      this._timers.refresh = null;
      this.refreshToken().catch((e) => this._emit('error', e));
    }, delay);
  }

  /** Gets a new token from getToken() and sends it with a `refresh`
   *  message. Resolves with the `refreshed` reply. The new token is kept
   *  for later reconnects even when the hub refuses the message. */
  async refreshToken() {
    if (!this.options.getToken) throw new LiveHubError('TOKEN_EXPIRED', 'no getToken() to refresh with', { recoverable: false });
    const token = await this._freshToken(true);
    if (this._status !== Status.CONNECTED) return null;
    try {
      const reply = await this.request({ type: 'refresh', token }, { queue: false });
      this._scheduleRefresh();
      return reply;
    } catch (e) {
      // A hub without in-session refresh: the new token is used on the
      // next connect (it closes with 4001 at exp, we reconnect).
      if (e.code === 'BAD_REQUEST' || e.code === 'PROTOCOL_ERROR') return null;
      throw e;
    }
  }

  // ---- receiving ------------------------------------------------------------

  _onFrame(data) {
    if (typeof data !== 'string') {
      this._emit('error', new LiveHubError('PROTOCOL_ERROR', 'binary frame from the hub'));
      return;
    }
    if (this._heartbeat) this._armWatchdog(this._heartbeat.timeout);
    const { messages, errors } = splitFrame(data);
    for (const line of errors) this._emit('error', new LiveHubError('PROTOCOL_ERROR', 'unparsable message: ' + line.slice(0, 200)));
    for (const m of messages) {
      if (!this._ws) return; // a handler closed the client
      this._onMessage(m);
    }
  }

  _onMessage(m) {
    this._emit('message', m);
    if (m.type === 'connected') return this._onConnected(m);
    if (m.id !== undefined && this._pending.has(m.id)) return this._onReply(m);
    if (m.type === 'error') {
      const err = new LiveHubError(m.code || 'SERVER_ERROR', m.message, { recoverable: m.recoverable !== false, reply: m });
      return this._emit('error', err);
    }
    if (m.type === 'pong' || m.type === 'subscribed' || m.type === 'unsubscribed') return;
    this._onEvent(m);
  }

  _onEvent(m) {
    if (typeof m.channel === 'string' && m.channel[0] === '$' && typeof m.offset === 'number') {
      const pos = this._implicit.get(m.channel);
      if (pos && pos.epoch === m.epoch && m.offset <= pos.offset) return; // replayed twice
      this._implicit.set(m.channel, { offset: m.offset, epoch: m.epoch });
    }
    const sub = typeof m.channel === 'string' ? this._subs.get(m.channel) : undefined;
    if (sub && typeof m.offset === 'number') {
      // Replayed and live events can overlap by one around a re-subscribe:
      // an offset already seen in this epoch is not delivered twice.
      if (sub.epoch === m.epoch && sub.offset !== null && m.offset <= sub.offset) return;
      sub.offset = m.offset;
      sub.epoch = m.epoch;
    }
    if (sub) {
      for (const fn of [...sub.handlers]) {
        try {
          fn(m);
        } catch (e) {
          this._emit('error', new LiveHubError('HANDLER_ERROR', String((e && e.message) || e)));
        }
      }
    }
    if (!LIFECYCLE.has(m.type)) this._emit(m.type, m);
    this._emit('event', m);
  }

  _onReply(m) {
    const p = this._pending.get(m.id);
    this._pending.delete(m.id);
    clearTimeout(p.timer);
    if (m.type === 'error' && m.code === 'RATE_LIMITED') {
      const ms = this._rateLimited(m.retryAfter);
      // A subscription is state: it is sent again once the hub allows.
      if (p.sub) {
        const ch = p.msg.channel;
        if (ch[0] === '$' || this._subs.has(ch)) this._dispatch(p.q);
        else p.q.reject(new LiveHubError('DISCONNECTED', 'unsubscribed meanwhile')); // dropped quietly
        return;
      }
      return p.reject(new LiveHubError('RATE_LIMITED', m.message, { recoverable: true, reply: m, retryAfter: ms }));
    }
    if (m.type === 'error') {
      p.reject(new LiveHubError(m.code || 'SERVER_ERROR', m.message, { recoverable: m.recoverable !== false, reply: m, channel: p.msg.channel }));
    } else {
      p.resolve(m);
    }
  }

  // ---- sending --------------------------------------------------------------

  _sendNow(msg) {
    if (!this._ws) return false;
    try {
      this._ws.send(JSON.stringify(msg));
      return true;
    } catch (e) {
      return false;
    }
  }

  // Outgoing messages are paced by a token bucket like the hub's (PROTOCOL.md,
  // rate limit: 10 at once, 100 a minute by default), so re-subscribing to
  // many channels after a reconnect never draws RATE_LIMITED strikes; a
  // RATE_LIMITED reply empties the bucket and pauses for its retryAfter.
  _resetBucket() {
    const r = this.options.rateLimit;
    this._bucket = { tokens: r ? r.burst : Infinity, at: this._now(), pausedUntil: 0 };
  }

  _send(msg, onSent) {
    this._out.push({ msg, onSent });
    this._pump();
  }

  _pump() {
    this._clearTimer('pump');
    const r = this.options.rateLimit;
    const b = this._bucket;
    const now = this._now();
    if (r) {
      b.tokens = Math.min(r.burst, b.tokens + ((now - b.at) * r.perMinute) / 60000);
      b.at = now;
    }
    while (this._out.length && this._ws && now >= b.pausedUntil && (!r || b.tokens >= 1)) {
      const { msg, onSent } = this._out.shift();
      if (r) b.tokens -= 1;
      const ok = this._sendNow(msg);
      if (onSent) onSent(ok);
    }
    if (!this._out.length || !this._ws) return;
    const wait = Math.max(b.pausedUntil - now, r ? Math.ceil(((1 - b.tokens) * 60000) / r.perMinute) : 0, 1);
    this._timers.pump = setTimeout(() => {
      this._timers.pump = null;
      this._pump();
    }, wait);
  }

  _rateLimited(retryAfter) {
    const ms = typeof retryAfter === 'number' && retryAfter > 0 ? retryAfter : 1000;
    this._bucket.tokens = 0;
    this._bucket.at = this._now();
    this._bucket.pausedUntil = this._now() + ms;
    return ms;
  }

  /** Sends a request and resolves with its reply (rejects with a
   *  LiveHubError on an `error` reply, a timeout or a lost connection).
   *  While not connected the request waits in the offline queue (bounded:
   *  OFFLINE_QUEUE_FULL beyond offlineQueueSize), unless opts.queue is
   *  false (then it fails with DISCONNECTED). */
  request(msg, opts = {}) {
    if (!msg || typeof msg.type !== 'string') return Promise.reject(new TypeError('request: message needs a string type'));
    return new Promise((resolve, reject) => {
      const q = { msg: { ...msg }, resolve, reject, timeout: opts.timeout || this.options.requestTimeout };
      if (this._status === Status.CLOSED) return reject(new LiveHubError('CLOSED', 'the client is closed', { recoverable: false }));
      if (this._status === Status.CONNECTED && this._ws) return this._dispatch(q);
      if (opts.queue === false) return reject(new LiveHubError('DISCONNECTED', 'not connected'));
      if (this._queue.length >= this.options.offlineQueueSize) {
        return reject(new LiveHubError('OFFLINE_QUEUE_FULL', 'the offline queue holds ' + this.options.offlineQueueSize + ' requests already'));
      }
      this._queue.push(q);
    });
  }

  _dispatch(q) {
    const id = this._nextId++;
    const msg = { ...q.msg, id };
    const p = { resolve: q.resolve, reject: q.reject, msg, sub: q.sub, q };
    this._pending.set(id, p);
    // The reply timeout runs from the send, not from the wait for a token.
    this._send(msg, (ok) => {
      if (this._pending.get(id) !== p) return;
      if (!ok) {
        this._pending.delete(id);
        return q.reject(new LiveHubError('DISCONNECTED', 'the socket refused the message'));
      }
      p.timer = setTimeout(() => {
        this._pending.delete(id);
        q.reject(new LiveHubError('TIMEOUT', 'no reply to ' + msg.type + ' within ' + q.timeout + ' ms'));
      }, q.timeout);
    });
  }

  _failAll(code, message) {
    for (const [id, p] of this._pending) {
      clearTimeout(p.timer);
      this._pending.delete(id);
      // Subscriptions stay wanted: connect() again re-sends them.
      if (!p.sub) p.reject(new LiveHubError(code, message, { recoverable: false }));
    }
    for (const sub of this._subs.values()) sub.pending = false;
    const queued = this._queue;
    this._queue = [];
    for (const q of queued) q.reject(new LiveHubError(code, message, { recoverable: false }));
  }

  /** Number of requests waiting in the offline queue. */
  get queued() {
    return this._queue.length;
  }

  /** Round trip to the hub: resolves with the `pong`. */
  ping() {
    return this.request({ type: 'ping' });
  }

  /** A client event to the others on a channel (PROTOCOL.md, client events). */
  publish(channel, event, data) {
    return this.request({ type: 'publish', channel, event, data });
  }

  /** Who is on a channel: resolves with the `presence` reply. */
  presence(channel) {
    return this.request({ type: 'presence', channel });
  }

  // ---- subscriptions ------------------------------------------------------------

  /** Calls handler(event) for every event on channel; subscribes on the hub
   *  (now, or once connected, and again after each reconnect, with `since`
   *  = the last event seen so nothing within the hub's history is missed).
   *  Returns a function that removes the handler (and unsubscribes after
   *  the last one); its `ready` promise resolves with the first
   *  `subscribed` reply, or rejects with the hub's error. */
  subscribe(channel, handler, opts = {}) {
    if (typeof channel !== 'string' || channel === '') throw new TypeError('subscribe: channel must be a non-empty string');
    if (typeof handler !== 'function') throw new TypeError('subscribe: handler must be a function');
    let sub = this._subs.get(channel);
    if (!sub) {
      sub = { handlers: new Set(), offset: null, epoch: null, pending: false, waiters: [] };
      if (opts.since && typeof opts.since.offset === 'number') {
        sub.offset = opts.since.offset;
        sub.epoch = opts.since.epoch;
      }
      this._subs.set(channel, sub);
      if (this._status === Status.CONNECTED) this._sendSubscribe(channel, sub);
    }
    sub.handlers.add(handler);
    let ready;
    if (sub.confirmed) ready = Promise.resolve(sub.confirmed);
    else ready = new Promise((resolve, reject) => sub.waiters.push({ resolve, reject }));
    ready.catch(() => {}); // an unobserved failure is also reported on 'error'
    const unsubscribe = () => this._removeHandler(channel, sub, handler);
    unsubscribe.ready = ready;
    return unsubscribe;
  }

  /** The channels with handlers, and the last position seen on each. */
  subscriptions() {
    return [...this._subs].map(([channel, s]) => ({ channel, offset: s.offset, epoch: s.epoch, subscribed: !!s.confirmed }));
  }

  _removeHandler(channel, sub, handler) {
    sub.handlers.delete(handler);
    if (sub.handlers.size > 0 || this._subs.get(channel) !== sub) return;
    this._subs.delete(channel);
    if (this._status === Status.CONNECTED) this.request({ type: 'unsubscribe', channel }, { queue: false }).catch(() => {});
  }

  _sendSubscribe(channel, sub) {
    if (sub.pending) return;
    sub.pending = true;
    const msg = { type: 'subscribe', channel };
    const since = sub.offset !== null && sub.epoch ? { offset: sub.offset, epoch: sub.epoch } : null;
    if (since) msg.since = since;
    const resubscribe = !!sub.confirmed;
    const q = {
      msg,
      timeout: this.options.requestTimeout,
      sub: true,
      resolve: (reply) => this._onSubscribed(channel, sub, reply, since, resubscribe),
      reject: (err) => this._onSubscribeFailed(channel, sub, err),
    };
    this._dispatch(q);
  }

  _onSubscribed(channel, sub, reply, since, resubscribe) {
    sub.pending = false;
    if (this._subs.get(channel) !== sub) return;
    // The reply's offset is the channel's top: with no position yet, it is
    // where this client starts (the next event is offset + 1).
    const recovered = since ? reply.recovered === true : undefined;
    if (typeof reply.offset === 'number' && typeof reply.epoch === 'string') {
      if (!since || !recovered) {
        sub.offset = reply.offset;
        sub.epoch = reply.epoch;
      }
    } else if (since && !recovered) {
      // A hub without history (or a lost one): the old position means
      // nothing now; the next event sets a new one.
      sub.offset = null;
      sub.epoch = null;
    }
    const info = { channel, offset: reply.offset, epoch: reply.epoch, resubscribe, reply };
    if (since) {
      info.recovered = recovered;
      info.since = since;
    }
    sub.confirmed = info;
    for (const w of sub.waiters.splice(0)) w.resolve(info);
    this._emit('subscribed', info);
    if (since) this._emit('recovery', { channel, recovered, since, offset: reply.offset, epoch: reply.epoch });
  }

  // The implicit channels ($tenant, $user:…) take no subscription, but a
  // hub with history replays them for `subscribe` with `since` (PROTOCOL.md,
  // history and recovery). A hub without refuses: that is recovered:false.
  _recoverImplicit(channel, since) {
    const q = {
      msg: { type: 'subscribe', channel, since: { offset: since.offset, epoch: since.epoch } },
      timeout: this.options.requestTimeout,
      sub: true,
      resolve: (reply) => {
        const recovered = reply.recovered === true;
        if (!recovered) {
          if (typeof reply.offset === 'number' && typeof reply.epoch === 'string') this._implicit.set(channel, { offset: reply.offset, epoch: reply.epoch });
          else this._implicit.delete(channel);
        }
        this._emit('recovery', { channel, recovered, since, offset: reply.offset, epoch: reply.epoch });
      },
      reject: (err) => {
        if (err.code === 'TIMEOUT' || err.code === 'DISCONNECTED') return;
        this._implicit.delete(channel);
        this._emit('recovery', { channel, recovered: false, since });
      },
    };
    this._dispatch(q);
  }

  _onSubscribeFailed(channel, sub, err) {
    sub.pending = false;
    if (err.code === 'TIMEOUT' || err.code === 'DISCONNECTED') return; // tried again on reconnect
    if (this._subs.get(channel) === sub) this._subs.delete(channel);
    const e = new LiveHubError(err.code, 'subscribe ' + channel + ': ' + err.message, { recoverable: err.recoverable, reply: err.reply, channel });
    for (const w of sub.waiters.splice(0)) w.reject(e);
    this._emit('error', e);
  }
}

export default LiveHub;
