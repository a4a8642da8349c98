// React hooks over livehub.js. React is a peer dependency: this module
// imports 'react' and nothing else (a bundler, or an import map in a page
// without one, resolves it).
//
//   <LiveHubProvider client={hub}><App/></LiveHubProvider>
//   const { status, lastEvent } = useWebSocket(projectId);   // seed 004
//   const { lastEvent } = useChannel('job:42');
import { createContext, createElement, useContext, useEffect, useRef, useState } from 'react';

const LiveHubContext = createContext(null);

/** Makes `client` (a LiveHub) the one the hooks below use. */
export function LiveHubProvider({ client, children }) {
  return createElement(LiveHubContext.Provider, { value: client }, children);
}

/** The LiveHub of the nearest provider (or the one given). */
export function useLiveHub(client) {
  const ctx = useContext(LiveHubContext);
  const c = client || ctx;
  if (!c) throw new Error('livehub/react: wrap the tree in <LiveHubProvider client={…}> or pass a client');
  return c;
}

/** The connection status ('connecting', 'connected', 'disconnected', …),
 *  re-rendering on every change. */
export function useStatus(client) {
  const c = useLiveHub(client);
  const [status, setStatus] = useState(c.status);
  useEffect(() => {
    setStatus(c.status);
    return c.on('status', (s) => setStatus(s.status));
  }, [c]);
  return status;
}

/** Subscribes to `channel` while mounted (and while channel stays the
 *  same): returns {status, lastEvent, recovered, error}. `recovered` is
 *  false after a reconnect that could not recover missed events — the
 *  moment to refetch state. onEvent, when given, sees every event. A null
 *  or empty channel subscribes to nothing. */
export function useChannel(channel, options = {}) {
  const c = useLiveHub(options.client);
  const status = useStatus(c);
  const [lastEvent, setLastEvent] = useState(null);
  const [recovered, setRecovered] = useState(null);
  const [error, setError] = useState(null);
  const onEvent = useRef(options.onEvent);
  onEvent.current = options.onEvent;
  useEffect(() => {
    setLastEvent(null);
    setRecovered(null);
    setError(null);
    if (!channel) return undefined;
    const unsubscribe = c.subscribe(channel, (ev) => {
      setLastEvent(ev);
      if (onEvent.current) onEvent.current(ev);
    });
    let live = true;
    unsubscribe.ready.catch((e) => live && setError(e));
    const offRecovery = c.on('recovery', (r) => {
      if (r.channel === channel) setRecovered(r.recovered);
    });
    return () => {
      live = false;
      offRecovery();
      unsubscribe();
    };
  }, [c, channel]);
  return { status, lastEvent, recovered, error };
}

/** Seed 004's hook: the project's channel (`project:{projectId}`, where
 *  livehub publishes job events that name the project). Returns {status,
 *  lastEvent} (plus recovered and error, as useChannel). */
export function useWebSocket(projectId, options = {}) {
  return useChannel(projectId ? 'project:' + projectId : null, options);
}

/** Calls handler for every event of `type` (e.g. 'price:updated', which
 *  reaches every connection of the tenant without subscribing). */
export function useEvent(type, handler, client) {
  const c = useLiveHub(client);
  const ref = useRef(handler);
  ref.current = handler;
  useEffect(() => c.on(type, (ev) => ref.current(ev)), [c, type]);
}
