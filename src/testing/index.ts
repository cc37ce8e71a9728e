/**
 * effect-sd-etcd/testing: a real etcd (single server or loopback cluster,
 * plain or mutual TLS, with auth helpers) spawned as a scoped resource, and the
 * in-memory etcd, for tests.
 *
 * @since 0.1.0
 */

/** @since 0.1.0 */
export * as EtcdAuth from "./EtcdAuth.js"
/** @since 0.1.0 */
export * as EtcdCluster from "./EtcdCluster.js"
/** @since 0.1.0 */
export * as EtcdMember from "./EtcdMember.js"
/** @since 0.1.0 */
export * as EtcdServer from "./EtcdServer.js"
/** @since 0.1.0 */
export * as EtcdTestError from "./EtcdTestError.js"
/** @since 0.1.0 */
export * as EtcdTls from "./EtcdTls.js"
/** @since 0.1.0 */
export * as MemoryEtcd from "./MemoryEtcd.js"
