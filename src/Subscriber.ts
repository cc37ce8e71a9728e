/**
 * Watches a key prefix in etcd and keeps one endpoint per instance under it
 * (go-kit's `etcdv3.Instancer` + `sd.Endpointer`, without their gaps).
 *
 * The subscriber lists the prefix once, then applies the watch's changes from
 * the listed revision on: nothing is missed between the list and the watch, and
 * an event costs no request to etcd. When etcd cancels the watch (compaction, a
 * wiped cluster, anything else) it lists again and applies the difference. The
 * watch reconnects by itself on a `Schedule`, resuming from the last revision
 * seen; failed lists are retried on a `Schedule`, forever. Every failure is
 * logged and visible in {@link Subscriber.state}.
 *
 * Changes are applied in batches. Changes that come a few at a time are
 * applied at the next turn of the event loop. In a burst (etcd delivering
 * changes by the dozen, milliseconds apart) a batch gathers them while they keep
 * coming at 3 or more per millisecond, until they pause for 2 ms, 10 ms at most:
 * each update of the endpoints then covers many changes.
 *
 * @since 0.1.0
 */
import * as Config from "effect/Config"
import type * as ConfigError from "effect/ConfigError"
import * as Context from "effect/Context"
import type * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import { dual } from "effect/Function"
import * as Layer from "effect/Layer"
import type * as Option from "effect/Option"
import type * as Schedule from "effect/Schedule"
import type * as Scope from "effect/Scope"
import type * as Subscribable from "effect/Subscribable"
import type { Endpoint, Factory } from "./Endpoint.js"
import type { EtcdClient } from "./EtcdClient.js"
import type { EtcdError, InvalidOptions } from "./EtcdError.js"
import * as internal from "./internal/subscriber.js"

/**
 * @since 0.1.0
 * @category type ids
 */
export const TypeId: typeof internal.TypeId = internal.TypeId

/**
 * @since 0.1.0
 * @category type ids
 */
export type TypeId = typeof TypeId

/**
 * The endpoints of a subscriber, one per instance whose factory succeeded, in
 * the order of their keys. `keys[i]` is the key of `endpoints[i]`.
 *
 * A set made by {@link make} is a snapshot that shares what did not change with
 * the sets before and after it: a change copies the leaves of about 64
 * instances it touches and the list of leaves, not every instance. `size` reads
 * it as it is; `endpoints` and `keys` are arrays built the first time they are
 * read (O(N), once per set; none is built for a set of up to 128).
 * A balancer needs neither: its pick reads the snapshot directly. A set reads
 * as the plain `{ size, endpoints, keys, error }` (a spread copy, `toEqual`);
 * a `Subscriber` of your own (a test double) gives `size` too.
 *
 * `error` is set when `invalidateOnError` is on and etcd has been failing for
 * longer than its timeout: taking endpoints then fails with that error (the last
 * good `endpoints` stay here for inspection). It clears at the next good update.
 *
 * @since 0.1.0
 * @category models
 */
export interface EndpointSet<Req, Res, E = never> {
  /** How many endpoints: `endpoints.length`, without building the array. */
  readonly size: number
  readonly endpoints: ReadonlyArray<Endpoint<Req, Res, E>>
  readonly keys: ReadonlyArray<string>
  readonly error: Option.Option<EtcdError>
}

/**
 * How the subscription is doing.
 *
 * - `Starting`: the first listing has not finished yet.
 * - `Live`: the instance set follows etcd. A member that stops answering
 *   without closing the connection (paused, hung) is found out by the watch's
 *   own timer: after `dialKeepAlive` (an `EtcdClient` option) without a
 *   message it asks the member for a progress report, and gives up when none
 *   comes within `headerTimeoutPerRequest`. Until then the set is stale and
 *   the state still `Live`: for up to `dialKeepAlive` +
 *   `headerTimeoutPerRequest` after the member's last message (6 s with the
 *   defaults, about that long on a busy watch; an idle one finds out 3 to 6 s
 *   after the pause). Then it is `Failing` (reason `Timeout`) while the watch
 *   reconnects, to another member in a cluster.
 * - `Failing`: etcd cannot be reached (the watch is disconnected, or listing
 *   fails); `error` is the latest failure, `since` the time the failures began
 *   (epoch milliseconds on the Effect `Clock`). The subscriber keeps retrying.
 *
 * @since 0.1.0
 * @category models
 */
export type State =
  | { readonly _tag: "Starting" }
  | { readonly _tag: "Live" }
  | { readonly _tag: "Failing"; readonly error: EtcdError; readonly since: number }

/**
 * A subscription to the instances under a prefix, and their endpoints.
 * Stop it by closing the scope it was made in: its fibers are interrupted and
 * every endpoint's scope is closed, one after another; the close ends when
 * the last endpoint finalizer does (see {@link Options.factory}).
 *
 * @since 0.1.0
 * @category models
 */
export interface Subscriber<Req, Res, E = never> {
  readonly [TypeId]: TypeId
  /** The watched prefix, normalised to end with `/`. */
  readonly prefix: string
  /**
   * The instances: key → instance string (the value in etcd), in key order.
   * A key or a value that is not valid UTF-8 (written by another client) is
   * left out, with a warning each time it is listed or put; such a key is
   * never taken for another, and its delete removes no instance. `changes`
   * emits the current value, then the new value after each update (a batch of
   * changes from etcd is one update); a consumer that falls behind skips to
   * the newest value instead of queueing the ones in between.
   */
  readonly instances: Subscribable.Subscribable<ReadonlyMap<string, string>>
  /**
   * The endpoints and the invalidation error, as one value; `changes` behaves
   * as for `instances`. Reading it costs no copy while nothing changes. To
   * act on every update, use {@link follow}: it costs less than draining
   * `changes`.
   */
  readonly endpointSet: Subscribable.Subscribable<EndpointSet<Req, Res, E>>
  /**
   * The current endpoints, in key order. Fails with the etcd error once
   * `invalidateOnError`'s timeout has passed (see {@link EndpointSet}), and with
   * an `EtcdError` of reason `Canceled` once the subscriber's scope is closed
   * (its endpoints' scopes are closed then; the instances and endpoints it
   * publishes are empty).
   */
  readonly endpoints: Effect.Effect<ReadonlyArray<Endpoint<Req, Res, E>>, EtcdError>
  /** How the subscription is doing; `changes` streams every transition. */
  readonly state: Subscribable.Subscribable<State>
}

/**
 * @since 0.1.0
 * @category models
 */
export interface Options<Req, Res, E = never, FE = never, R = never> {
  /** The prefix to watch; normalised to end with `/`, so `/services/bar` never sees `/services/barsvc2/...`. */
  readonly prefix: string
  /**
   * Makes an endpoint from an instance string, in a scope closed when the
   * instance leaves or changes. The scopes of instances that left are closed
   * after the change is published, one after another, by one fiber, in the
   * order they left: a finalizer that takes long (a graceful drain) holds up
   * no change, but one that never ends leaves every endpoint scope queued
   * after it open for good, and the subscriber's own close never ends: it
   * waits for that fiber, then closes the endpoint scopes still open one by
   * one (those still queued, then the others in key order), so a finalizer
   * that hangs there holds up the ones after it too. Bound a finalizer that
   * could hang (`Effect.timeout`).
   */
  readonly factory: Factory<Req, Res, E, FE, R>
  /**
   * go-kit's `InvalidateOnError(timeout)`. Without it (the default) the last good
   * endpoints keep being served while etcd is unreachable. With it, once failures
   * (a disconnected watch, failing lists) have lasted `timeout`, taking endpoints
   * fails with the etcd error until the next good update.
   */
  readonly invalidateOnError?: Duration.DurationInput | undefined
  /**
   * When to reconnect a disconnected watch. Defaults to a jittered exponential
   * backoff from 100 ms capped at 2 s, forever.
   */
  readonly reconnect?: Schedule.Schedule<unknown, EtcdError> | undefined
  /**
   * When to list again after a failed list, or after the watch failed for a
   * reason a new list does not fix at once (`PermissionDenied`, ...). Defaults
   * to the same backoff as `reconnect`. Retries go on forever: a schedule that
   * ends is started over.
   */
  readonly retryList?: Schedule.Schedule<unknown, EtcdError> | undefined
  /**
   * How long one factory may run. Factories run one after another, so a factory
   * that hangs holds up every later change (deletes included) until it ends.
   * With this option, a factory still running after `factoryTimeout` is given
   * up on: its instance is skipped with a warning, like a failed one (it is
   * made again when its value changes or the prefix is listed again), and the
   * subscriber goes on at once, even when the factory cannot be interrupted
   * then (an `Effect.acquireRelease` whose acquire hangs). The factory is
   * interrupted in the background, and its scope is closed at the deadline:
   * what it had acquired is released then, and whatever it acquires after (an
   * acquire that ends late) is released as soon as it is acquired. Factories
   * that run without the run loop (see `Factory`) are not timed: they cannot
   * hang. Off by default: timing a factory forks two fibers for it (a few µs
   * per instance).
   */
  readonly factoryTimeout?: Duration.DurationInput | undefined
}

/**
 * Whether a value is a {@link Subscriber}.
 *
 * @since 0.1.0
 * @category guards
 */
export const isSubscriber: (u: unknown) => u is Subscriber<unknown, unknown, unknown> = internal.isSubscriber

/**
 * Starts a subscriber in the current scope. Returns once the first listing has
 * been applied, or has failed (the subscriber then keeps retrying in the
 * background and reports `Failing` in its state). Fails with `InvalidOptions`
 * on an empty prefix, a negative `invalidateOnError`, a `factoryTimeout` that
 * is not positive, either of them that is not a duration (NaN included), or
 * either of them longer than a timer can wait (2^31 - 1 ms, about 24.8 days;
 * `Duration.infinity` is accepted, and means never, as leaving the option
 * out). When the scope is
 * closed before the first listing is applied (a layer torn down while it is
 * built, a timeout around `Scope.extend`), `make` is interrupted: the
 * subscriber is stopped, the endpoints made so far are closed, and there is
 * no subscriber to return.
 *
 * @since 0.1.0
 * @category constructors
 */
export const make: <Req, Res, E = never, FE = never, R = never>(
  options: Options<Req, Res, E, FE, R>
) => Effect.Effect<Subscriber<Req, Res, E>, InvalidOptions, EtcdClient | Scope.Scope | Exclude<R, Scope.Scope>> =
  Effect.fn("Subscriber.make")(function* <Req, Res, E, FE, R>(options: Options<Req, Res, E, FE, R>) {
    yield* Effect.annotateCurrentSpan("prefix", options.prefix)
    return yield* internal.make(options)
  })

/**
 * Runs `f` on the current value of a subscriber's `endpointSet`, `instances`
 * or `state` (or of any `Subscribable`), then on each new value, one call at a
 * time, until interrupted: it never ends by itself, and fails when `f` fails.
 * On a subscriber's own values, as with their `changes`, a follower that falls
 * behind skips to the newest value instead of queueing the ones in between;
 * on any other `Subscribable` (a subscriber's `state` is a `SubscriptionRef`'s)
 * it sees each value its `changes` gives.
 *
 * It does what `Stream.runForEach(subscribable.changes, f)` does, for less: on
 * a subscriber's own values it waits for the next change without a stream in
 * between (a change reaches `f` tens of microseconds sooner, with less work per
 * update under churn), and it does not keep the values it has passed reachable
 * (in Effect 3, a stream drained into a sink often does until the next full
 * garbage collection, which at 10,000 instances doubled the subscriber's GC
 * time under churn). On a subscriber's own values, an `f` whose effect is a
 * plain `Effect.sync` (or an already-made result such as `Effect.void`) is run
 * in the microtask after the change, without waking the following fiber; any
 * other effect is run by the fiber. Fork it into the scope the subscriber
 * lives in:
 *
 * ```ts
 * yield* Effect.forkScoped(
 *   Subscriber.follow(users.endpointSet, (set) => Effect.log(`${set.size} users endpoints`))
 * )
 * ```
 *
 * @since 0.1.0
 * @category combinators
 */
export const follow: {
  <A, E, R>(f: (a: A) => Effect.Effect<void, E, R>): (self: Subscribable.Subscribable<A>) => Effect.Effect<never, E, R>
  <A, E, R>(self: Subscribable.Subscribable<A>, f: (a: A) => Effect.Effect<void, E, R>): Effect.Effect<never, E, R>
} = dual(2, internal.follow)

/**
 * Makes a `Context.Tag` class for one upstream service's subscriber, so that a
 * program can depend on several:
 *
 * ```ts
 * class Users extends Subscriber.Tag<Users, GetUser, User, HttpError>()("app/Users") {}
 * class Orders extends Subscriber.Tag<Orders, GetOrders, Orders, HttpError>()("app/Orders") {}
 * ```
 *
 * @since 0.1.0
 * @category tags
 */
export const Tag =
  <Self, Req, Res, E = never>() =>
  <const Id extends string>(id: Id): Context.TagClass<Self, Id, Subscriber<Req, Res, E>> =>
    Context.Tag(id)<Self, Subscriber<Req, Res, E>>()

/**
 * Provides a subscriber under `tag`; it stops when the layer is released.
 *
 * @since 0.1.0
 * @category layers
 */
export const layer = <Self, Req, Res, E = never, FE = never, R = never>(
  tag: Context.Tag<Self, Subscriber<Req, Res, E>>,
  options: Options<Req, Res, E, FE, R>
): Layer.Layer<Self, InvalidOptions, EtcdClient | Exclude<R, Scope.Scope>> => Layer.scoped(tag, make(options))

/**
 * The options of a subscriber that can come from configuration.
 *
 * @since 0.1.0
 * @category config
 */
export interface SubscriberConfig {
  readonly prefix: string
  readonly invalidateOnError?: Duration.DurationInput | undefined
}

/**
 * Like {@link layer}, with the prefix (and optionally `invalidateOnError`) read
 * from `Config`, e.g. `{ prefix: Config.string("USERS_PREFIX") }`.
 *
 * @since 0.1.0
 * @category layers
 */
export const layerConfig = <Self, Req, Res, E = never, FE = never, R = never>(
  tag: Context.Tag<Self, Subscriber<Req, Res, E>>,
  config: Config.Config.Wrap<SubscriberConfig>,
  options: Omit<Options<Req, Res, E, FE, R>, "prefix" | "invalidateOnError">
): Layer.Layer<Self, InvalidOptions | ConfigError.ConfigError, EtcdClient | Exclude<R, Scope.Scope>> =>
  Layer.scoped(
    tag,
    Effect.flatMap(Config.unwrap(config), (c) =>
      make({ ...options, prefix: c.prefix, invalidateOnError: c.invalidateOnError })
    )
  )
