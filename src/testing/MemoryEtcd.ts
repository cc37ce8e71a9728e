/**
 * The in-memory etcd (the `EtcdClient` service without a server), for
 * `TestClock` unit tests: re-exported from `EtcdClient` next to the real-server kit.
 *
 * @since 0.1.0
 */
import type * as Context from "effect/Context"
import type * as Layer from "effect/Layer"
import * as EtcdClient from "../EtcdClient.js"

/**
 * Controls of the in-memory etcd: faults, compaction, inspection.
 *
 * @since 0.1.0
 * @category models
 */
export type MemoryEtcdControl = EtcdClient.MemoryEtcdControl

/**
 * The tag of the in-memory etcd's controls.
 *
 * @since 0.1.0
 * @category tags
 */
export const MemoryEtcd: Context.Tag<MemoryEtcdControl, MemoryEtcdControl> = EtcdClient.MemoryEtcd

/**
 * The `EtcdClient` service in memory, with its {@link MemoryEtcd} controls
 * (the same layer as `EtcdClient.layerMemory`).
 *
 * @since 0.1.0
 * @category layers
 */
export const layer: Layer.Layer<EtcdClient.EtcdClient | MemoryEtcdControl> = EtcdClient.layerMemory
