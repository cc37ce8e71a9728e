/**
 * The parts of the EtcdClient that both implementations share: go-kit's
 * surface and the self-reconnecting watch, built on a few primitives.
 *
 * @internal
 */
import * as Chunk from "effect/Chunk"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Option from "effect/Option"
import * as Ref from "effect/Ref"
import * as Schedule from "effect/Schedule"
import * as Stream from "effect/Stream"
import type { EtcdClient, LeaseId, WatchEvent } from "../EtcdClient.js"
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

/**
 * What an implementation provides. `watchOnce` is one watch connection: it
 * emits `Created` (with the store revision and the cluster id) first, then the changes from
 * `fromRevision` in order; it fails with `Unavailable` when the connection is
 * lost and with the cancel reason when etcd cancels the watch.
 */
export interface Primitives extends Pick<
  EtcdClient,
  "grant" | "keepAliveOnce" | "revoke" | "put" | "get" | "delete" | "list" | "compact" | "revision"
> {
  readonly watchOnce: (prefix: string, fromRevision: number) => Stream.Stream<RawWatchEvent, EtcdError>
}

/** The default reconnect schedule of a watch: jittered exponential from 100 ms, capped at 2 s, forever. */
export const defaultReconnect: Schedule.Schedule<unknown, EtcdError> = Schedule.exponential("100 millis").pipe(
  Schedule.either(Schedule.spaced("2 seconds")),
  Schedule.jittered
)

/** Whether a watch failure is transient (reconnect) or terminal (the caller must list again). */
export const isTransient = (error: EtcdError): boolean => error.reason === "Unavailable" || error.reason === "Timeout"

/**
 * A watch that reconnects by itself from the last revision seen. Emits
 * `Disconnected` on a transient failure and `Reconnected` when live again. Fails
 * with `Rewound` when, on reconnecting, the cluster is another one (a wiped or
 * replaced cluster has a new cluster id, whatever its revision has reached by
 * then), or when the store revision is behind a revision this watch has already
 * been promised. A member that merely lags behind answers with its own older
 * revision: a linearizable read of the revision tells it apart from a store
 * that went back. A resumed watch is complete or fails with `Compacted`: it
 * never skips the deletes of a compacted revision.
 */
export const reconnectingWatch = (
  primitives: Primitives,
  prefix: string,
  fromRevision: number,
  reconnect: Schedule.Schedule<unknown, EtcdError> = defaultReconnect
): Stream.Stream<WatchEvent, EtcdError> =>
  Stream.unwrap(
    Effect.map(Schedule.driver(Schedule.whileInput(reconnect, isTransient)), (driver) => {
      // the watch's state, touched only by this stream's fiber: plain variables, not Refs,
      // because every chunk of every event goes through here
      let next = fromRevision // the next revision to deliver
      let disconnected = false
      let cluster: string | undefined = undefined // the cluster followed, from the first connection on

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
            const current = yield* primitives.revision
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

      const connection = (from: number, start: number): Stream.Stream<WatchEvent, EtcdError> =>
        primitives.watchOnce(prefix, start).pipe(
          Stream.mapChunksEffect((chunk): Effect.Effect<Chunk.Chunk<WatchEvent>, EtcdError> => {
            let check: Effect.Effect<void, EtcdError> | undefined = undefined
            const out: Array<WatchEvent> = []
            for (const event of chunk) {
              if (event._tag === "Created") {
                check = created(event, from)
                if (disconnected) {
                  disconnected = false
                  out.push({ _tag: "Reconnected", revision: event.revision })
                }
              } else if (event.revision >= from) {
                out.push(event)
                next = event.revision + 1
              }
            }
            const result = Chunk.unsafeFromArray(out)
            // the common case, a chunk of changes, costs no effect at all
            return check === undefined ? Exit.succeed(result) : Effect.as(check, result)
          })
        )

      const loop: Stream.Stream<WatchEvent, EtcdError> = Stream.suspend(() => {
        const from = next
        // etcd keeps revision C readable after a compaction at C, but drops the tombstones of
        // its deletes: a watch resumed from exactly C would be accepted and miss them for good.
        // Resuming one revision early (and dropping what was delivered already) turns that case
        // into Compacted, so that the caller lists again.
        const start = cluster !== undefined && from > 1 ? from - 1 : from
        return connection(from, start).pipe(
          Stream.catchAll((error) => {
            if (!isTransient(error)) return Stream.fail(error)
            // announce an outage once; then reconnect as the schedule says, from the last revision seen
            const announce = disconnected ? Stream.empty : Stream.succeed<WatchEvent>({ _tag: "Disconnected", error })
            disconnected = true
            return Stream.concat(
              announce,
              Stream.unwrap(
                Effect.match(driver.next(error), {
                  onFailure: () => Stream.fail(error),
                  onSuccess: () => loop
                })
              )
            )
          })
        )
      })
      return loop
    })
  )

/** Builds the whole service from the primitives. */
export const fromPrimitives = (primitives: Primitives): Effect.Effect<EtcdClient> =>
  Effect.gen(function* () {
    // leases granted by `register`, by key: `deregister` revokes them (go-kit leaks them)
    const registered = yield* Ref.make(new Map<string, LeaseId>())

    const getEntries = (prefix: string) =>
      Effect.map(primitives.list(normalizePrefix(prefix)), (listing) => listing.entries.map((kv) => kv.value))

    const watchPrefix = (prefix: string): Stream.Stream<void, EtcdError> =>
      Stream.unwrap(
        Effect.map(primitives.revision, (revision) =>
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

    return {
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
      watch: (prefix, options) => reconnectingWatch(primitives, prefix, options.fromRevision, options.reconnect),
      compact: primitives.compact,
      revision: primitives.revision
    } satisfies EtcdClient
  })
