/**
 * The observable state of a registration.
 *
 * @internal
 */
import * as Data from "effect/Data"
import * as Effect from "effect/Effect"
import * as Subscribable from "effect/Subscribable"
import * as SubscriptionRef from "effect/SubscriptionRef"
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

/**
 * A registration's state as the Registrar writes it: a plain value until
 * someone asks for `ref`, then a `SubscriptionRef` that starts from the
 * current value. Most registrations are never watched, and making a
 * `SubscriptionRef` (a PubSub, a Ref and a semaphore), then setting it under
 * its semaphore on every transition, was a good part of what a registration
 * cost before its grant went out (issue 7).
 */
export class StateCell {
  private value: RegistrationState
  private subscriptionRef: SubscriptionRef.SubscriptionRef<RegistrationState> | undefined = undefined

  constructor(initial: RegistrationState) {
    this.value = initial
  }

  private readOnly: Subscribable.Subscribable<RegistrationState> | undefined = undefined

  /** The state and its changes, from now on through a SubscriptionRef. */
  get ref(): SubscriptionRef.SubscriptionRef<RegistrationState> {
    // making one only allocates: it runs to completion synchronously
    this.subscriptionRef ??= Effect.runSync(SubscriptionRef.make(this.value))
    return this.subscriptionRef
  }

  /** The read side of {@link ref}: what a registration hands out (the Registrar alone writes its state). */
  get view(): Subscribable.Subscribable<RegistrationState> {
    if (this.readOnly === undefined) {
      const ref = this.ref
      this.readOnly = Subscribable.make({ get: SubscriptionRef.get(ref), changes: ref.changes })
    }
    return this.readOnly
  }

  set(state: RegistrationState): Effect.Effect<void> {
    return Effect.suspend(() => {
      if (this.subscriptionRef !== undefined) return SubscriptionRef.set(this.subscriptionRef, state)
      this.value = state
      return Effect.void
    })
  }
}
