/**
 * The parts of the EtcdClient that both implementations share: go-kit's
 * surface and the self-reconnecting watch, built on a few primitives.
 *
 * @internal
 */
import * as Chunk from "effect/Chunk"
import * as Effect from "effect/Effect"
import * as Option from "effect/Option"
import * as Ref from "effect/Ref"
import * as Schedule from "effect/Schedule"
import type * as Scope from "effect/Scope"
import * as Stream from "effect/Stream"
import type { EtcdClient, LeaseId, WatchEvent, WatchOptions } from "../EtcdClient.js"
import { EtcdError, NoKey, NoValue } from "../EtcdError.js"
import { normalizePrefix } from "./prefix.js"

/** A change or the watch-created marker, as delivered by one watch connection. */
export type RawWatchEvent =
  | Extract<WatchEvent, { readonly _tag: "Put" | "Delete" }>
  | {
      readonly _tag: "Created"
      /** The store revision of the member that answered. */
      readonly revision: number
      /** The id of the cluster that answered: a wiped or replaced cluster has a new one. */
      readonly cluster: string
    }

/** Where one watch connection hands over what it delivers. Both are called outside any fiber. */
export interface WatchSink {
  /** Events that arrived together, in order; never empty. */
  readonly events: (events: ReadonlyArray<RawWatchEvent>) => void
  /** The connection is lost or canceled; nothing comes after it. */
  readonly fail: (error: EtcdError) => void
}

/**
 * What an implementation provides. `watchOnce` opens one watch connection
 * that hands `sink` `Created` (with the store revision and the cluster id)
 * first, then the changes from `fromRevision` in order; it fails the sink with
 * `Unavailable` when the connection is lost and with the cancel reason when
 * etcd cancels the watch. It returns the function that closes the connection
 * (after which the sink hears nothing more).
 */
export interface Primitives extends Pick<
  EtcdClient,
  "grant" | "keepAliveOnce" | "revoke" | "put" | "get" | "delete" | "list" | "compact" | "revision"
> {
  readonly watchOnce: (prefix: string, fromRevision: number, sink: WatchSink) => Effect.Effect<() => void>
  /**
   * The store revision, read (linearizably) with a request on `prefix`: a user
   * whose role may read only its own prefix can make it (`revision` reads a
   * key outside every prefix). Without it, `revision`.
   */
  readonly revisionOf?: ((prefix: string) => Effect.Effect<number, EtcdError>) | undefined
  /** {@link grantAndPut}, when the client can send the put without a fiber between the two requests. */
  readonly grantAndPut?: GrantAndPutOf | undefined
  /** {@link revokeNow}, when the client can send the request before the effect runs. */
  readonly revokeNow?: ((lease: LeaseId) => Effect.Effect<void, EtcdError>) | undefined
}

/** A lease granted and a key put on it, by {@link grantAndPut}. */
export interface GrantedAndPut {
  readonly lease: LeaseId
  /** The revision of the put. */
  readonly revision: number
}

type GrantAndPutOf = (ttlSeconds: number, key: string, value: string) => Effect.Effect<GrantedAndPut, EtcdError>

/**
 * Where an EtcdClient made by {@link fromPrimitives} keeps its primitives' `grantAndPut`, if they have
 * one, with the `grant` and `put` it stands for.
 */
const GrantAndPut: unique symbol = Symbol.for("effect-sd-etcd/EtcdClient/grantAndPut")

interface GrantAndPutDirect {
  readonly grant: EtcdClient["grant"]
  readonly put: EtcdClient["put"]
  readonly grantAndPut: GrantAndPutOf
}

/**
 * Grants a lease of `ttlSeconds` and puts every entry on it (16 at a time);
 * answers the lease and each put's revision, in order. If a put fails or is
 * interrupted, the lease is revoked: nothing stays behind. For one entry (a
 * first registration), a client made over etcd3 sends the put from the
 * grant's callback, without waking a fiber in between; any other (a test
 * double, a wrapper that spreads a client or replaces its `grant` or `put`,
 * by a prototype or a proxy) makes the calls of its own `grant` and `put`.
 */
export const grantAndPut = (
  client: EtcdClient,
  ttlSeconds: number,
  entries: ReadonlyArray<{ readonly key: string; readonly value: string }>
): Effect.Effect<{ readonly lease: LeaseId; readonly revisions: ReadonlyArray<number> }, EtcdError> => {
  const direct = (client as { readonly [GrantAndPut]?: GrantAndPutDirect })[GrantAndPut]
  if (direct !== undefined && entries.length === 1 && client.grant === direct.grant && client.put === direct.put) {
    return Effect.map(direct.grantAndPut(ttlSeconds, entries[0]!.key, entries[0]!.value), (r) => ({
      lease: r.lease,
      revisions: [r.revision]
    }))
  }
  const putAll = (lease: LeaseId): Effect.Effect<ReadonlyArray<number>, EtcdError> =>
    // one entry is one put, without forking a fiber for it
    entries.length === 1
      ? Effect.map(client.put(entries[0]!.key, entries[0]!.value, { lease }), (revision) => [revision])
      : Effect.forEach(entries, (entry) => client.put(entry.key, entry.value, { lease }), { concurrency: 16 })
  return Effect.flatMap(client.grant(ttlSeconds), (lease) =>
    putAll(lease).pipe(
      Effect.onExit((exit) => (exit._tag === "Success" ? Effect.void : Effect.ignore(client.revoke(lease)))),
      Effect.map((revisions) => ({ lease, revisions }))
    )
  )
}

/**
 * Where an EtcdClient made by {@link fromPrimitives} keeps its primitives' `revokeNow`, if they have
 * one, with the `revoke` it stands for.
 */
const RevokeNow: unique symbol = Symbol.for("effect-sd-etcd/EtcdClient/revokeNow")

interface RevokeNowDirect {
  readonly revoke: EtcdClient["revoke"]
  readonly revokeNow: (lease: LeaseId) => Effect.Effect<void, EtcdError>
}

/**
 * Revokes `lease`, the request sent at once (before the effect runs) where the
 * client can: a call with its effect built and run through a few layers of
 * effects before it leaves starts later by tens of microseconds per layer with
 * the caches cold, as a deregistration has them (issue 7). `answer` waits
 * for the answer, and is run once; `sent` says whether the request went (else
 * `answer` is `client.revoke(lease)`, sent when it runs: a test double, a
 * wrapper that spreads a client or replaces its `revoke`, by a prototype or a
 * proxy).
 */
export const revokeNow = (
  client: EtcdClient,
  lease: LeaseId
): { readonly sent: boolean; readonly answer: Effect.Effect<void, EtcdError> } => {
  const direct = (client as { readonly [RevokeNow]?: RevokeNowDirect })[RevokeNow]
  // a client's revoke is run as an effect: one that throws where it should fail (a hand-made client)
  // throws when the effect runs, inside the deregistration's clean-up, not in its synchronous start
  if (direct === undefined || client.revoke !== direct.revoke) {
    return { sent: false, answer: Effect.suspend(() => client.revoke(lease)) }
  }
  try {
    return { sent: true, answer: direct.revokeNow(lease) }
  } catch (cause) {
    return { sent: false, answer: Effect.die(cause) }
  }
}

/** The store revision, read with a request on `prefix` where the primitives can (see `Primitives.revisionOf`). */
const revisionOf = (primitives: Primitives, prefix: string): Effect.Effect<number, EtcdError> =>
  primitives.revisionOf === undefined ? primitives.revision : primitives.revisionOf(prefix)

/** The default reconnect schedule of a watch: jittered exponential from 100 ms, capped at 2 s, forever. */
export const defaultReconnect: Schedule.Schedule<unknown, EtcdError> = Schedule.exponential("100 millis").pipe(
  Schedule.either(Schedule.spaced("2 seconds")),
  Schedule.jittered
)

/** Whether a watch failure is transient (reconnect) or terminal (the caller must list again). */
export const isTransient = (error: EtcdError): boolean => error.reason === "Unavailable" || error.reason === "Timeout"

/**
 * A watch read batch by batch: what the subscriber's engine drives directly,
 * and what the `watch` stream is made of.
 */
export interface WatchBatches {
  /**
   * The events that arrived since the last take, in order, waiting for some if
   * none has; fails with the error that ends the watch.
   */
  readonly take: Effect.Effect<ReadonlyArray<WatchEvent>, EtcdError>
  /**
   * Gives every batch to `step`, in order, forever; fails with the error that
   * ends the watch. `step` deals with a batch at once and returns `undefined`,
   * or returns an effect that must run before the next batch. While the fiber
   * is waiting, a batch that needs no effect to be handed over (changes on a
   * connection already checked: the common case) is given to `step` right in
   * the callback that delivered it, outside any fiber; `step` must then touch
   * nothing but plain state. A batch costs no fiber wake-up that way.
   */
  readonly follow: <R>(
    step: (events: ReadonlyArray<WatchEvent>) => Effect.Effect<void, never, R> | undefined
  ) => Effect.Effect<never, EtcdError, R>
}

/** {@link WatchBatches.follow} for a watch that has only `take`: every batch is taken in the fiber. */
const followTaken =
  (take: Effect.Effect<ReadonlyArray<WatchEvent>, EtcdError>): WatchBatches["follow"] =>
  <R>(step: (events: ReadonlyArray<WatchEvent>) => Effect.Effect<void, never, R> | undefined) => {
    // not Effect.forever, which yields to the scheduler between two batches
    const loop: Effect.Effect<never, EtcdError, R> = Effect.flatMap(take, (events) => {
      const effect = step(events)
      return effect === undefined ? loop : Effect.zipRight(effect, loop)
    })
    return loop
  }

/** One watch connection's mailbox: what its sink was handed and the engine has not taken yet. */
interface Connection {
  /** The first revision to deliver (earlier ones were delivered by a previous connection). */
  readonly from: number
  /**
   * A resumed connection starts one revision early, at the last revision
   * delivered: etcd replays its changes, which must be the ones delivered there
   * (see `openWatch`). `undefined` once they are checked, or when there is
   * nothing to check.
   */
  replay: Replay | undefined
  batches: Array<ReadonlyArray<RawWatchEvent>>
  error: EtcdError | undefined
  /** Wakes the fiber waiting in `take`. */
  wake: (() => void) | undefined
  close: (() => void) | undefined
}

/** A change a watch delivers. */
type Change = Extract<WatchEvent, { readonly _tag: "Put" | "Delete" }>

/** The changes delivered at one revision, which a resumed connection must replay as they were. */
export interface Replay {
  readonly revision: number
  readonly expected: ReadonlyArray<Change>
  /** What was replayed so far. */
  readonly replayed: Array<Change>
}

const sameChange = (a: Change, b: Change): boolean =>
  a.revision === b.revision &&
  a.key === b.key &&
  (a._tag === "Put" ? b._tag === "Put" && a.value === b.value : b._tag === "Delete")

/**
 * Whether etcd replayed the changes delivered at that revision: all of them, or
 * all but some of the deletes. A compaction at exactly that revision keeps its
 * puts and drops its deletes' tombstones, and it drops them in batches: a watch
 * opened while it runs is replayed some of them. Exported for its unit test.
 *
 * @internal
 */
export const replayedAsDelivered = (replay: Replay): boolean => {
  let r = 0
  for (const change of replay.expected) {
    const replayed = replay.replayed[r]
    if (replayed !== undefined && sameChange(change, replayed)) r++
    else if (change._tag === "Put") return false
  }
  return r === replay.replayed.length
}

/**
 * A watch that reconnects by itself from the last revision seen. Delivers
 * `Disconnected` on a transient failure and `Reconnected` when live again. Fails
 * with `Rewound` when, on reconnecting, the cluster is another one (a cluster
 * bootstrapped again with a new `--initial-cluster-token` has a new cluster id,
 * whatever its revision has reached by then), or when the store revision is
 * behind a revision this watch has already been promised. A cluster wiped and
 * started again with the same flags keeps its cluster id: while its revision
 * is behind the last one seen, that tells it apart; once it has caught up,
 * its history does. A resumed connection starts at the last revision
 * delivered, and etcd replays that revision's changes first: when they are not
 * the ones delivered there (other keys, or none before a later revision), the
 * store is another one, and the watch fails with `Rewound`. (A compaction at
 * exactly that revision drops its deletes, so a replay without some or all of
 * them passes.
 * When no change was delivered yet, or only deletes, there is nothing to
 * compare: a known limit, in the README.)
 * A member that merely lags behind answers with its own older
 * revision: a linearizable read of the revision tells it apart from a store
 * that went back. A resumed watch is complete or fails with `Compacted`: it
 * never skips the deletes of a compacted revision.
 *
 * No Stream in between: a connection hands its events to a mailbox outside any
 * fiber, and `take` empties it (everything that arrived since the last take is
 * one batch). The connection open is closed with the scope.
 */
export const openWatch = (
  primitives: Primitives,
  prefix: string,
  fromRevision: number,
  reconnect: Schedule.Schedule<unknown, EtcdError> = defaultReconnect,
  knownCluster: string | undefined = undefined
): Effect.Effect<WatchBatches, never, Scope.Scope> =>
  Effect.gen(function* () {
    const driver = yield* Schedule.driver(Schedule.whileInput(reconnect, isTransient))
    // the watch's state, touched only by the fiber taking from it (and the sinks, which only fill mailboxes)
    let next = fromRevision // the next revision to deliver
    let disconnected = false
    // the cluster followed: the listing's, else the first connection's
    let cluster: string | undefined = knownCluster
    let connection: Connection | undefined = undefined
    // the transient failure to back off from before connecting again
    let retryAfter: EtcdError | undefined = undefined
    // the error that ended the watch
    let ended: EtcdError | undefined = undefined
    let closed = false
    // the changes delivered at the last revision delivered, in order (the array is reused)
    let lastRevision = -1
    const lastChanges: Array<Change> = []
    const remember = (events: ReadonlyArray<WatchEvent>) => {
      for (const event of events) {
        if (event._tag !== "Put" && event._tag !== "Delete") continue
        if (event.revision !== lastRevision) {
          lastRevision = event.revision
          lastChanges.length = 0
        }
        lastChanges.push(event)
      }
    }

    const wake = (c: Connection) => {
      const waiter = c.wake
      if (waiter !== undefined) {
        c.wake = undefined
        waiter()
      }
    }

    const connect = Effect.suspend(() => {
      if (closed) return Effect.interrupt
      const from = next
      // etcd keeps revision C readable after a compaction at C, but drops the tombstones of
      // its deletes: a watch resumed from exactly C would be accepted and miss them for good.
      // Resuming one revision early (and dropping what was delivered already) turns that case
      // into Compacted, so that the caller lists again.
      const start = cluster !== undefined && from > 1 ? from - 1 : from
      const replay: Replay | undefined =
        start === from - 1 && lastRevision === start
          ? { revision: start, expected: lastChanges.slice(), replayed: [] }
          : undefined
      const c: Connection = { from, replay, batches: [], error: undefined, wake: undefined, close: undefined }
      connection = c
      const sink: WatchSink = {
        events: (events) => {
          if (connection !== c || c.error !== undefined) return
          c.batches.push(events)
          wake(c)
        },
        fail: (error) => {
          if (connection !== c || c.error !== undefined) return
          c.error = error
          wake(c)
        }
      }
      return Effect.map(primitives.watchOnce(prefix, start, sink), (close) => {
        c.close = close
      })
    }).pipe(Effect.uninterruptible)

    const disconnect = () => {
      const c = connection
      connection = undefined
      c?.close?.()
    }
    yield* Effect.addFinalizer(() =>
      Effect.sync(() => {
        closed = true
        disconnect()
      })
    )

    /** A connection's `Created`: checks that the cluster is the one followed and has not gone back. */
    const created = (event: { readonly revision: number; readonly cluster: string }, from: number) =>
      Effect.gen(function* () {
        const known = cluster
        cluster = event.cluster
        if (known !== undefined && known !== event.cluster) {
          return yield* new EtcdError({
            operation: "watch",
            reason: "Rewound",
            detail: `the cluster was replaced (cluster id ${event.cluster}, was ${known}); revision ${from - 1} already seen`
          })
        }
        if (event.revision < from - 1) {
          const current = yield* revisionOf(primitives, prefix)
          if (current < from - 1) {
            return yield* new EtcdError({
              operation: "watch",
              reason: "Rewound",
              detail: `store revision ${current} is behind revision ${from - 1} already seen`
            })
          }
        }
        // connected: the next outage starts its backoff afresh
        yield* driver.reset
      })

    /** The connection failed: a terminal error ends the watch; a transient one is announced once, then retried. */
    const lost = (error: EtcdError): Effect.Effect<ReadonlyArray<WatchEvent>, EtcdError> => {
      disconnect()
      if (!isTransient(error)) {
        ended = error
        return Effect.fail(error)
      }
      retryAfter = error
      if (disconnected) return take
      disconnected = true
      return Effect.succeed([{ _tag: "Disconnected", error }])
    }

    /**
     * The changes the connection delivered and not delivered yet, when handing
     * them over needs no effect: they hold no `Created`. That is the common case,
     * changes on a connection already checked; `undefined` otherwise, and nothing
     * is taken.
     */
    const deliverNow = (c: Connection): ReadonlyArray<WatchEvent> | undefined => {
      if (c.replay !== undefined) return undefined
      const batches = c.batches
      for (const batch of batches) for (const event of batch) if (event._tag === "Created") return undefined
      c.batches = []
      let last = next
      const out: Array<WatchEvent> = []
      for (const batch of batches) {
        for (const event of batch) {
          if (event._tag !== "Created" && event.revision >= c.from) {
            out.push(event)
            last = event.revision + 1
          }
        }
      }
      next = last
      remember(out)
      return out
    }

    /** Hands over what the connection delivered: the changes not delivered yet, and `Reconnected` after an outage. */
    const deliver = (c: Connection): Effect.Effect<ReadonlyArray<WatchEvent>, EtcdError> => {
      const now = deliverNow(c)
      if (now !== undefined) return now.length === 0 ? take : Effect.succeed(now)
      const batches = c.batches
      c.batches = []
      let createdEvent: { readonly revision: number; readonly cluster: string } | undefined = undefined
      let last = next
      const out: Array<WatchEvent> = []
      let later = false
      for (const batch of batches) {
        for (const event of batch) {
          if (event._tag === "Created") {
            createdEvent = event
          } else if (event.revision >= c.from) {
            later = true
            out.push(event)
            last = event.revision + 1
          } else if (c.replay !== undefined) {
            c.replay.replayed.push(event)
          }
        }
      }
      // the replay is over once a change of it or a later one has come: etcd sends a revision's
      // changes in one response, and a batch holds whole responses
      const replayed = c.replay !== undefined && (c.replay.replayed.length > 0 || later) ? c.replay : undefined
      if (replayed !== undefined) c.replay = undefined
      const handOver = (): Effect.Effect<ReadonlyArray<WatchEvent>, EtcdError> => {
        if (replayed !== undefined && !replayedAsDelivered(replayed)) {
          return lost(
            new EtcdError({
              operation: "watch",
              reason: "Rewound",
              detail: `the changes at revision ${replayed.revision} are not the ones seen there: the store was wiped and has caught up (a cluster bootstrapped again with the same cluster id)`
            })
          )
        }
        next = last
        remember(out)
        if (createdEvent !== undefined && disconnected) {
          disconnected = false
          out.unshift({ _tag: "Reconnected", revision: createdEvent.revision })
        }
        return out.length === 0 ? take : Effect.succeed(out)
      }
      if (createdEvent === undefined) return handOver()
      return Effect.matchEffect(created(createdEvent, c.from), {
        onFailure: (error) => lost(error),
        onSuccess: handOver
      })
    }

    const take: Effect.Effect<ReadonlyArray<WatchEvent>, EtcdError> = Effect.suspend(() => {
      if (ended !== undefined) return Effect.fail(ended)
      const c = connection
      if (c === undefined) {
        // reconnect as the schedule says, from the last revision seen
        const error = retryAfter
        retryAfter = undefined
        if (error === undefined) return Effect.zipRight(connect, take)
        return Effect.matchEffect(driver.next(error), {
          onFailure: () => {
            ended = error
            return Effect.fail(error)
          },
          onSuccess: () => Effect.zipRight(connect, take)
        })
      }
      if (c.batches.length > 0) return deliver(c)
      if (c.error !== undefined) return lost(c.error)
      return Effect.async<ReadonlyArray<WatchEvent>, EtcdError>((resume) => {
        c.wake = () => resume(take)
        return Effect.sync(() => {
          c.wake = undefined
        })
      })
    })

    const follow = <R>(
      step: (events: ReadonlyArray<WatchEvent>) => Effect.Effect<void, never, R> | undefined
    ): Effect.Effect<never, EtcdError, R> => {
      // a batch taken in the fiber (connecting, a Created to check, an error, or one that came meanwhile)
      const viaTake: Effect.Effect<never, EtcdError, R> = Effect.flatMap(take, (events) => {
        const effect = step(events)
        return effect === undefined ? loop : Effect.zipRight(effect, loop)
      })
      const loop: Effect.Effect<never, EtcdError, R> = Effect.suspend(() => {
        const c = connection
        if (ended !== undefined || c === undefined || c.batches.length > 0 || c.error !== undefined) return viaTake
        // waiting: the sink calls `handle` (having cleared c.wake) with each batch it is handed
        return Effect.flatten(
          Effect.async<Effect.Effect<never, EtcdError, R>>((resume) => {
            const handle = () => {
              const events = connection === c && c.error === undefined ? deliverNow(c) : undefined
              if (events === undefined) return resume(Effect.succeed(viaTake))
              let effect: Effect.Effect<void, never, R> | undefined
              try {
                effect = events.length === 0 ? undefined : step(events)
              } catch (defect) {
                return resume(Effect.die(defect))
              }
              if (effect === undefined) c.wake = handle
              else resume(Effect.succeed(Effect.zipRight(effect, loop)))
            }
            c.wake = handle
            return Effect.sync(() => {
              if (c.wake === handle) c.wake = undefined
            })
          })
        )
      })
      return loop
    }

    yield* connect
    return { take, follow }
  })

/** {@link openWatch} as a stream. */
export const reconnectingWatch = (
  primitives: Primitives,
  prefix: string,
  fromRevision: number,
  reconnect: Schedule.Schedule<unknown, EtcdError> = defaultReconnect,
  cluster: string | undefined = undefined
): Stream.Stream<WatchEvent, EtcdError> =>
  Stream.unwrapScoped(
    Effect.map(openWatch(primitives, prefix, fromRevision, reconnect, cluster), (watch) =>
      Stream.repeatEffectChunk(Effect.map(watch.take, (events) => Chunk.unsafeFromArray(events)))
    )
  )

type OpenWatchOf = (
  prefix: string,
  fromRevision: number,
  reconnect: Schedule.Schedule<unknown, EtcdError> | undefined,
  cluster: string | undefined
) => Effect.Effect<WatchBatches, never, Scope.Scope>

/** Where an EtcdClient made by {@link fromPrimitives} keeps its {@link openWatch}, with the `watch` it stands for. */
const OpenWatch: unique symbol = Symbol.for("effect-sd-etcd/EtcdClient/openWatch")

interface OpenWatchDirect {
  readonly watch: EtcdClient["watch"]
  readonly openWatch: OpenWatchOf
}

/**
 * The watch of `client` read batch by batch: {@link openWatch} directly for a
 * client made here, its `watch` stream for any other implementation (a test
 * double, a wrapper that spreads a client or replaces its `watch`, by a
 * prototype or a proxy).
 */
export const watchBatches = (
  client: EtcdClient,
  prefix: string,
  options: WatchOptions
): Effect.Effect<WatchBatches, never, Scope.Scope> => {
  const direct = (client as { readonly [OpenWatch]?: OpenWatchDirect })[OpenWatch]
  if (direct !== undefined && client.watch === direct.watch) {
    return direct.openWatch(prefix, options.fromRevision, options.reconnect, options.cluster)
  }
  return Effect.map(Stream.toPull(client.watch(prefix, options)), (pull) => {
    const take = Effect.mapBoth(pull, {
      onFailure: Option.getOrElse(
        () => new EtcdError({ operation: "watch", reason: "Canceled", detail: "the watch ended" })
      ),
      onSuccess: (chunk) => Chunk.toReadonlyArray(chunk)
    })
    return { take, follow: followTaken(take) }
  })
}

/** Builds the whole service from the primitives. */
export const fromPrimitives = (primitives: Primitives): Effect.Effect<EtcdClient> =>
  Effect.gen(function* () {
    // leases granted by `register`, by key: `deregister` revokes them (go-kit leaks them)
    const registered = yield* Ref.make(new Map<string, LeaseId>())

    const getEntries = (prefix: string) =>
      Effect.map(primitives.list(normalizePrefix(prefix)), (listing) => listing.entries.map((kv) => kv.value))

    const watchPrefix = (prefix: string): Stream.Stream<void, EtcdError> =>
      Stream.unwrap(
        Effect.map(revisionOf(primitives, normalizePrefix(prefix)), (revision) =>
          Stream.concat(
            Stream.succeed(undefined),
            reconnectingWatch(primitives, normalizePrefix(prefix), revision + 1).pipe(
              Stream.filter((e) => e._tag === "Put" || e._tag === "Delete"),
              // one signal per batch of changes (a revision, or what one watch response carried)
              Stream.mapChunks((changes) => (Chunk.isEmpty(changes) ? Chunk.empty<void>() : Chunk.of<void>(undefined)))
            )
          )
        )
      )

    const register: EtcdClient["register"] = (service) =>
      Effect.gen(function* () {
        if (service.key.length === 0) return yield* new NoKey()
        if (service.value.length === 0) return yield* new NoValue()
        if (service.ttl === undefined) {
          yield* primitives.put(service.key, service.value)
          return Option.none()
        }
        const lease = yield* primitives.grant(service.ttl.ttlSeconds)
        yield* primitives
          .put(service.key, service.value, { lease })
          .pipe(Effect.tapError(() => Effect.ignore(primitives.revoke(lease))))
        const previous = yield* Ref.modify(registered, (m) => {
          const prev = m.get(service.key)
          const copy = new Map(m)
          copy.set(service.key, lease)
          return [prev, copy] as const
        })
        if (previous !== undefined) yield* Effect.ignore(primitives.revoke(previous))
        return Option.some(lease)
      })

    const deregister: EtcdClient["deregister"] = (service) =>
      Effect.gen(function* () {
        if (service.key.length === 0) return yield* new NoKey()
        yield* primitives.delete(service.key)
        const lease = yield* Ref.modify(registered, (m) => {
          const l = m.get(service.key)
          if (l === undefined) return [undefined, m] as const
          const copy = new Map(m)
          copy.delete(service.key)
          return [l, copy] as const
        })
        if (lease !== undefined) {
          yield* primitives.revoke(lease).pipe(
            Effect.catchIf(
              (e) => e.reason === "LeaseNotFound",
              () => Effect.void
            )
          )
        }
      })

    const client = {
      getEntries,
      watchPrefix,
      register,
      deregister,
      grant: primitives.grant,
      keepAliveOnce: primitives.keepAliveOnce,
      revoke: primitives.revoke,
      put: primitives.put,
      get: primitives.get,
      delete: primitives.delete,
      list: primitives.list,
      watch: (prefix, options) =>
        reconnectingWatch(primitives, prefix, options.fromRevision, options.reconnect, options.cluster),
      compact: primitives.compact,
      revision: primitives.revision
    } satisfies EtcdClient
    // not enumerable: a client spread into a wrapper (which may change `watch`) uses that `watch`
    const direct: OpenWatchDirect = {
      watch: client.watch,
      openWatch: (prefix, fromRevision, reconnect, cluster) =>
        openWatch(primitives, prefix, fromRevision, reconnect, cluster)
    }
    Object.defineProperty(client, OpenWatch, { value: direct })
    if (primitives.grantAndPut !== undefined) {
      const value: GrantAndPutDirect = { grant: client.grant, put: client.put, grantAndPut: primitives.grantAndPut }
      Object.defineProperty(client, GrantAndPut, { value })
    }
    if (primitives.revokeNow !== undefined) {
      const value: RevokeNowDirect = { revoke: client.revoke, revokeNow: primitives.revokeNow }
      Object.defineProperty(client, RevokeNow, { value })
    }
    return client
  })
