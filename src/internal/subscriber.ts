/**
 * The subscriber's engine: list once, apply watch deltas, re-list when etcd
 * cancels the watch, one scoped endpoint per instance.
 *
 * Where the time goes (issue 7): an instance costs a row (key, value,
 * endpoint) in a persistent sorted sequence cut into leaves of about 64 rows
 * (see `Rows`), and an endpoint scope only if its factory used it; factories
 * run in one loop per batch, each with its own scope in its context unless its
 * effect cannot see the context; a batch of changes (a listing, or what the
 * watch delivered in one turn of the event loop, or in about a millisecond
 * during a burst) is applied without a yield, so that a reader never sees half
 * of it; and the published snapshots are built when someone reads them, each
 * an O(1) view of the rows, which a batch never changes in place: it copies
 * the leaves it changes and the list of leaves (O(changes × 64 + N / 64) per
 * batch; flat arrays rebuilt per batch made the CPU under churn grow with N).
 *
 * @internal
 */
import * as Cause from "effect/Cause"
import * as Channel from "effect/Channel"
import * as Chunk from "effect/Chunk"
import * as Clock from "effect/Clock"
import * as Context from "effect/Context"
import * as Deferred from "effect/Deferred"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as ExecutionStrategy from "effect/ExecutionStrategy"
import * as Exit from "effect/Exit"
import * as Fiber from "effect/Fiber"
import * as FiberRef from "effect/FiberRef"
import * as Option from "effect/Option"
import { pipeArguments } from "effect/Pipeable"
import * as Readable from "effect/Readable"
import * as Runtime from "effect/Runtime"
import * as Schedule from "effect/Schedule"
import * as Scope from "effect/Scope"
import * as Stream from "effect/Stream"
import * as Subscribable from "effect/Subscribable"
import * as SubscriptionRef from "effect/SubscriptionRef"
import type { Endpoint } from "../Endpoint.js"
import { EtcdClient } from "../EtcdClient.js"
import type { Listing, WatchEvent } from "../EtcdClient.js"
import { EtcdError, InvalidOptions } from "../EtcdError.js"
import type { EndpointSet, Options, State, Subscriber } from "../Subscriber.js"
import { defaultReconnect, watchBatches } from "./client.js"
import { normalizePrefix } from "./prefix.js"
import { Rows } from "./rows.js"
import { decodeDuration, withinTimerLimit } from "./timerLimit.js"

/** @internal */
export const TypeId: unique symbol = Symbol.for("effect-sd-etcd/Subscriber")

/** @internal */
export type TypeId = typeof TypeId

/** @internal */
export const isSubscriber = (u: unknown): u is Subscriber<unknown, unknown, unknown> =>
  typeof u === "object" && u !== null && TypeId in u

/**
 * What a balancer reads on every pick: the error, how many endpoints, and the
 * `i`th (`0 <= i < size`), without building an array.
 *
 * @internal
 */
export interface PickableSet<Req, Res, E> {
  readonly error: Option.Option<EtcdError>
  readonly size: number
  readonly at: (i: number) => Endpoint<Req, Res, E>
}

/** Where a subscriber made here keeps a synchronous read of its current endpoint set. */
const CurrentEndpointSet: unique symbol = Symbol.for("effect-sd-etcd/Subscriber/currentEndpointSet")

/**
 * The current endpoint set of a subscriber made by {@link make}, read without
 * an effect (a balancer's pick is then one effect, not three); `undefined` for
 * any other implementation of `Subscriber`.
 *
 * @internal
 */
export const currentEndpointSet = <Req, Res, E>(
  subscriber: Subscriber<Req, Res, E>
): (() => PickableSet<Req, Res, E>) | undefined =>
  (subscriber as { readonly [CurrentEndpointSet]?: () => PickableSet<Req, Res, E> })[CurrentEndpointSet]

/** How long to wait before starting a retry schedule over when it has ended at once. */
const scheduleEndedPause = Duration.seconds(1)

/**
 * A duration option: `Option.none()` when absent or infinite, else the
 * duration, which must not be negative (and must be positive when `positive`),
 * nor longer than a timer can wait.
 */
const durationOption = (
  option: string,
  input: Duration.DurationInput | undefined,
  positive: boolean
): Effect.Effect<Option.Option<Duration.Duration>, InvalidOptions> => {
  if (input === undefined) return Effect.succeed(Option.none())
  return decodeDuration(option, input, { positive, infinite: "allow" }).pipe(
    Effect.flatMap((decoded) => withinTimerLimit(option, input, decoded)),
    Effect.map((d) => (Duration.isFinite(d) ? Option.some(d) : Option.none()))
  )
}

const validate = (options: {
  readonly prefix: string
  readonly invalidateOnError?: Duration.DurationInput | undefined
  readonly factoryTimeout?: Duration.DurationInput | undefined
}): Effect.Effect<
  {
    readonly invalidateAfter: Option.Option<Duration.Duration>
    readonly factoryTimeout: Option.Option<Duration.Duration>
  },
  InvalidOptions
> =>
  Effect.suspend(() => {
    if (typeof options.prefix !== "string" || options.prefix.length === 0) {
      return Effect.fail(new InvalidOptions({ option: "prefix", reason: "must be a non-empty key prefix" }))
    }
    return Effect.all({
      invalidateAfter: durationOption("invalidateOnError", options.invalidateOnError, false),
      factoryTimeout: durationOption("factoryTimeout", options.factoryTimeout, true)
    })
  })

/**
 * The published instances: a read-only map over the engine's rows as they were
 * at one change (a `Rows` is never changed; the next change makes another), in
 * key order: publishing never hashes every instance into a new Map. Iterating
 * copies the keys or values out once per map.
 */
class SortedInstances implements ReadonlyMap<string, string> {
  private keyArray: ReadonlyArray<string> | undefined = undefined
  private valueArray: ReadonlyArray<string> | undefined = undefined
  constructor(private readonly rows: Rows<unknown>) {}
  get size(): number {
    return this.rows.size
  }
  get(key: string): string | undefined {
    const position = this.rows.find(key)
    return position < 0 ? undefined : this.rows.valueAt(position)
  }
  has(key: string): boolean {
    return this.rows.find(key) >= 0
  }
  forEach(callback: (value: string, key: string, map: ReadonlyMap<string, string>) => void, thisArg?: unknown): void {
    this.rows.forEach((key, value) => callback.call(thisArg, value, key, this))
  }
  entries(): MapIterator<[string, string]> {
    const keys = this.sortedKeys()
    const values = this.sortedValues()
    return keys.map((key, i): [string, string] => [key, values[i]!])[Symbol.iterator]()
  }
  keys(): MapIterator<string> {
    return this.sortedKeys()[Symbol.iterator]()
  }
  values(): MapIterator<string> {
    return this.sortedValues()[Symbol.iterator]()
  }
  [Symbol.iterator](): MapIterator<[string, string]> {
    return this.entries()
  }
  private sortedKeys(): ReadonlyArray<string> {
    return (this.keyArray ??= this.rows.keys())
  }
  private sortedValues(): ReadonlyArray<string> {
    return (this.valueArray ??= this.rows.values())
  }
}

/** The key of Node's `util.inspect` hook. */
const nodeInspect = Symbol.for("nodejs.util.inspect.custom")

/**
 * A published endpoint set: the engine's rows as they were at one change.
 * `endpoints` and `keys` are built the first time they are read, O(N) once per
 * set (with one leaf, up to 128 instances, the endpoints are that leaf's own
 * array). They are the object's own enumerable getters, and Node's inspect is
 * shown their values, so that a spread copy, `toEqual` or a log sees the set
 * as the plain `{ size, endpoints, keys, error }` it stands for. A balancer
 * does not read this object (its own accessors make it slow to read): see
 * {@link Pickable}.
 */
const endpointSetOf = <Req, Res, E>(
  rows: Rows<Endpoint<Req, Res, E>>,
  error: Option.Option<EtcdError>
): EndpointSet<Req, Res, E> => {
  let endpointArray: ReadonlyArray<Endpoint<Req, Res, E>> | undefined = undefined
  let keyArray: ReadonlyArray<string> | undefined = undefined
  const set = {
    size: rows.presentSize,
    get endpoints(): ReadonlyArray<Endpoint<Req, Res, E>> {
      return (endpointArray ??= rows.presentItems())
    },
    get keys(): ReadonlyArray<string> {
      return (keyArray ??= rows.presentKeys())
    },
    error
  }
  // Node's inspect (console.log, Logger.pretty) shows getters as `[Getter]`: it sees the values
  return Object.defineProperty(set, nodeInspect, {
    value: () => ({ size: set.size, endpoints: set.endpoints, keys: set.keys, error })
  })
}

/**
 * What a balancer picks from: the same rows and error as the published set, in
 * an object of one shape (a pick reads three fields and one array).
 */
class Pickable<Req, Res, E> implements PickableSet<Req, Res, E> {
  readonly size: number
  /** With one leaf (up to 128 instances, most services): that leaf's own array of endpoints. */
  private readonly endpoints: ReadonlyArray<Endpoint<Req, Res, E>> | undefined
  constructor(
    private readonly rows: Rows<Endpoint<Req, Res, E>>,
    readonly error: Option.Option<EtcdError>
  ) {
    this.size = rows.presentSize
    this.endpoints = rows.leafCount <= 1 ? rows.presentItems() : undefined
  }
  at(i: number): Endpoint<Req, Res, E> {
    return this.endpoints !== undefined ? this.endpoints[i]! : this.rows.presentAt(i)
  }
}

type ScopeState =
  | { readonly _tag: "Open"; readonly finalizers: Map<object, Scope.Scope.Finalizer> }
  | { readonly _tag: "Closed"; readonly exit: Exit.Exit<unknown, unknown> }

const closedVoid: ScopeState = { _tag: "Closed", exit: Exit.void }

/**
 * A scope the subscriber let go of: its factory never used it (no finalizer, no
 * fork), so the subscriber keeps no reference to it. If someone kept it anyway
 * and uses it later, `adopt` hands it back to the subscriber (it is tracked again
 * and closed when its instance leaves), or says the instance has left (it is
 * closed then).
 */
interface Detached {
  readonly _tag: "Detached"
  readonly key: string
  readonly endpoint: unknown
  readonly adopt: (scope: EndpointScope, key: string, endpoint: unknown) => boolean
}

/**
 * The scope of one endpoint. It behaves like a scope of `Scope.make`
 * (sequential, finalizers run in reverse order, and the `state` that
 * `Effect.forkIn` reads), but its finalizer map is only made when something
 * uses it, and it belongs to no parent scope: the subscriber closes it when its
 * instance leaves or changes, and on shutdown. A scope that its factory never
 * used is not even kept (see {@link Detached}): an instance whose factory adds no
 * finalizer costs no scope at all once made, where a forked scope cost a map,
 * closures and an entry in its parent (about 1 KB, issue 7).
 */
class EndpointScope implements Scope.CloseableScope {
  declare readonly [Scope.ScopeTypeId]: Scope.ScopeTypeId
  declare readonly [Scope.CloseableScopeTypeId]: Scope.CloseableScopeTypeId
  private current: ScopeState | Detached | undefined = undefined

  get strategy(): ExecutionStrategy.ExecutionStrategy {
    return ExecutionStrategy.sequential
  }

  /** The shape of a `Scope.make` scope's state: `Effect.forkIn` reads and writes it directly. */
  get state(): ScopeState {
    let current = this.current
    if (current?._tag === "Detached") {
      current = this.current = current.adopt(this, current.key, current.endpoint) ? undefined : closedVoid
    }
    if (current === undefined) current = this.current = { _tag: "Open", finalizers: new Map() }
    return current
  }

  /** Whether nothing ever used it: no finalizer, no fork, no look at its state. */
  get unused(): boolean {
    return this.current === undefined
  }

  /** Lets go of an unused scope; `adopt` takes it back if it is used after all. */
  detach(key: string, endpoint: unknown, adopt: Detached["adopt"]): void {
    this.current = { _tag: "Detached", key, endpoint, adopt }
  }

  pipe() {
    // eslint-disable-next-line prefer-rest-params
    return pipeArguments(this, arguments)
  }

  addFinalizer(finalizer: Scope.Scope.Finalizer): Effect.Effect<void> {
    return Effect.suspend(() => {
      const state = this.state
      if (state._tag === "Closed") return finalizer(state.exit)
      state.finalizers.set({}, finalizer)
      return Effect.void
    })
  }

  fork(strategy: ExecutionStrategy.ExecutionStrategy): Effect.Effect<Scope.CloseableScope> {
    return Effect.flatMap(Scope.make(strategy), (child) =>
      Effect.suspend(() => {
        const state = this.state
        if (state._tag === "Closed") return Effect.as(Scope.close(child, state.exit), child)
        const key = {}
        state.finalizers.set(key, (exit) => Scope.close(child, exit))
        return Effect.as(
          Scope.addFinalizer(
            child,
            Effect.sync(() => {
              if (this.current?._tag === "Open") this.current.finalizers.delete(key)
            })
          ),
          child
        )
      })
    )
  }

  close(exit: Exit.Exit<unknown, unknown>): Effect.Effect<void> {
    return Effect.suspend(() => {
      const state = this.current
      if (state?._tag === "Closed") return Effect.void
      this.current = exit === Exit.void ? closedVoid : { _tag: "Closed", exit }
      if (state === undefined || state._tag === "Detached" || state.finalizers.size === 0) return Effect.void
      const finalizers = Array.from(state.finalizers.values()).reverse()
      return Effect.flatMap(
        Effect.forEach(finalizers, (finalizer) => Effect.exit(finalizer(exit))),
        (exits) => Option.getOrElse(Option.map(Exit.all(exits), Exit.asVoid), () => Exit.void)
      )
    })
  }

  /** Closes it at once when it has no finalizer; says whether it did. */
  closeTrivially(): boolean {
    const state = this.current
    if (state?._tag === "Open" && state.finalizers.size > 0) return false
    if (state?._tag !== "Closed") this.current = closedVoid
    return true
  }
}
Object.defineProperties(EndpointScope.prototype, {
  [Scope.ScopeTypeId]: { value: Scope.ScopeTypeId },
  [Scope.CloseableScopeTypeId]: { value: Scope.CloseableScopeTypeId }
})

/**
 * A value the engine publishes, built when it is read: `get` and `changes` build
 * it (once per change) from the engine's state. `changes` emits the current
 * value, then the latest value after each change; a consumer that falls behind
 * skips to the newest instead of queueing every intermediate snapshot.
 */
class Published<A> implements Subscribable.Subscribable<A> {
  declare readonly [Readable.TypeId]: Readable.TypeId
  declare readonly [Subscribable.TypeId]: Subscribable.TypeId
  readonly get: Effect.Effect<A>
  readonly changes: Stream.Stream<A>
  private version = 0
  private builtAt = -1
  private value: A | undefined = undefined
  private waiters: Array<() => void> = []

  constructor(private readonly build: () => A) {
    this.get = Effect.sync(() => this.current())
    this.changes = Stream.suspend(() => {
      let seen = -1
      const take = Effect.sync(() => {
        seen = this.version
        return Chunk.of(this.current())
      })
      const next = Effect.suspend(() =>
        seen !== this.version
          ? take
          : Effect.async<Chunk.Chunk<A>>((resume) => {
              const waiter = () => resume(take)
              this.waiters.push(waiter)
              return Effect.sync(() => {
                const i = this.waiters.indexOf(waiter)
                if (i >= 0) this.waiters.splice(i, 1)
              })
            })
      )
      // a channel that repeats one read and one write: a change reaches a consumer that pulls
      // 10 to 20 µs sooner with cold caches than through Stream.repeatEffectChunkOption, whose
      // every element also goes through Option, catchAll and unwrap (issue 7; a probe, bench/NOTES.md)
      return Stream.fromChannel(Channel.repeated(Channel.flatMap(Channel.fromEffect(next), Channel.write)))
    })
  }

  /**
   * Hands each value after version `seen` to `step`, in a microtask after the
   * change (never inside the engine's update), without waking the waiting
   * fiber while `step` deals with the value at once (returns `undefined`); the
   * fiber resumes with the first effect `step` returns. Values that come while
   * a microtask is pending are skipped for the newest, as a waiting fiber
   * would skip them.
   */
  each<B, E, R>(
    seen: number,
    step: (a: A, version: number) => Effect.Effect<B, E, R> | undefined
  ): Effect.Effect<B, E, R> {
    return Effect.async<B, E, R>((resume) => {
      let last = seen
      let pending = false
      let done = false
      const run = () => {
        pending = false
        if (done) return
        while (last !== this.version) {
          last = this.version
          let next: Effect.Effect<B, E, R> | undefined
          try {
            next = step(this.current(), last)
          } catch (defect) {
            next = Exit.die(defect)
          }
          if (next !== undefined) {
            done = true
            return resume(next)
          }
        }
        this.waiters.push(waiter)
      }
      const waiter = () => {
        if (pending || done) return
        pending = true
        queueMicrotask(run)
      }
      if (last !== this.version) waiter()
      else this.waiters.push(waiter)
      return Effect.sync(() => {
        done = true
        const i = this.waiters.indexOf(waiter)
        if (i >= 0) this.waiters.splice(i, 1)
      })
    })
  }

  current(): A {
    if (this.builtAt !== this.version) {
      this.value = this.build()
      this.builtAt = this.version
    }
    return this.value as A
  }

  /** The engine's state changed: the next read builds a new value; waiting consumers wake up. */
  changed(): void {
    this.version++
    if (this.waiters.length > 0) {
      const waiters = this.waiters
      this.waiters = []
      for (const waiter of waiters) waiter()
    }
  }

  pipe() {
    // eslint-disable-next-line prefer-rest-params
    return pipeArguments(this, arguments)
  }
}
Object.defineProperties(Published.prototype, {
  [Readable.TypeId]: { value: Readable.TypeId },
  [Subscribable.TypeId]: { value: Subscribable.TypeId }
})

/** @internal */
export const follow = <A, E, R>(
  self: Subscribable.Subscribable<A>,
  f: (a: A) => Effect.Effect<void, E, R>
): Effect.Effect<never, E, R> => {
  if (self instanceof Published) {
    // the published value's own wait: no stream, no channel executor between a change and `f`
    // a follower whose effect runs alone (`Effect.sync`, `Effect.void`: see runsAlone) is run in
    // the microtask after the change, without waking its fiber (tens of microseconds with cold
    // caches, per change); any other effect resumes the fiber, which runs it and waits again
    const published: Published<A> = self
    const step = (a: A, version: number): Effect.Effect<never, E, R> | undefined => {
      let effect: Effect.Effect<void, E, R>
      try {
        effect = f(a)
      } catch (defect) {
        // outside any fiber here: a throw of `f` itself is the follower's defect, as in the fiber
        return Exit.die(defect)
      }
      const exit = runsAlone(effect)
      if (exit === undefined) return Effect.flatMap(effect, () => loop(version))
      return Exit.isSuccess(exit) ? undefined : (exit as Exit.Exit<never, E>)
    }
    const loop = (seen: number): Effect.Effect<never, E, R> => published.each(seen, step)
    return loop(-1)
  }
  // any other Subscribable (a SubscriptionRef, ...): its changes, pulled in a loop; a stream that
  // ends leaves the follower waiting, as a follower ends only when interrupted or when `f` fails
  return Effect.scoped(
    Effect.flatMap(Stream.toPull(self.changes), (pull) => {
      const loop: Effect.Effect<never, E, R> = Effect.flatMap(
        Effect.catchAll(pull, () => Effect.never),
        (chunk) => Effect.flatMap(Effect.forEach(chunk, f, { discard: true }), () => loop)
      )
      return loop
    })
  )
}

/** What one run of factories made: per job, its endpoint and scope (both undefined when the factory failed). */
interface Made<Req, Res, E> {
  readonly endpoints: Array<Endpoint<Req, Res, E> | undefined>
  readonly scopes: Array<EndpointScope | undefined>
}

/**
 * The result of an effect that cannot see the fiber it runs in, computed here:
 * an effect that is already its result (`Effect.succeed`, `Effect.fail`, any
 * `Exit`), or a plain synchronous thunk (`Effect.sync`; a throw is a defect, as
 * in the run loop). `undefined` for any other effect, which must run in a fiber.
 *
 * `Effect.sync` has no public test: it is recognized by its instruction in
 * Effect 3's core (`_op` "Sync", the thunk in `effect_instruction_i0`), and
 * anything else takes the general path, so a change there costs speed, not
 * correctness.
 */
const runsAlone = <A, E>(effect: Effect.Effect<A, E, unknown>): Exit.Exit<A, E> | undefined => {
  // an Exit that is an Effect<A, E> succeeds with an A or fails with an E
  if (Exit.isExit(effect)) return effect as Exit.Exit<A, E>
  const primitive = effect as unknown as { readonly _op?: unknown; readonly effect_instruction_i0?: unknown }
  if (primitive._op !== "Sync") return undefined
  const thunk = primitive.effect_instruction_i0
  if (typeof thunk !== "function") return undefined
  try {
    return Exit.succeed((thunk as () => A)())
  } catch (defect) {
    return Exit.die(defect)
  }
}

/** The rows a listing is compared with, as flat arrays (made once per listing). */
interface Known<Req, Res, E> {
  readonly rows: Rows<Endpoint<Req, Res, E>>
  readonly keys: ReadonlyArray<string>
  readonly values: ReadonlyArray<string>
  readonly endpoints: ReadonlyArray<Endpoint<Req, Res, E> | undefined>
}

const knownOf = <Req, Res, E>(rows: Rows<Endpoint<Req, Res, E>>): Known<Req, Res, E> => ({
  rows,
  keys: rows.keys(),
  values: rows.values(),
  endpoints: rows.items()
})

/** Whether factories' results are already made (they all ran alone), not an effect still to run. */
const isMade = <Req, Res, E, R>(
  made: Made<Req, Res, E> | Effect.Effect<Made<Req, Res, E>, never, R>
): made is Made<Req, Res, E> => !Effect.isEffect(made)

/** Whether `keys` is in ascending (JavaScript string) order. */
const isSorted = (keys: ReadonlyArray<string>): boolean => {
  for (let i = 1; i < keys.length; i++) if (!(keys[i - 1]! < keys[i]!)) return false
  return true
}

/**
 * A byte of a key that is not UTF-8, as the etcd client decodes it: a lone
 * surrogate U+DC80 to U+DCFF, which no UTF-8 decodes to. Such a key comes
 * `malformed`, and cannot be (nor delete) an instance: it is a string no
 * well-formed key has. Its warning shows the bytes as `\xff`.
 */
const escapedByte = /(?<![\uD800-\uDBFF])[\uDC80-\uDCFF]/
const escapedBytes = new RegExp(escapedByte.source, "g")
const showByte = (char: string): string => `\\x${(char.charCodeAt(0) - 0xdc00).toString(16)}`

/** @internal */
export const make = <Req, Res, E, FE, R>(
  options: Options<Req, Res, E, FE, R>
): Effect.Effect<Subscriber<Req, Res, E>, InvalidOptions, EtcdClient | Scope.Scope | Exclude<R, Scope.Scope>> =>
  Effect.gen(function* () {
    const { factoryTimeout, invalidateAfter } = yield* validate(options)
    const prefix = normalizePrefix(options.prefix)
    const client = yield* EtcdClient
    const scope = yield* Effect.scope
    const factory = options.factory

    // ---- state owned by the engine fiber ----
    // every known instance in key order: its key, value and endpoint (undefined when its factory
    // failed). Published snapshots share the rows: a change makes new ones (sharing the leaves it
    // did not touch), never changes them in place.
    let rows: Rows<Endpoint<Req, Res, E>> = Rows.empty()
    // the endpoint scopes kept (those their factory used), by key: most factories use none
    const scopes = new Map<string, EndpointScope>()
    // the invalidation error (invalidateOnError), part of the endpoint set
    let invalidated: Option.Option<EtcdError> = Option.none()
    // scopes of factories that ran but whose batch is not applied yet (closed if interrupted)
    const notMaking: {
      readonly keys: ReadonlyArray<string>
      readonly scopes: ReadonlyArray<EndpointScope | undefined>
    } = { keys: [], scopes: [] }
    let making = notMaking
    // scopes of instances that left or changed, closed after the change is published
    let toClose: Array<readonly [string, EndpointScope]> = []
    // scopes with finalizers, waiting for the closer (see startCloser), and whether it runs
    const closeQueue: Array<readonly [string, EndpointScope]> = []
    let closerRunning = false
    let instancesChanged = false
    let endpointsChanged = false
    let live = false
    let stopped = false
    let failingSince: number | undefined = undefined
    let invalidation: Fiber.RuntimeFiber<void> | undefined = undefined

    const instances = new Published<ReadonlyMap<string, string>>(() => new SortedInstances(rows))
    const endpointSet = new Published<EndpointSet<Req, Res, E>>(() => endpointSetOf(rows, invalidated))
    // the balancers' view of the current set, made when one picks (see Pickable)
    let pickable: Pickable<Req, Res, E> | undefined = undefined
    /** The endpoint set changed: publishes it, and the balancers' view is made again. */
    const endpointSetChanged = () => {
      pickable = undefined
      endpointSet.changed()
    }
    const stateRef = yield* SubscriptionRef.make<State>({ _tag: "Starting" })
    const firstAttempt = yield* Deferred.make<void>()

    const closeEndpoint = (key: string, endpointScope: EndpointScope, exit: Exit.Exit<unknown, unknown> = Exit.void) =>
      endpointScope.closeTrivially()
        ? Effect.void
        : endpointScope.close(exit).pipe(
            Effect.catchAllCause((cause) => Effect.logWarning("closing an endpoint failed", cause)),
            Effect.annotateLogs("key", key)
          )

    // closing the subscriber's scope: after the engine fiber is interrupted and the closer has
    // finished (finalizers run in reverse order), every endpoint scope still open is closed, the
    // ones already waiting to close first, then in key order
    yield* Effect.addFinalizer((exit) =>
      Effect.suspend(() => {
        stopped = true
        const open: Array<readonly [string, EndpointScope]> = closeQueue.splice(0)
        for (const entry of toClose) open.push(entry)
        toClose = []
        for (let i = 0; i < making.keys.length; i++) {
          const endpointScope = making.scopes[i]
          if (endpointScope !== undefined) open.push([making.keys[i]!, endpointScope])
        }
        rows.forEach((key) => {
          const endpointScope = scopes.get(key)
          if (endpointScope !== undefined) open.push([key, endpointScope])
        })
        scopes.clear()
        // its endpoints go with it: whoever still holds the subscriber (a balancer) fails with a
        // typed error instead of being handed endpoints whose scopes are closed
        rows = Rows.empty()
        invalidated = Option.some(
          new EtcdError({ operation: "watch", reason: "Canceled", detail: `the subscriber of ${prefix} is closed` })
        )
        instances.changed()
        endpointSetChanged()
        // closed before the first listing was applied: the engine is gone, and `make`, waiting for
        // it, is interrupted (a no-op once the first attempt is done)
        return Effect.zipRight(
          Deferred.interrupt(firstAttempt),
          Effect.forEach(open, ([key, endpointScope]) => closeEndpoint(key, endpointScope, exit), { discard: true })
        )
      })
    )

    const noneMade: Made<Req, Res, E> = { endpoints: [], scopes: [] }

    /**
     * A factory's effect, bounded by `factoryTimeout` (a defect when it runs out: the instance is
     * skipped). The factory runs disconnected: at the deadline it is interrupted in the background
     * and the engine goes on at once. Without that, the timeout waited for the interruption to end,
     * and a factory in an uninterruptible region (an `Effect.acquireRelease` whose acquire hangs)
     * held up every later change as if there were no timeout. The factory's endpoint scope is closed
     * with the failed instance's (see `logFailures`); a finalizer it adds after that, such as the
     * release of an acquire that ends late, runs as soon as it is added (`EndpointScope.addFinalizer`).
     */
    const timed: <A, R1>(effect: Effect.Effect<A, FE, R1>) => Effect.Effect<A, FE, R1> = Option.match(factoryTimeout, {
      onNone: () => (effect) => effect,
      onSome: (duration) => {
        const message = `the endpoint factory did not finish within ${Duration.format(duration)}`
        return (effect) =>
          Effect.timeoutFailCause(Effect.disconnect(effect), {
            duration,
            onTimeout: () => Cause.die(new Error(message))
          })
      }
    })

    /**
     * A scope let go of (unused by its factory) is used after all: it is tracked
     * again if its instance is still the one it was made for, else it counts as closed.
     */
    const adopt = (endpointScope: EndpointScope, key: string, endpoint: unknown): boolean => {
      if (stopped) return false
      const position = rows.find(key)
      if (position < 0 || rows.itemAt(position) !== endpoint || scopes.has(key)) return false
      scopes.set(key, endpointScope)
      return true
    }

    /** Keeps the scope of a new endpoint, unless its factory did not use it (then it is let go of). */
    const keep = (
      key: string,
      endpoint: Endpoint<Req, Res, E> | undefined,
      endpointScope: EndpointScope | undefined
    ) => {
      if (endpointScope === undefined) return
      if (endpointScope.unused) endpointScope.detach(key, endpoint, adopt)
      else scopes.set(key, endpointScope)
    }

    /** The instance of `key` left or changed: its scope, if kept, is closed after the change is published. */
    const release = (key: string) => {
      const endpointScope = scopes.get(key)
      if (endpointScope === undefined) return
      scopes.delete(key)
      toClose.push([key, endpointScope])
    }

    /**
     * Runs the factory of every job, in order, in the engine fiber: one loop for the
     * whole batch (a listing of 100,000 instances is one run), each factory with
     * its own endpoint scope in its context. A failing factory (a typed failure, a
     * defect, or a throw) is logged, its scope closed, and its instance skipped.
     *
     * A factory whose effect cannot see its context (see {@link runsAlone}) is run
     * right here, without a scope and without a turn of the run loop: changing the
     * fiber's context copies its FiberRefs, which was about half of what an
     * instance cost in the initial sync (issue 7).
     */
    const runFactories = (
      jobKeys: ReadonlyArray<string>,
      jobValues: ReadonlyArray<string>
    ): Made<Req, Res, E> | Effect.Effect<Made<Req, Res, E>, never, Exclude<R, Scope.Scope>> => {
      const n = jobKeys.length
      if (n === 0) return noneMade
      // filled by push, not preallocated: a holey array is slower to read and to copy
      const made: Made<Req, Res, E> = { endpoints: [], scopes: [] }
      making = { keys: jobKeys, scopes: made.scopes }
      let failures: Array<readonly [number, Cause.Cause<FE>]> | undefined = undefined
      let i = 0
      const record = (exit: Exit.Exit<Endpoint<Req, Res, E>, FE>) => {
        if (exit._tag === "Success") {
          made.endpoints.push(exit.value)
        } else {
          made.endpoints.push(undefined)
          ;(failures ??= []).push([i, exit.cause])
        }
        i++
      }
      // the factories from job i on that run alone, here and now; returns the effect of the first
      // that needs the run loop
      const runAloneFrom = (): Effect.Effect<Endpoint<Req, Res, E>, FE, R | Scope.Scope> | undefined => {
        while (i < n) {
          // a factory that throws instead of returning an Effect is a defect like any other
          let effect: Effect.Effect<Endpoint<Req, Res, E>, FE, R | Scope.Scope>
          try {
            effect = factory(jobValues[i]!)
          } catch (defect) {
            effect = Effect.die(defect)
          }
          const exit = runsAlone(effect)
          if (exit === undefined) return effect
          made.scopes.push(undefined)
          record(exit)
        }
        return undefined
      }
      const logFailures = (): Effect.Effect<Made<Req, Res, E>> =>
        failures === undefined
          ? Effect.succeed(made)
          : Effect.as(
              Effect.forEach(
                failures,
                ([j, cause]) => {
                  const endpointScope = made.scopes[j]
                  made.scopes[j] = undefined
                  return Effect.zipRight(
                    endpointScope === undefined ? Effect.void : closeEndpoint(jobKeys[j]!, endpointScope),
                    Effect.logWarning("endpoint factory failed; instance skipped", cause).pipe(
                      Effect.annotateLogs({ key: jobKeys[j]!, instance: jobValues[j]! })
                    )
                  )
                },
                { discard: true }
              ),
              made
            )
      const first = runAloneFrom()
      if (first === undefined) return failures === undefined ? made : logFailures()
      // the others in the fiber, each with its own scope in its context
      return Effect.withFiberRuntime((fiber) => {
        const base = fiber.getFiberRef(FiberRef.currentContext)
        const runFrom = (effect: Effect.Effect<Endpoint<Req, Res, E>, FE, R | Scope.Scope>) => {
          const endpointScope = new EndpointScope()
          made.scopes.push(endpointScope)
          return Effect.flatMap(
            Effect.zipRight(
              FiberRef.set(FiberRef.currentContext, Context.add(base, Scope.Scope, endpointScope)),
              Effect.exit(timed(effect))
            ),
            (exit): Effect.Effect<void, never, R | Scope.Scope> => {
              record(exit)
              const next = runAloneFrom()
              return next === undefined ? Effect.void : runFrom(next)
            }
          )
        }
        const rest = runFrom(first) as Effect.Effect<void, never, Exclude<R, Scope.Scope>>
        return Effect.flatMap(Effect.ensuring(rest, FiberRef.set(FiberRef.currentContext, base)), logFailures)
      })
    }

    /**
     * Applies a batch of changes (key → new value, or undefined for a delete; in
     * the order of each key's last change) whose factories have run, with no
     * yield: a reader never sees half a batch.
     *
     * The rows are never changed in place: the batch makes new ones that share
     * every leaf it did not touch (see {@link Rows}), so a published snapshot
     * keeps the rows it was made from. Flat arrays rebuilt from slices per batch
     * made a subscriber's CPU under churn grow with the number of instances
     * (issue 7); splicing arrays in place cost about 9 µs per array and change
     * at 10,000 instances in the old generation, and copy on write did no better.
     */
    const applyChanges = (changes: ReadonlyMap<string, string | undefined>, made: Made<Req, Res, E>) => {
      // the changes in key order, each with its job's index (-1 for a delete)
      const changedKeys: Array<string> = []
      const jobs: Array<number> = []
      let j = 0
      for (const [key, value] of changes) {
        changedKeys.push(key)
        jobs.push(value === undefined ? -1 : j++)
      }
      let order: Array<number> | undefined = undefined
      if (!isSorted(changedKeys)) {
        order = changedKeys.map((_, i) => i).sort((a, b) => (changedKeys[a]! < changedKeys[b]! ? -1 : 1))
      }
      // the edits, in key order: a delete, or a key's new value and endpoint
      const editKeys: Array<string> = []
      const editValues: Array<string | undefined> = []
      const editItems: Array<Endpoint<Req, Res, E> | undefined> = []
      for (let c = 0; c < changedKeys.length; c++) {
        const index = order === undefined ? c : order[c]!
        const key = changedKeys[index]!
        const job = jobs[index]!
        // the old endpoint's scope first (if the key has one): the new one is kept under the same key
        release(key)
        editKeys.push(key)
        if (job < 0) {
          editValues.push(undefined)
          editItems.push(undefined)
        } else {
          const endpoint = made.endpoints[job]
          keep(key, endpoint, made.scopes[job])
          editValues.push(changes.get(key)!)
          editItems.push(endpoint)
        }
      }
      // what changed, from what each edit replaced: the rows' own search finds it (a search per
      // change here as well cost as much again, with caches cold between batches)
      let next = 0
      const added = (to: number) => {
        // the puts from `next` to `to` (excluded) replaced nothing: new instances
        for (; next < to; next++) {
          if (editValues[next] === undefined) continue
          instancesChanged = true
          if (editItems[next] !== undefined) endpointsChanged = true
        }
      }
      rows = rows.apply({ keys: editKeys, values: editValues, items: editItems }, (e, value, item) => {
        added(e)
        next = e + 1
        const newValue = editValues[e]
        if (newValue === undefined || newValue !== value) instancesChanged = true
        // a changed value with the same endpoint outcome still changes the endpoint
        if (item !== undefined || editItems[e] !== undefined) endpointsChanged = true
      })
      added(editKeys.length)
      making = notMaking
    }

    /** Replaces the whole state by a listing's (sorted) instances whose factories have run. */
    const applyListed = (
      listedKeys: Array<string>,
      listedValues: Array<string>,
      jobKeys: ReadonlyArray<string>,
      made: Made<Req, Res, E>,
      known: Known<Req, Res, E>
    ) => {
      const n = listedKeys.length
      if (rows.size === 0) {
        // nothing known yet (the first listing): every instance was a job
        if (n > 0) {
          rows = Rows.fromSorted(listedKeys, listedValues, made.endpoints)
          for (let i = 0; i < n; i++) keep(listedKeys[i]!, made.endpoints[i], made.scopes[i])
          instancesChanged = true
          endpointsChanged = true
        }
        making = notMaking
        return
      }
      const { endpoints, keys, values } = known.rows === rows ? known : knownOf(rows)
      const nextEndpoints: Array<Endpoint<Req, Res, E> | undefined> = []
      let o = 0
      let j = 0
      for (let m = 0; m < n; m++) {
        const key = listedKeys[m]!
        // known instances before this key are gone
        while (o < keys.length && keys[o]! < key) {
          if (endpoints[o] !== undefined) endpointsChanged = true
          release(keys[o]!)
          instancesChanged = true
          o++
        }
        const known = o < keys.length && keys[o] === key
        if (jobKeys[j] === key) {
          // new, changed, or without an endpoint: made again
          const endpoint = made.endpoints[j]
          if (known) {
            release(key)
            if (values[o] !== listedValues[m]) instancesChanged = true
            if (endpoints[o] !== undefined || endpoint !== undefined) endpointsChanged = true
            o++
          } else {
            instancesChanged = true
            if (endpoint !== undefined) endpointsChanged = true
          }
          keep(key, endpoint, made.scopes[j])
          nextEndpoints.push(endpoint)
          j++
        } else {
          // unchanged: kept as it is
          nextEndpoints.push(endpoints[o])
          o++
        }
      }
      for (; o < keys.length; o++) {
        if (endpoints[o] !== undefined) endpointsChanged = true
        release(keys[o]!)
        instancesChanged = true
      }
      rows = Rows.fromSorted(listedKeys, listedValues, nextEndpoints)
      making = notMaking
    }

    /** Closes the scopes in `closeQueue`, in order, until it is empty. */
    const drainCloseQueue: Effect.Effect<void> = Effect.suspend(() => {
      const next = closeQueue.shift()
      if (next === undefined) {
        closerRunning = false
        return Effect.void
      }
      return Effect.zipRight(closeEndpoint(next[0], next[1]), drainCloseQueue)
    })

    /**
     * Starts the closer: a fiber of its own, in the subscriber's scope, that
     * closes the queued endpoint scopes. It starts at once, so finalizers that
     * do not wait are done before the engine goes on, as if the engine ran
     * them; one that waits (a graceful drain) no longer holds up the changes
     * after it. It cannot be interrupted: closing the subscriber's scope waits
     * for it, and nothing queued is left open.
     */
    const startCloser = Effect.withFiberRuntime<void>((engine, status) => {
      closerRunning = true
      const runtime = Runtime.make({
        context: engine.currentContext,
        runtimeFlags: status.runtimeFlags,
        fiberRefs: engine.getFiberRefs()
      })
      Runtime.runFork(runtime, Effect.uninterruptible(drainCloseQueue), { immediate: true, scope })
      return Effect.void
    })

    /**
     * Publishes what changed since the last call; returns the closing of the
     * endpoints that left, if any (`undefined` when there is nothing to close):
     * their scopes are closed after the change is published, by the closer.
     */
    const publishNow = (): Effect.Effect<void> | undefined => {
      if (instancesChanged) {
        instancesChanged = false
        instances.changed()
      }
      if (endpointsChanged) {
        endpointsChanged = false
        endpointSetChanged()
      }
      if (toClose.length === 0) return undefined
      for (const entry of toClose) if (!entry[1].closeTrivially()) closeQueue.push(entry)
      toClose = []
      return closeQueue.length === 0 || closerRunning ? undefined : startCloser
    }
    /** Publishes what changed since the last time, then closes the endpoints that left. */
    const publish = Effect.suspend(() => publishNow() ?? Effect.void)

    const invalidate = Effect.flatMap(SubscriptionRef.get(stateRef), (state) =>
      state._tag === "Failing"
        ? Effect.zipRight(
            Effect.sync(() => {
              invalidated = Option.some(state.error)
              endpointSetChanged()
            }),
            Effect.logWarning(`endpoints invalidated: ${state.error.message}`)
          )
        : Effect.void
    )

    const markFailing = (error: EtcdError) =>
      Effect.gen(function* () {
        live = false
        if (failingSince === undefined) {
          failingSince = yield* Clock.currentTimeMillis
          if (Option.isSome(invalidateAfter)) {
            invalidation = yield* Effect.forkIn(Effect.zipRight(Effect.sleep(invalidateAfter.value), invalidate), scope)
          }
        }
        yield* SubscriptionRef.set(stateRef, { _tag: "Failing", error, since: failingSince })
      })

    const markLive = Effect.suspend(() =>
      live
        ? Effect.void
        : Effect.gen(function* () {
            const wasFailing = failingSince !== undefined
            live = true
            failingSince = undefined
            if (invalidation !== undefined) {
              yield* Fiber.interrupt(invalidation)
              invalidation = undefined
            }
            if (Option.isSome(invalidated)) {
              invalidated = Option.none()
              endpointSetChanged()
            }
            yield* SubscriptionRef.set(stateRef, { _tag: "Live" })
            if (wasFailing) yield* Effect.logInfo("etcd reachable again")
          })
    )

    const warnMalformed = (malformedKeys: ReadonlyArray<string>) =>
      Effect.forEach(
        malformedKeys,
        (key) =>
          escapedByte.test(key)
            ? Effect.logWarning("key is not valid UTF-8; instance skipped").pipe(
                Effect.annotateLogs("key", key.replace(escapedBytes, showByte))
              )
            : Effect.logWarning("value is not valid UTF-8; instance skipped").pipe(Effect.annotateLogs("key", key)),
        { discard: true }
      )

    const applyListing = (listing: Listing) =>
      Effect.suspend(() => {
        let listedKeys: Array<string> = []
        let listedValues: Array<string> = []
        const malformed: Array<string> = []
        for (const kv of listing.entries) {
          if (!kv.key.startsWith(prefix)) continue
          if (kv.malformed) {
            malformed.push(kv.key)
            continue
          }
          listedKeys.push(kv.key)
          listedValues.push(kv.value)
        }
        // etcd sorts by bytes, which is not always the order of JavaScript strings (nor of another client)
        if (!isSorted(listedKeys)) {
          const order = listedKeys.map((_, i) => i).sort((a, b) => (listedKeys[a]! < listedKeys[b]! ? -1 : 1))
          const sortedKeys = order.map((i) => listedKeys[i]!)
          listedValues = order.map((i) => listedValues[i]!)
          listedKeys = sortedKeys
        }
        // the jobs: instances that are new, changed, or have no endpoint
        let jobKeys: Array<string> = listedKeys
        let jobValues: Array<string> = listedValues
        // the known instances as flat arrays, once for the jobs and the applying
        const known = knownOf(rows)
        if (rows.size > 0) {
          const { endpoints, keys, values } = known
          jobKeys = []
          jobValues = []
          let o = 0
          for (let m = 0; m < listedKeys.length; m++) {
            const key = listedKeys[m]!
            while (o < keys.length && keys[o]! < key) o++
            if (keys[o] === key && values[o] === listedValues[m] && endpoints[o] !== undefined) continue
            jobKeys.push(key)
            jobValues.push(listedValues[m]!)
          }
        }
        const apply = (made: Made<Req, Res, E>) => {
          applyListed(listedKeys, listedValues, jobKeys, made, known)
          return Effect.zipRight(markLive, publish)
        }
        const made = runFactories(jobKeys, jobValues)
        const applied = isMade(made) ? apply(made) : Effect.flatMap(made, apply)
        return malformed.length === 0 ? applied : Effect.zipRight(warnMalformed(malformed), applied)
      })

    /**
     * Applies one batch of watched changes (key → new value, or undefined for a
     * delete) now, as far as it can without an effect; returns what is left to
     * run, if anything: factories that need the run loop, logs, closing the
     * endpoints that left. The common case (factories that run alone, a live
     * subscription, no endpoint scope to close) is done when it returns
     * `undefined`, which lets the watch apply a batch in the callback that
     * delivered it, without waking the engine's fiber (see `WatchBatches.follow`).
     */
    const applyBatch = (
      changes: Map<string, string | undefined>,
      malformed: ReadonlyArray<string> | undefined
    ): Effect.Effect<void, never, Exclude<R, Scope.Scope>> | undefined => {
      // a warning goes first, as it always has
      if (malformed !== undefined) {
        return Effect.zipRight(
          warnMalformed(malformed),
          Effect.suspend(() => applyBatch(changes, undefined) ?? Effect.void)
        )
      }
      const jobKeys: Array<string> = []
      const jobValues: Array<string> = []
      for (const [key, value] of changes) {
        if (value === undefined) continue
        const position = rows.find(key)
        if (position >= 0 && rows.valueAt(position) === value && rows.itemAt(position) !== undefined) {
          // the same value again: nothing to do (deleting the current entry of a Map's iteration is safe)
          changes.delete(key)
          continue
        }
        jobKeys.push(key)
        jobValues.push(value)
      }
      const apply = (made: Made<Req, Res, E>) => {
        applyChanges(changes, made)
        return live ? publishNow() : Effect.zipRight(markLive, publish)
      }
      const made = runFactories(jobKeys, jobValues)
      return isMade(made) ? apply(made) : Effect.flatMap(made, (made) => apply(made) ?? Effect.void)
    }

    /** Runs steps from `from` on, in order, as far as they go without an effect; returns the rest as one effect. */
    const runSteps = (
      steps: ReadonlyArray<() => Effect.Effect<void, never, Exclude<R, Scope.Scope>> | undefined>,
      from: number
    ): Effect.Effect<void, never, Exclude<R, Scope.Scope>> | undefined => {
      for (let i = from; i < steps.length; i++) {
        const effect = steps[i]!()
        if (effect === undefined) continue
        if (i + 1 === steps.length) return effect
        return Effect.zipRight(
          effect,
          Effect.suspend(() => runSteps(steps, i + 1) ?? Effect.void)
        )
      }
      return undefined
    }

    /**
     * Applies watch events, as far as it can without an effect (see
     * {@link applyBatch}); returns what is left to run, in order. Puts and
     * deletes between two connection events make one batch: a key changed
     * several times costs one factory run at most. Changes at or before `listed`
     * (the listed revision) are in the listing already.
     */
    const applyEvents = (
      events: ReadonlyArray<WatchEvent>,
      listed: number
    ): Effect.Effect<void, never, Exclude<R, Scope.Scope>> | undefined => {
      const steps: Array<() => Effect.Effect<void, never, Exclude<R, Scope.Scope>> | undefined> = []
      let changes: Map<string, string | undefined> | undefined = undefined
      let malformed: Array<string> | undefined = undefined
      const cut = () => {
        if (changes !== undefined) {
          const batch = changes
          const batchMalformed = malformed
          steps.push(() => applyBatch(batch, batchMalformed))
        }
        changes = undefined
        malformed = undefined
      }
      for (const event of events) {
        switch (event._tag) {
          case "Put":
          case "Delete": {
            if (event.revision <= listed) break
            changes ??= new Map()
            // in the order of each key's last change
            changes.delete(event.key)
            if (event._tag === "Put" && !event.malformed) {
              changes.set(event.key, event.value)
            } else {
              // a value that is not UTF-8: the instance leaves. A key that is not (see escapedByte)
              // is no instance's, so its put or delete changes none
              if (event._tag === "Put") (malformed ??= []).push(event.key)
              changes.set(event.key, undefined)
            }
            break
          }
          case "Disconnected": {
            cut()
            const error = event.error
            steps.push(() =>
              Effect.zipRight(
                Effect.logWarning(`watch disconnected; reconnecting: ${error.message}`),
                markFailing(error)
              )
            )
            break
          }
          case "Reconnected": {
            cut()
            const revision = event.revision
            steps.push(() =>
              Effect.zipRight(
                Effect.logInfo("watch reconnected").pipe(Effect.annotateLogs("revision", revision)),
                markLive
              )
            )
            break
          }
        }
      }
      cut()
      return steps.length === 1 ? steps[0]!() : runSteps(steps, 0)
    }

    const engine = Effect.gen(function* () {
      // a batch whose factories were interrupted by a defect is not coming back
      if (making.keys.length > 0) {
        const stale = making
        making = notMaking
        yield* Effect.forEach(
          stale.scopes,
          (endpointScope, i) =>
            endpointScope === undefined ? Effect.void : closeEndpoint(stale.keys[i]!, endpointScope),
          { discard: true }
        )
      }
      const driver = yield* Schedule.driver(options.retryList ?? defaultReconnect)
      // waits as the schedule says; a schedule that has ended starts over
      const backoff = (error: EtcdError) =>
        driver.next(error).pipe(
          Effect.catchAll(() => Effect.zipRight(driver.reset, driver.next(error))),
          Effect.catchAll(() => Effect.sleep(scheduleEndedPause)),
          Effect.asVoid
        )
      // lists, retried forever, and applies the listing; returns its revision only: the listed
      // entries (100,000 KeyValue objects at 100,000 instances) are garbage once applied
      const list = Effect.gen(function* () {
        for (;;) {
          const result = yield* Effect.either(client.list(prefix))
          if (result._tag === "Right") {
            yield* applyListing(result.right)
            return { revision: result.right.revision, cluster: result.right.cluster }
          }
          yield* Effect.logWarning(`listing instances failed; retrying: ${result.left.message}`)
          yield* markFailing(result.left)
          yield* Deferred.succeed(firstAttempt, undefined)
          yield* backoff(result.left)
        }
      })
      for (;;) {
        const { cluster, revision: listed } = yield* list
        yield* Deferred.succeed(firstAttempt, undefined)

        // then the changes after the listed revision. The watch starts at the listed revision
        // itself (whose changes the listing holds already, so they are dropped): if a compaction
        // has passed it, the watch fails with Compacted. Starting one later would be accepted
        // after a compaction at exactly that revision, whose deletes etcd no longer has: they
        // would be missed for good. Given the listing's cluster id, the watch makes that early start
        // itself (see openWatch) and checks from its first connection on that it is still the
        // listed cluster, at or past the listed revision: a cluster wiped right after the listing,
        // before the watch had heard from it, was followed as if nothing had happened.
        // the watch ends only with an error
        const error = yield* Effect.scoped(
          Effect.flatMap(
            watchBatches(client, prefix, {
              fromRevision: cluster === undefined ? listed : listed + 1,
              cluster,
              reconnect: options.reconnect
            }),
            (watch) => {
              let progressed = false
              const step = (events: ReadonlyArray<WatchEvent>) => {
                if (!progressed) {
                  for (const event of events) {
                    if (
                      event._tag === "Reconnected" ||
                      ((event._tag === "Put" || event._tag === "Delete") && event.revision > listed)
                    ) {
                      progressed = true
                    }
                  }
                  if (progressed) {
                    return Effect.zipRight(
                      driver.reset,
                      Effect.suspend(() => applyEvents(events, listed) ?? Effect.void)
                    )
                  }
                }
                return applyEvents(events, listed)
              }
              // a batch that needs no effect is applied in the callback that delivered it
              return watch.follow(step)
            }
          )
        ).pipe(Effect.flip)
        if (error.reason === "Compacted" || error.reason === "Rewound") {
          yield* Effect.logInfo(`watch canceled; listing again: ${error.message}`)
        } else {
          yield* Effect.logWarning(`watch failed; listing again: ${error.message}`)
          yield* markFailing(error)
          yield* backoff(error)
        }
      }
    })

    // a defect in the engine (a bug) is logged and the engine starts over from a fresh list
    const supervised = engine.pipe(
      Effect.catchAllCause((cause) =>
        Effect.logError("subscriber failed unexpectedly; restarting", cause).pipe(
          Effect.zipRight(Effect.sleep(scheduleEndedPause))
        )
      ),
      Effect.forever,
      Effect.annotateLogs("prefix", prefix)
    )
    yield* Effect.forkIn(supervised, scope)
    yield* Deferred.await(firstAttempt)

    const endpoints_ = Effect.suspend(() => {
      const set = endpointSet.current()
      return set.error._tag === "Some" ? Effect.fail(set.error.value) : Effect.succeed(set.endpoints)
    })

    const subscriber: Subscriber<Req, Res, E> = {
      [TypeId]: TypeId,
      prefix,
      instances,
      endpointSet,
      endpoints: endpoints_,
      state: stateRef
    }
    Object.defineProperty(subscriber, CurrentEndpointSet, {
      value: () => (pickable ??= new Pickable(rows, invalidated))
    })
    return subscriber
  })
