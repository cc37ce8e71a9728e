/**
 * The subscriber's engine: list once, apply watch deltas, re-list when etcd
 * cancels the watch, one scoped endpoint per instance.
 *
 * @internal
 */
import * as Clock from "effect/Clock"
import * as Deferred from "effect/Deferred"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as ExecutionStrategy from "effect/ExecutionStrategy"
import * as Exit from "effect/Exit"
import * as Fiber from "effect/Fiber"
import * as Option from "effect/Option"
import * as Schedule from "effect/Schedule"
import * as Scope from "effect/Scope"
import * as Stream from "effect/Stream"
import * as SubscriptionRef from "effect/SubscriptionRef"
import type { Endpoint } from "../Endpoint.js"
import { EtcdClient } from "../EtcdClient.js"
import type { Listing, WatchEvent } from "../EtcdClient.js"
import { EtcdError, InvalidOptions } from "../EtcdError.js"
import type { EndpointSet, Options, State, Subscriber } from "../Subscriber.js"
import { defaultReconnect } from "./client.js"
import { normalizePrefix } from "./prefix.js"

/** @internal */
export const TypeId: unique symbol = Symbol.for("effect-sd-etcd/Subscriber")

/** @internal */
export type TypeId = typeof TypeId

/** @internal */
export const isSubscriber = (u: unknown): u is Subscriber<unknown, unknown, unknown> =>
  typeof u === "object" && u !== null && TypeId in u

/** How long to wait before starting a retry schedule over when it has ended at once. */
const scheduleEndedPause = Duration.seconds(1)

/** One instance under the prefix and the endpoint made from it. */
interface Entry<Req, Res, E> {
  readonly value: string
  /** undefined when the factory failed: the instance is known but has no endpoint. */
  readonly endpoint: Endpoint<Req, Res, E> | undefined
  readonly scope: Scope.CloseableScope | undefined
}

const validate = (options: {
  readonly prefix: string
  readonly invalidateOnError?: Duration.DurationInput | undefined
}): Effect.Effect<Option.Option<Duration.Duration>, InvalidOptions> =>
  Effect.suspend(() => {
    if (typeof options.prefix !== "string" || options.prefix.length === 0) {
      return Effect.fail(new InvalidOptions({ option: "prefix", reason: "must be a non-empty key prefix" }))
    }
    const input = options.invalidateOnError
    if (input === undefined) return Effect.succeed(Option.none())
    // Duration turns negative numbers into zero: reject them before decoding
    if ((typeof input === "number" || typeof input === "bigint") && input < 0) {
      return Effect.fail(new InvalidOptions({ option: "invalidateOnError", reason: "must not be negative" }))
    }
    const decoded = Duration.decodeUnknown(input)
    if (Option.isNone(decoded) || Number.isNaN(Duration.toMillis(decoded.value))) {
      return Effect.fail(
        new InvalidOptions({ option: "invalidateOnError", reason: `not a duration: ${String(input)}` })
      )
    }
    if (Duration.toMillis(decoded.value) < 0) {
      return Effect.fail(new InvalidOptions({ option: "invalidateOnError", reason: "must not be negative" }))
    }
    return Effect.succeed(Duration.isFinite(decoded.value) ? Option.some(decoded.value) : Option.none())
  })

/** Index of `key` in the sorted array, or of where it would be inserted. */
const search = (sorted: ReadonlyArray<string>, key: string): number => {
  let lo = 0
  let hi = sorted.length
  while (lo < hi) {
    const mid = (lo + hi) >>> 1
    if (sorted[mid]! < key) lo = mid + 1
    else hi = mid
  }
  return lo
}

/**
 * The published instances: a read-only map over a copy of the sorted keys and
 * values, in key order. Publishing one copies two arrays (a memcpy) instead of
 * hashing every instance into a new Map, so a change costs O(1) hashing
 * whatever the number of instances.
 */
class SortedInstances implements ReadonlyMap<string, string> {
  constructor(
    private readonly sortedKeys: ReadonlyArray<string>,
    private readonly sortedValues: ReadonlyArray<string>
  ) {}
  get size(): number {
    return this.sortedKeys.length
  }
  get(key: string): string | undefined {
    const i = search(this.sortedKeys, key)
    return this.sortedKeys[i] === key ? this.sortedValues[i] : undefined
  }
  has(key: string): boolean {
    return this.sortedKeys[search(this.sortedKeys, key)] === key
  }
  forEach(callback: (value: string, key: string, map: ReadonlyMap<string, string>) => void, thisArg?: unknown): void {
    for (let i = 0; i < this.sortedKeys.length; i++) {
      callback.call(thisArg, this.sortedValues[i]!, this.sortedKeys[i]!, this)
    }
  }
  entries(): MapIterator<[string, string]> {
    const keys = this.sortedKeys
    const values = this.sortedValues
    return keys.map((key, i): [string, string] => [key, values[i]!])[Symbol.iterator]()
  }
  keys(): MapIterator<string> {
    return this.sortedKeys[Symbol.iterator]()
  }
  values(): MapIterator<string> {
    return this.sortedValues[Symbol.iterator]()
  }
  [Symbol.iterator](): MapIterator<[string, string]> {
    return this.entries()
  }
}

/** @internal */
export const make = <Req, Res, E, FE, R>(
  options: Options<Req, Res, E, FE, R>
): Effect.Effect<Subscriber<Req, Res, E>, InvalidOptions, EtcdClient | Scope.Scope | Exclude<R, Scope.Scope>> =>
  Effect.gen(function* () {
    const invalidateAfter = yield* validate(options)
    const prefix = normalizePrefix(options.prefix)
    const client = yield* EtcdClient
    const scope = yield* Effect.scope
    // closed after the engine fiber below is interrupted (finalizers run in reverse order)
    const endpointScopes = yield* Scope.fork(scope, ExecutionStrategy.sequential)

    const instancesRef = yield* SubscriptionRef.make<ReadonlyMap<string, string>>(new Map())
    const endpointsRef = yield* SubscriptionRef.make<EndpointSet<Req, Res, E>>({
      endpoints: [],
      keys: [],
      error: Option.none()
    })
    const stateRef = yield* SubscriptionRef.make<State>({ _tag: "Starting" })
    const firstAttempt = yield* Deferred.make<void>()

    // ---- state owned by the engine fiber ----
    const entries = new Map<string, Entry<Req, Res, E>>()
    // every known key in order, with its value and endpoint at the same index
    const sortedKeys: Array<string> = []
    const sortedValues: Array<string> = []
    const sortedEndpoints: Array<Endpoint<Req, Res, E> | undefined> = []
    // how many of sortedEndpoints are undefined (a factory failed, or is running)
    let missing = 0
    let instancesDirty = false
    let endpointsDirty = false
    let toClose: Array<readonly [string, Scope.CloseableScope]> = []
    let live = false
    let failingSince: number | undefined = undefined
    let invalidation: Fiber.RuntimeFiber<void> | undefined = undefined

    const closeEndpoint = (key: string, endpointScope: Scope.CloseableScope) =>
      Scope.close(endpointScope, Exit.void).pipe(
        Effect.catchAllCause((cause) => Effect.logWarning("closing an endpoint failed", cause)),
        Effect.annotateLogs("key", key)
      )

    const makeEntry = (key: string, value: string) =>
      Effect.gen(function* () {
        const endpointScope = yield* Scope.fork(endpointScopes, ExecutionStrategy.sequential)
        // suspended: a factory that throws instead of returning an Effect is a defect like any other
        const exit = yield* Effect.exit(
          Scope.extend(
            Effect.suspend(() => options.factory(value)),
            endpointScope
          )
        )
        if (Exit.isSuccess(exit)) {
          const entry: Entry<Req, Res, E> = { value, endpoint: exit.value, scope: endpointScope }
          return entry
        }
        yield* closeEndpoint(key, endpointScope)
        yield* Effect.logWarning("endpoint factory failed; instance skipped", exit.cause).pipe(
          Effect.annotateLogs({ key, instance: value })
        )
        const entry: Entry<Req, Res, E> = { value, endpoint: undefined, scope: undefined }
        return entry
      })

    const upsert = (key: string, value: string) =>
      Effect.gen(function* () {
        const current = entries.get(key)
        if (current !== undefined && current.value === value && current.endpoint !== undefined) return
        if (current === undefined) {
          const i = search(sortedKeys, key)
          sortedKeys.splice(i, 0, key)
          sortedValues.splice(i, 0, value)
          sortedEndpoints.splice(i, 0, undefined)
          missing++
          instancesDirty = true
        } else if (current.value !== value) {
          sortedValues[search(sortedKeys, key)] = value
          instancesDirty = true
        }
        const entry = yield* makeEntry(key, value)
        entries.set(key, entry)
        const i = search(sortedKeys, key)
        if (sortedEndpoints[i] === undefined) missing--
        sortedEndpoints[i] = entry.endpoint
        if (entry.endpoint === undefined) missing++
        if (current?.scope !== undefined) toClose.push([key, current.scope])
        if (current?.endpoint !== undefined || entry.endpoint !== undefined) endpointsDirty = true
      })

    const remove = (key: string) => {
      const current = entries.get(key)
      if (current === undefined) return
      entries.delete(key)
      const i = search(sortedKeys, key)
      if (sortedEndpoints[i] === undefined) missing--
      sortedKeys.splice(i, 1)
      sortedValues.splice(i, 1)
      sortedEndpoints.splice(i, 1)
      instancesDirty = true
      if (current.endpoint !== undefined) endpointsDirty = true
      if (current.scope !== undefined) toClose.push([key, current.scope])
    }

    /**
     * Publishes the changes made since the last call, then closes the endpoints
     * that left. The snapshots are copies of the sorted arrays (memcpy-fast): a
     * change never hashes every instance into a new Map.
     */
    const publish = Effect.gen(function* () {
      let keysCopy: Array<string> | undefined = undefined
      if (instancesDirty) {
        instancesDirty = false
        keysCopy = sortedKeys.slice()
        yield* SubscriptionRef.set(instancesRef, new SortedInstances(keysCopy, sortedValues.slice()))
      }
      if (endpointsDirty) {
        endpointsDirty = false
        let endpoints: Array<Endpoint<Req, Res, E>>
        let keys: Array<string>
        if (missing === 0) {
          endpoints = sortedEndpoints.slice() as Array<Endpoint<Req, Res, E>>
          keys = keysCopy ?? sortedKeys.slice()
        } else {
          endpoints = []
          keys = []
          for (let i = 0; i < sortedKeys.length; i++) {
            const endpoint = sortedEndpoints[i]
            if (endpoint !== undefined) {
              endpoints.push(endpoint)
              keys.push(sortedKeys[i]!)
            }
          }
        }
        yield* SubscriptionRef.update(endpointsRef, (set) => ({ endpoints, keys, error: set.error }))
      }
      if (toClose.length > 0) {
        const closing = toClose
        toClose = []
        for (const [key, endpointScope] of closing) yield* closeEndpoint(key, endpointScope)
      }
    })

    const invalidate = Effect.flatMap(SubscriptionRef.get(stateRef), (state) =>
      state._tag === "Failing"
        ? SubscriptionRef.update(endpointsRef, (set) => ({ ...set, error: Option.some(state.error) })).pipe(
            Effect.zipRight(Effect.logWarning(`endpoints invalidated: ${state.error.message}`))
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

    const markLive = Effect.gen(function* () {
      if (live) return
      const wasFailing = failingSince !== undefined
      live = true
      failingSince = undefined
      if (invalidation !== undefined) {
        yield* Fiber.interrupt(invalidation)
        invalidation = undefined
      }
      const set = yield* SubscriptionRef.get(endpointsRef)
      if (Option.isSome(set.error)) yield* SubscriptionRef.set(endpointsRef, { ...set, error: Option.none() })
      yield* SubscriptionRef.set(stateRef, { _tag: "Live" })
      if (wasFailing) yield* Effect.logInfo("etcd reachable again")
    })

    const applyListing = (listing: Listing) =>
      Effect.gen(function* () {
        const seen = new Set<string>()
        for (const kv of listing.entries) {
          if (!kv.key.startsWith(prefix)) continue
          if (kv.malformed) {
            yield* Effect.logWarning("value is not valid UTF-8; instance skipped").pipe(
              Effect.annotateLogs("key", kv.key)
            )
            continue
          }
          seen.add(kv.key)
          yield* upsert(kv.key, kv.value)
        }
        for (const key of Array.from(entries.keys())) {
          if (!seen.has(key)) remove(key)
        }
        yield* markLive
        yield* publish
      })

    const applyEvents = (events: Iterable<WatchEvent>) =>
      Effect.gen(function* () {
        for (const event of events) {
          switch (event._tag) {
            case "Put": {
              if (event.malformed) {
                yield* Effect.logWarning("value is not valid UTF-8; instance skipped").pipe(
                  Effect.annotateLogs("key", event.key)
                )
                remove(event.key)
              } else {
                yield* upsert(event.key, event.value)
              }
              yield* markLive
              break
            }
            case "Delete": {
              remove(event.key)
              yield* markLive
              break
            }
            case "Disconnected": {
              yield* publish
              yield* Effect.logWarning(`watch disconnected; reconnecting: ${event.error.message}`)
              yield* markFailing(event.error)
              break
            }
            case "Reconnected": {
              yield* Effect.logInfo("watch reconnected").pipe(Effect.annotateLogs("revision", event.revision))
              yield* markLive
              break
            }
          }
        }
        yield* publish
      })

    const engine = Effect.gen(function* () {
      const driver = yield* Schedule.driver(options.retryList ?? defaultReconnect)
      // waits as the schedule says; a schedule that has ended starts over
      const backoff = (error: EtcdError) =>
        driver.next(error).pipe(
          Effect.catchAll(() => Effect.zipRight(driver.reset, driver.next(error))),
          Effect.catchAll(() => Effect.sleep(scheduleEndedPause)),
          Effect.asVoid
        )
      for (;;) {
        // list, retried forever
        let listing: Listing
        for (;;) {
          const result = yield* Effect.either(client.list(prefix))
          if (result._tag === "Right") {
            listing = result.right
            break
          }
          yield* Effect.logWarning(`listing instances failed; retrying: ${result.left.message}`)
          yield* markFailing(result.left)
          yield* Deferred.succeed(firstAttempt, undefined)
          yield* backoff(result.left)
        }
        yield* applyListing(listing)
        yield* Deferred.succeed(firstAttempt, undefined)

        // then the changes after the listed revision. The watch starts at the listed revision
        // itself (whose changes the listing holds already, so they are dropped): if a compaction
        // has passed it, the watch fails with Compacted. Starting one later would be accepted
        // after a compaction at exactly that revision, whose deletes etcd no longer has: they
        // would be missed for good.
        let progressed = false
        const watched = yield* client
          .watch(prefix, { fromRevision: listing.revision, reconnect: options.reconnect })
          .pipe(
            Stream.filter(
              (event) => (event._tag !== "Put" && event._tag !== "Delete") || event.revision > listing.revision
            ),
            Stream.runForEachChunk((chunk) =>
              Effect.gen(function* () {
                if (!progressed) {
                  for (const event of chunk) {
                    if (event._tag !== "Disconnected") progressed = true
                  }
                  if (progressed) yield* driver.reset
                }
                yield* applyEvents(chunk)
              })
            ),
            Effect.either
          )
        const error =
          watched._tag === "Left"
            ? watched.left
            : new EtcdError({ operation: "watch", reason: "Canceled", detail: "the watch ended" })
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

    const endpoints = Effect.flatMap(SubscriptionRef.get(endpointsRef), (set) =>
      Option.isSome(set.error) ? Effect.fail(set.error.value) : Effect.succeed(set.endpoints)
    )

    const subscriber: Subscriber<Req, Res, E> = {
      [TypeId]: TypeId,
      prefix,
      instances: instancesRef,
      endpointSet: endpointsRef,
      endpoints,
      state: stateRef
    }
    return subscriber
  })
