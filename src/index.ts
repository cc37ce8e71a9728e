/**
 * effect-sd-etcd: service discovery over etcd for Effect.
 *
 * @since 0.1.0
 */

/** @since 0.1.0 */
export * as EtcdClient from "./EtcdClient.js"
/** @since 0.1.0 */
export * as EtcdError from "./EtcdError.js"
/** @since 0.1.0 */
export * as Service from "./Service.js"
/** @since 0.1.0 */
export * as TtlOption from "./TtlOption.js"
