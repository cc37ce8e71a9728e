/**
 * The observable state of a registration.
 *
 * @internal
 */
import * as Data from "effect/Data"
import type { LeaseId } from "../EtcdClient.js"
import type { EtcdError } from "../EtcdError.js"

export type RegistrationState = Data.TaggedEnum<{
  /** The key is being put for the first time (or again after a `deregister`). */
  Registering: Record<never, never>
  /** The key is in etcd; `lease` is the lease it is on (`undefined` without TTL). */
  Registered: { readonly lease: LeaseId | undefined }
  /**
   * The key is missing (lease lost, or key deleted) and is being put again:
   * `attempt` is the attempt about to be made (1 for the first), `error` the
   * last failure (the one that lost the lease, then each failed attempt's).
   */
  Retrying: { readonly attempt: number; readonly error: EtcdError }
  /** Deregistered: the key was removed and will never be put again by this registration on its own. */
  Deregistered: Record<never, never>
}>

export const RegistrationState = Data.taggedEnum<RegistrationState>()
