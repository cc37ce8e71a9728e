/**
 * Load balancers: pick one endpoint out of a subscriber's (go-kit's `sd/lb`
 * `RoundRobin` and `Random`).
 *
 * @since 0.1.0
 */
import * as Effect from "effect/Effect"
import * as Effectable from "effect/Effectable"
import * as Exit from "effect/Exit"
import * as Option from "effect/Option"
import * as Random from "effect/Random"
import * as Schema from "effect/Schema"
import { SingleShotGen, YieldWrap } from "effect/Utils"
import type { Endpoint } from "./Endpoint.js"
import type { EtcdError } from "./EtcdError.js"
import { Answered } from "./internal/answered.js"
import * as internal from "./internal/subscriber.js"
import type { EndpointSet, Subscriber } from "./Subscriber.js"

/**
 * There was no endpoint to pick (go-kit's `lb.ErrNoEndpoints`).
 *
 * @since 0.1.0
 * @category errors
 */
export class NoEndpoints extends Schema.TaggedError<NoEndpoints>()("NoEndpoints", {
  /** The subscriber's prefix, when the endpoints came from a subscriber. */
  prefix: Schema.optional(Schema.String)
}) {
  /** @since 0.1.0 */
  override get message(): string {
    return this.prefix === undefined ? "no endpoints available" : `no endpoints available under ${this.prefix}`
  }
}

/**
 * A balancer: every run picks one endpoint. Fails with {@link NoEndpoints} when
 * there is none, or with the source's error (`EtcdError` for an invalidated
 * subscriber).
 *
 * @since 0.1.0
 * @category models
 */
export type Balancer<Req, Res, E = never, BE = never> = Effect.Effect<Endpoint<Req, Res, E>, NoEndpoints | BE>

/**
 * Where a balancer takes its endpoints from: a subscriber, or any effect that
 * yields the current endpoints.
 *
 * @since 0.1.0
 * @category models
 */
export type Source<Req, Res, E = never, SE = never> =
  Subscriber<Req, Res, E> | Effect.Effect<ReadonlyArray<Endpoint<Req, Res, E>>, SE>

/** What a balancer over a set it can read synchronously reads on every pick. */
type CurrentSet<Req, Res, E> = internal.PickableSet<Req, Res, E>

/**
 * A source whose current set is read without running an effect: our own
 * Subscriber (its current set), or a fixed array (`Effect.succeed(endpoints)`).
 * `undefined` for any other source, which is run on every pick.
 */
const synchronousSource = <Req, Res, E, SE>(
  source: Source<Req, Res, E, SE>
): { readonly current: () => CurrentSet<Req, Res, E>; readonly prefix: string | undefined } | undefined => {
  if (internal.isSubscriber(source)) {
    const subscriber = source as Subscriber<Req, Res, E>
    const current = internal.currentEndpointSet(subscriber)
    return current === undefined ? undefined : { current, prefix: subscriber.prefix }
  }
  if (Exit.isExit(source) && source._tag === "Success") {
    const endpoints = source.value as ReadonlyArray<Endpoint<Req, Res, E>>
    // read on every pick, as the array may be one the caller changes
    const set: CurrentSet<Req, Res, E> = {
      error: Option.none(),
      get size() {
        return endpoints.length
      },
      at: (i) => endpoints[i]!
    }
    return { current: () => set, prefix: undefined }
  }
  return undefined
}

/**
 * The failure of a pick from an empty set, made once per balancer: a retry
 * that spins on it (no wait between attempts, until the subscriber sees an
 * instance) keeps one value many times, not one error (and its stack) per attempt.
 */
const noEndpointsOf = (prefix: string | undefined): (() => Exit.Exit<never, NoEndpoints>) => {
  let exit: Exit.Exit<never, NoEndpoints> | undefined
  return () => (exit ??= Exit.fail(prefix === undefined ? new NoEndpoints() : new NoEndpoints({ prefix })))
}

/**
 * Builds a balancer from a picking function over a non-empty array, for a
 * source that is run on every pick (another Subscriber implementation reads
 * its endpoint set's ref, without copying).
 */
const fromSource = <Req, Res, E, SE>(
  source: Source<Req, Res, E, SE>,
  pick: (endpoints: ReadonlyArray<Endpoint<Req, Res, E>>) => Effect.Effect<Endpoint<Req, Res, E>>
): Balancer<Req, Res, E, SE | EtcdError> => {
  if (internal.isSubscriber(source)) {
    const subscriber = source as Subscriber<Req, Res, E>
    const empty = noEndpointsOf(subscriber.prefix)
    return Effect.flatMap(
      subscriber.endpointSet.get,
      (set: EndpointSet<Req, Res, E>): Balancer<Req, Res, E, EtcdError> =>
        set.error._tag === "Some"
          ? Effect.fail(set.error.value)
          : set.endpoints.length === 0
            ? empty()
            : pick(set.endpoints)
    )
  }
  const empty = noEndpointsOf(undefined)
  return Effect.flatMap(
    source as Effect.Effect<ReadonlyArray<Endpoint<Req, Res, E>>, SE>,
    (endpoints): Balancer<Req, Res, E, SE> => (endpoints.length === 0 ? empty() : pick(endpoints))
  )
}

/**
 * go-kit's `NewRoundRobin`: the endpoints in turn, from a counter shared by every
 * run of the returned balancer. When the set changes, the turn goes on from the
 * same counter over the new set. A subscriber's endpoints are read from its ref
 * without copying; an invalidated subscriber fails with its `EtcdError`.
 *
 * Over a subscriber made by `Subscriber.make` or a fixed array
 * (`Effect.succeed(endpoints)`) a pick runs no effect of its own: `yield*` in
 * `Effect.gen` has a successful pick without suspending the generator (a
 * failure fails it), `flatMap` and the like run it without allocating, and
 * `Retry` picks synchronously. Any other source is run on every pick.
 *
 * @since 0.1.0
 * @category constructors
 */
export const roundRobin: {
  <Req, Res, E>(subscriber: Subscriber<Req, Res, E>): Balancer<Req, Res, E, EtcdError>
  <Req, Res, E, SE>(endpoints: Effect.Effect<ReadonlyArray<Endpoint<Req, Res, E>>, SE>): Balancer<Req, Res, E, SE>
} = <Req, Res, E, SE>(source: Source<Req, Res, E, SE>): Balancer<Req, Res, E, SE | EtcdError> => {
  const synchronous = synchronousSource(source)
  if (synchronous !== undefined) return new RoundRobin(synchronous.current, synchronous.prefix)
  let counter = 0
  return fromSource(source, (endpoints) => {
    const endpoint = endpoints[counter % endpoints.length]!
    counter = counter === 0x3fffffff ? 0 : counter + 1
    return Effect.succeed(endpoint)
  })
}

/**
 * The key of a balancer's synchronous pick (see {@link RoundRobin}):
 * `Retry` calls it to pick without running an effect. A `Symbol.for` key, so
 * that `Retry` finds it without a public export.
 */
const PickExit: unique symbol = Symbol.for("effect-sd-etcd/Balancer/pickExit")

/**
 * Round robin over a set read synchronously (our own Subscriber's current set, or
 * a fixed array): an effect of its own (`Effectable.Class`), so a pick is one
 * `commit()` that hands back an already-completed effect: per position, an
 * `Exit.succeed` of the endpoint there, made the first time and reused while the
 * same endpoint is there. A pick through `commit()` allocates nothing.
 *
 * `yield*` in `Effect.gen` picks when the generator reaches it (which is when
 * the fiber would run the effect). A successful pick is the return value of
 * the delegated iterator's first step (one small object), so the generator goes
 * on at once without handing anything to the fiber. Yielding a completed `Exit`
 * instead (as before) never reached the run loop either, but it suspended the
 * generator and resumed it with the value, through the fiber's generator step
 * (`yieldWrapGet`, the `Exit` check) and two more objects: about 100 ns a pick
 * on this machine, several times the pick itself. A failure is yielded, and
 * fails the generator as before. Neither way is a point where the fiber checks
 * for interruption or yields to other fibers. Every other way of running the
 * balancer (`flatMap`, `whileLoop`) goes through `commit()`, and `Retry` picks
 * synchronously.
 */
class RoundRobin<Req, Res, E> extends Effectable.Class<Endpoint<Req, Res, E>, NoEndpoints | EtcdError> {
  private counter = 0
  private readonly exits: Array<Exit.Exit<Endpoint<Req, Res, E>> | undefined> = []
  private readonly empty: () => Exit.Exit<never, NoEndpoints>

  constructor(
    private readonly current: () => CurrentSet<Req, Res, E>,
    prefix: string | undefined
  ) {
    super()
    this.empty = noEndpointsOf(prefix)
  }

  commit(): Exit.Exit<Endpoint<Req, Res, E>, NoEndpoints | EtcdError> {
    return this[PickExit]()
  }

  override [Symbol.iterator](): Effect.EffectGenerator<Effect.Effect<Endpoint<Req, Res, E>, NoEndpoints | EtcdError>> {
    const exit = this[PickExit]()
    return exit._tag === "Success" ? new Answered(exit.value) : new SingleShotGen(new YieldWrap(exit))
  }

  [PickExit](): Exit.Exit<Endpoint<Req, Res, E>, NoEndpoints | EtcdError> {
    const set = this.current()
    if (set.error._tag === "Some") return Exit.fail(set.error.value)
    const n = set.size
    if (n === 0) return this.empty()
    const i = this.counter % n
    this.counter = this.counter === 0x3fffffff ? 0 : this.counter + 1
    const endpoint = set.at(i)
    const exit = this.exits[i]
    if (exit !== undefined && exit._tag === "Success" && exit.value === endpoint) return exit
    return (this.exits[i] = Exit.succeed(endpoint))
  }
}

/**
 * go-kit's `NewRandom`: an endpoint drawn uniformly from Effect's `Random`
 * service, so a test can make the sequence reproducible with
 * `Effect.withRandom(Random.make(seed))`. An invalidated subscriber fails with
 * its `EtcdError`.
 *
 * @since 0.1.0
 * @category constructors
 */
export const random: {
  <Req, Res, E>(subscriber: Subscriber<Req, Res, E>): Balancer<Req, Res, E, EtcdError>
  <Req, Res, E, SE>(endpoints: Effect.Effect<ReadonlyArray<Endpoint<Req, Res, E>>, SE>): Balancer<Req, Res, E, SE>
} = <Req, Res, E, SE>(source: Source<Req, Res, E, SE>): Balancer<Req, Res, E, SE | EtcdError> => {
  const synchronous = synchronousSource(source)
  if (synchronous === undefined) {
    return fromSource(source, (endpoints) =>
      Effect.map(Random.nextIntBetween(0, endpoints.length), (i) => endpoints[i]!)
    )
  }
  const { current, prefix } = synchronous
  const empty = noEndpointsOf(prefix)
  // one effect reads the set and the fiber's Random service
  return Effect.randomWith((random): Balancer<Req, Res, E, EtcdError> => {
    const set = current()
    if (set.error._tag === "Some") return Exit.fail(set.error.value)
    const n = set.size
    if (n === 0) return empty()
    return Effect.map(random.nextIntBetween(0, n), (i) => set.at(i))
  })
}
