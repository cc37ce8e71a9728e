/**
 * The Registrar: keeps a service instance registered in etcd (go-kit's
 * `etcdv3.Registrar`) as a scoped resource.
 *
 * Registering grants a lease of the service's TTL and puts the key on it; a
 * heartbeat fiber keeps the lease alive. Closing the scope (on success,
 * failure, interruption, or SIGTERM / SIGINT under `NodeRuntime.runMain`)
 * stops the heartbeat and revokes the lease, or deletes the key.
 *
 * Unlike go-kit, a registration heals itself: when its lease is lost (etcd
 * unreachable for longer than the TTL, or the lease revoked) or its key is
 * deleted by someone else, it grants a new lease and puts the key again,
 * forever, with jittered exponential backoff (200 ms, capped at 2 s). It never
 * does so after it was deregistered. Deletes are seen through a watch of the
 * key's directory, opened 100 ms after the directory's first registration
 * (so that registering is only a grant and a put) from the registration's
 * revision: a delete in between is repaired when it opens.
 *
 * Registrations of one `EtcdClient` with the same TTL option share one lease
 * and one heartbeat (like etcd's concurrency `Session`): one keep-alive per
 * heartbeat whatever their number. Deregistering one of them deletes its key;
 * the lease is revoked with the last of them.
 *
 * @since 0.1.0
 */
import type * as Config from "effect/Config"
import type * as ConfigError from "effect/ConfigError"
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import type * as Metric from "effect/Metric"
import type * as Scope from "effect/Scope"
import * as Stream from "effect/Stream"
import type * as Subscribable from "effect/Subscribable"
import type { EtcdClient } from "./EtcdClient.js"
import type { EtcdError, InvalidOptions, NoKey, NoValue } from "./EtcdError.js"
import * as internal from "./internal/registrar.js"
import { traced } from "./internal/tracing.js"
import * as Lease from "./internal/registrarLease.js"
import * as internalState from "./internal/registrarState.js"
import type { Service } from "./Service.js"

/**
 * Where a registration stands.
 *
 * - `Registering`: the key is being put (by `make` or `register`).
 * - `Registered`: the key is in etcd, on `lease` (`undefined` without TTL).
 * - `Retrying`: the key is missing (lease lost, key deleted) and is being put
 *   again; `attempt` is the attempt about to be made (1 for the first), `error`
 *   the last failure.
 * - `Deregistered`: removed; nothing puts it back unless `register` is called.
 *
 * @since 0.1.0
 * @category models
 */
export type RegistrationState = internalState.RegistrationState

/**
 * Constructors and matchers of {@link RegistrationState}
 * (`RegistrationState.$is("Registered")`, `RegistrationState.$match`).
 *
 * @since 0.1.0
 * @category models
 */
export const RegistrationState = internalState.RegistrationState

/**
 * A registered service instance (go-kit's `Registrar`).
 *
 * @since 0.1.0
 * @category models
 */
export interface Registration {
  /** The service as validated. */
  readonly service: Service
  /** The current state (`get`) and its changes (`changes`): the Registrar alone writes it. */
  readonly state: Subscribable.Subscribable<RegistrationState>
  /**
   * go-kit's `Register`: registers again after a `deregister`; does nothing
   * while registered (or healing). Once the scope it was made in has closed it
   * dies instead: nothing would ever deregister it.
   */
  readonly register: Effect.Effect<void, EtcdError>
  /**
   * go-kit's `Deregister`: stops the heartbeat and self-healing, then removes
   * the key (revoking the lease when no other registration shares it). Does
   * nothing when not registered. The state is `Deregistered` even when it
   * fails; the error says the key could not be removed now (it then goes with
   * its lease).
   */
  readonly deregister: Effect.Effect<void, EtcdError>
}

/**
 * The registration provided by {@link layer}.
 *
 * @since 0.1.0
 * @category tags
 */
export class Registrar extends Context.Tag("effect-sd-etcd/Registrar")<Registrar, Registration>() {}

/**
 * Registers a service for the lifetime of the scope.
 *
 * Checks the service first, before anything reaches etcd: an empty key fails
 * with `NoKey`, an empty value with `NoValue`, a TTL option that breaks the
 * rules of `TtlOption.make` with `InvalidOptions`. Then grants the lease (or
 * joins the shared one), puts the key, and starts the heartbeat: the key is in
 * etcd when this returns. Fails with `EtcdError` when etcd does not take the
 * registration (it is not retried: self-healing starts once registered).
 * Closing the scope deregisters.
 *
 * @since 0.1.0
 * @category constructors
 */
export const make = (
  service: Service
): Effect.Effect<Registration, NoKey | NoValue | InvalidOptions | EtcdError, EtcdClient | Scope.Scope> =>
  internal.make(service).pipe(traced("Registrar.make", service.key))

/**
 * Registers the service while the layer lives; deregisters in its finalizer.
 *
 * @since 0.1.0
 * @category layers
 */
export const layer = (
  service: Service
): Layer.Layer<Registrar, NoKey | NoValue | InvalidOptions | EtcdError, EtcdClient> =>
  Layer.scoped(Registrar, make(service))

/**
 * {@link layer} with the service read from `Config`.
 *
 * @since 0.1.0
 * @category layers
 */
export const layerConfig = (
  service: Config.Config<Service>
): Layer.Layer<Registrar, NoKey | NoValue | InvalidOptions | EtcdError | ConfigError.ConfigError, EtcdClient> =>
  Layer.scoped(Registrar, Effect.flatMap(service, make))

/**
 * Registers the {@link Registrar} layer's service again after a `deregister`.
 *
 * @since 0.1.0
 * @category accessors
 */
export const register: Effect.Effect<void, EtcdError, Registrar> = Effect.flatMap(Registrar, (r) => r.register)

/**
 * Deregisters the {@link Registrar} layer's service (before the layer ends).
 *
 * @since 0.1.0
 * @category accessors
 */
export const deregister: Effect.Effect<void, EtcdError, Registrar> = Effect.flatMap(Registrar, (r) => r.deregister)

/**
 * The states of the {@link Registrar} layer's registration: the current one, then every change.
 *
 * @since 0.1.0
 * @category accessors
 */
export const changes: Stream.Stream<RegistrationState, never, Registrar> = Stream.unwrap(
  Effect.map(Registrar, (r) => r.state.changes)
)

/**
 * Waits until the registration is `Registered` (at once if it is). A
 * deregistered registration is waited on until `register` is called again:
 * once its scope has closed it never will be, and this never returns (bound it
 * with `Effect.timeout` when that can happen).
 *
 * @since 0.1.0
 * @category combinators
 */
export const awaitRegistered = (
  registration: Registration
): Effect.Effect<Extract<RegistrationState, { readonly _tag: "Registered" }>> =>
  registration.state.changes.pipe(
    Stream.filter(RegistrationState.$is("Registered")),
    Stream.runHead,
    Effect.flatMap((o) => (o._tag === "Some" ? Effect.succeed(o.value) : Effect.never))
  )

/**
 * The Registrar's metrics (counters, without labels):
 * `effect_sd_etcd_registrations`, `effect_sd_etcd_deregistrations`,
 * `effect_sd_etcd_heartbeat_failures`, `effect_sd_etcd_leases_lost`,
 * `effect_sd_etcd_re_registrations`.
 *
 * @since 0.1.0
 * @category metrics
 */
export const metrics: {
  readonly registrations: Metric.Metric.Counter<number>
  readonly deregistrations: Metric.Metric.Counter<number>
  readonly heartbeatFailures: Metric.Metric.Counter<number>
  readonly leasesLost: Metric.Metric.Counter<number>
  readonly reRegistrations: Metric.Metric.Counter<number>
} = {
  registrations: Lease.registrations,
  deregistrations: Lease.deregistrations,
  heartbeatFailures: Lease.heartbeatFailures,
  leasesLost: Lease.leasesLost,
  reRegistrations: Lease.reRegistrations
}

/**
 * The current state of a registration.
 *
 * @since 0.1.0
 * @category accessors
 */
export const state = (registration: Registration): Effect.Effect<RegistrationState> => registration.state.get
