/**
 * effect-sd-etcd: service discovery over etcd for Effect.
 *
 * @since 0.1.0
 */

/** @since 0.1.0 */
export * as Balancer from "./Balancer.js"
/** @since 0.1.0 */
export * as Endpoint from "./Endpoint.js"
/** @since 0.1.0 */
export * as EtcdClient from "./EtcdClient.js"
/** @since 0.1.0 */
export * as EtcdError from "./EtcdError.js"
/** @since 0.1.0 */
export * as HttpEndpoint from "./HttpEndpoint.js"
/** @since 0.1.0 */
export * as Registrar from "./Registrar.js"
/** @since 0.1.0 */
export * as Retry from "./Retry.js"
/** @since 0.1.0 */
export * as Service from "./Service.js"
/** @since 0.1.0 */
export * as Subscriber from "./Subscriber.js"
/** @since 0.1.0 */
export * as TtlOption from "./TtlOption.js"
