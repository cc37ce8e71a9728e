/**
 * The baseline: the same work done with the raw `etcd3` client, the way a
 * user of etcd3 would write it. Register = a lease (etcd3 keeps it alive by
 * itself) + a put on it; deregister = revoking the lease. Subscribe =
 * `getAll().prefix()` + a prefix watch from the listing's revision + 1,
 * applied to a Map.
 */
import { Etcd3, type Lease } from "etcd3"
import type { ViewSnapshot } from "./view.js"
import { type Tracker } from "./view.js"
import { keyOf } from "./keys.js"

/** A raw client configured like ours: no gRPC receive limit. */
export const rawClient = (endpoint: string): Etcd3 =>
  new Etcd3({ hosts: [endpoint], grpcOptions: { "grpc.max_receive_message_length": -1 } })

/** The raw subscriber: a Map of key → instance, listed once, then kept by a prefix watch. */
export const rawSubscribe = async (
  client: Etcd3,
  prefix: string,
  tracker: Tracker
): Promise<{ readonly stop: () => Promise<void>; readonly map: Map<string, string> }> => {
  const map = new Map<string, string>()
  const view: ViewSnapshot = {
    get size() {
      return map.size
    },
    has: (instance) => map.get(keyOf(prefix, instance)) === instance,
    values: () => map.values()
  }
  const listing = await client.getAll().prefix(prefix).exec()
  for (const kv of listing.kvs) {
    const value = kv.value.toString()
    map.set(kv.key.toString(), value)
    tracker.added(value)
  }
  tracker.changed(view)
  const watcher = await client
    .watch()
    .prefix(prefix)
    .startRevision(String(Number(listing.header.revision) + 1))
    .create()
  watcher.on("data", (res) => {
    for (const ev of res.events) {
      const key = ev.kv.key.toString()
      if (ev.type === "Put") {
        const value = ev.kv.value.toString()
        map.set(key, value)
        tracker.added(value)
      } else {
        map.delete(key)
      }
    }
    tracker.changed(view)
  })
  return { stop: () => watcher.cancel(), map }
}

/** The raw registrar: one etcd3 lease per registration. */
export class RawRegistrar {
  private readonly leases = new Map<string, Lease>()
  constructor(
    private readonly client: Etcd3,
    private readonly ttlSeconds: number
  ) {}

  async register(key: string, value: string): Promise<void> {
    const lease = this.client.lease(this.ttlSeconds)
    lease.on("lost", () => undefined)
    await lease.put(key).value(value)
    this.leases.set(key, lease)
  }

  async deregister(key: string): Promise<void> {
    const lease = this.leases.get(key)
    if (lease === undefined) throw new Error(`not registered: ${key}`)
    this.leases.delete(key)
    await lease.revoke()
  }

  async deregisterAll(): Promise<void> {
    await Promise.all([...this.leases.keys()].map((key) => this.deregister(key)))
  }
}
