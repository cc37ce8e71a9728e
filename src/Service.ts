/**
 * What a registration puts into etcd (go-kit's `etcdv3.Service`).
 *
 * @since 0.1.0
 */
import type { TtlOption } from "./TtlOption.js"

/**
 * A service instance: `key` (globally unique, e.g. `/services/foosvc/10.0.0.1:8080`),
 * `value` (how to reach it, e.g. `http://10.0.0.1:8080`), and an optional TTL
 * option. Without a TTL the key is a plain key with no lease.
 *
 * @since 0.1.0
 * @category models
 */
export interface Service {
  readonly key: string
  readonly value: string
  readonly ttl?: TtlOption | undefined
}

/**
 * @since 0.1.0
 * @category constructors
 */
export const make = (service: Service): Service => service
