// Types for react.js (React is a peer dependency).
import type { ReactNode, ReactElement } from 'react';
import type { HubEvent, LiveHub, LiveHubError, Status } from './livehub.js';

export declare function LiveHubProvider(props: { client: LiveHub; children?: ReactNode }): ReactElement;
export declare function useLiveHub(client?: LiveHub): LiveHub;
export declare function useStatus(client?: LiveHub): Status;

export interface ChannelState<D = any> {
  status: Status;
  lastEvent: HubEvent<D> | null;
  /** null until a re-subscribe; false when missed events were lost (refetch). */
  recovered: boolean | null;
  error: LiveHubError | null;
}

export declare function useChannel<D = any>(channel: string | null | undefined,
  options?: { client?: LiveHub; onEvent?: (ev: HubEvent<D>) => void }): ChannelState<D>;
export declare function useWebSocket<D = any>(projectId: string | null | undefined,
  options?: { client?: LiveHub; onEvent?: (ev: HubEvent<D>) => void }): ChannelState<D>;
export declare function useEvent(type: string, handler: (ev: HubEvent) => void, client?: LiveHub): void;
