/**
 * The in-memory etcd (stub: being written).
 *
 * @internal
 */
import * as Effect from "effect/Effect"
import type * as Scope from "effect/Scope"
import type { EtcdClient, MemoryEtcdControl } from "../EtcdClient.js"

export const make: Effect.Effect<
  { readonly client: EtcdClient; readonly control: MemoryEtcdControl },
  never,
  Scope.Scope
> = Effect.dieMessage("not implemented yet")
