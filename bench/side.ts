/**
 * One side of a comparison, as the workers drive it: ours (effect-sd-etcd) or
 * the raw etcd3 baseline.
 */
import type { Tracker } from "./view.js"

export interface SubscriberSide {
  /** Starts a subscriber on `prefix` that reports to `tracker`; resolves once it is started; returns its stop. */
  readonly subscribe: (prefix: string, tracker: Tracker) => Promise<() => Promise<void>>
  readonly close: () => Promise<void>
}

export interface RegistrarSide {
  /** Registers `value` under `key` (resolves once etcd has the key). */
  readonly register: (key: string, value: string) => Promise<void>
  /** Ends the registration of `key` (resolves once it is fully released). */
  readonly deregister: (key: string) => Promise<void>
  readonly close: () => Promise<void>
}

export interface SideOptions {
  readonly endpoint: string
  /** The lease TTL of a registration, in seconds. */
  readonly ttlSeconds: number
  /** Ours only: the heartbeat interval, in milliseconds. */
  readonly heartbeatMillis: number
}
