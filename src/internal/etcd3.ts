/**
 * The EtcdClient over the `etcd3` gRPC client (stub: being written).
 *
 * @internal
 */
import * as Effect from "effect/Effect"
import type * as Scope from "effect/Scope"
import type { EtcdClient, EtcdClientOptions } from "../EtcdClient.js"
import type { EtcdError, InvalidOptions } from "../EtcdError.js"

export const make = (_options: EtcdClientOptions): Effect.Effect<EtcdClient, InvalidOptions | EtcdError, Scope.Scope> =>
  Effect.dieMessage("not implemented yet")
