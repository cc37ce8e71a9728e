/**
 * The in-memory etcd: one store with etcd 3.4's revision, lease, watch and
 * compaction semantics, reading time through the Effect `Clock` (so `TestClock`
 * drives lease expiry), plus the fault controls of `MemoryEtcd`.
 *
 * Behaviour, checked against etcd 3.4.23:
 *
 * - An empty store is at revision 1. Every put, every delete of an existing key and
 *   every lease revocation that deletes keys makes one new revision; a revoked or
 *   expired lease deletes all its keys at that one revision, in key byte order.
 *   Deleting a missing key, or revoking a lease without keys, makes none.
 * - Keys are listed in UTF-8 byte order, as etcd stores them.
 * - Leases: a TTL is rounded up to whole seconds and raised to etcd's minimum lease
 *   TTL of 2 s (what etcd grants with its default 100 ms heartbeat and 1 s election
 *   timeout: `lease grant 1` answers `TTL(2s)`). A lease expires when the clock
 *   reaches its deadline; `keepAliveOnce` moves the deadline to now + TTL.
 *   Ids are decimal strings of positive 63-bit integers, never reused by one store.
 * - A watch is handed each revision's changes under its prefix together, as etcd
 *   sends a revision's events in one watch response (the deletes of an expired
 *   lease are one batch). The client's watch hands over everything delivered
 *   since it was last read as one batch, so `watchPrefix`'s signals coalesce.
 * - Compaction at `C` keeps revision `C` readable: a watch from `C` still gets the
 *   puts of revision `C` (not its deletes, whose tombstones etcd drops), a watch
 *   from below `C` fails with `Compacted`.
 * - Outages (`setUnavailable` until `restore`): the faulty client fails every
 *   request with `Unavailable` and its open watches fail with `Unavailable`; the
 *   control's `client` keeps working. Time keeps running, but no lease expires
 *   during an outage, and `restore` gives every lease a full TTL again: a
 *   restarted etcd (or a new leader) refreshes every lease it recovers. Simulate a
 *   lease that did expire with `loseLease`.
 * - `wipe` drops every key, lease and revision (a replaced cluster, at revision 1,
 *   nothing compacted, with a new cluster id) and fails every open watch with
 *   `Unavailable`, so that reconnecting watches see another cluster and fail with
 *   `Rewound`. The `keepAliveCount` is not reset.
 *
 * @internal
 */
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Option from "effect/Option"
import * as Queue from "effect/Queue"
import * as Random from "effect/Random"
import type * as Scope from "effect/Scope"
import type { EtcdClient, KeyValue, LeaseId, MemoryEtcdControl } from "../EtcdClient.js"
import { EtcdError, type EtcdErrorReason } from "../EtcdError.js"
import { fromPrimitives, type Primitives, type RawWatchEvent, type WatchSink } from "./client.js"

/** What a closed in-memory etcd answers every request with (`Unavailable`). */
export const closedDetail = "the in-memory etcd is closed"

/** The smallest lease TTL etcd 3.4 grants with its default timing flags, in seconds. */
export const minLeaseTtlSeconds = 2

/** The largest lease TTL etcd accepts, in seconds (`MaxLeaseTTL`). */
export const maxLeaseTtlSeconds = 9_000_000_000

type Change = Extract<RawWatchEvent, { readonly _tag: "Put" | "Delete" }>

interface StoredValue {
  readonly value: string
  readonly createRevision: number
  readonly modRevision: number
  readonly lease: LeaseId | undefined
}

interface Lease {
  readonly id: LeaseId
  readonly ttl: number
  deadline: number
  readonly keys: Set<string>
}

/** The changes of one revision, as kept in the history. */
interface LogEntry {
  readonly revision: number
  changes: ReadonlyArray<Change>
}

interface Watcher {
  readonly prefix: string
  /** The first revision to deliver. */
  readonly from: number
  /** Whether outages reach it (a watch of the faulty client). */
  readonly faulty: boolean
  readonly sink: WatchSink
}

/**
 * Compares two keys in the byte order of their UTF-8 encodings (that is, by
 * code point), which is etcd's key order. UTF-16 order differs: it puts
 * characters above U+FFFF (surrogate pairs) before U+E000..U+FFFF.
 */
const compareKeys = (a: string, b: string): number => {
  const n = Math.min(a.length, b.length)
  for (let i = 0; i < n; i++) {
    const x = a.charCodeAt(i)
    const y = b.charCodeAt(i)
    if (x !== y) return codePointRank(x) - codePointRank(y)
  }
  return a.length - b.length
}

// moves surrogates (code points above U+FFFF) after U+E000..U+FFFF
const codePointRank = (unit: number): number => (unit < 0xd800 ? unit : unit >= 0xe000 ? unit - 0x800 : unit + 0x2000)

/** The first index of `sorted` whose element is not `below` (those that are come first). */
const lowerBound = <A>(sorted: ReadonlyArray<A>, below: (a: A) => boolean): number => {
  let lo = 0
  let hi = sorted.length
  while (lo < hi) {
    const mid = (lo + hi) >>> 1
    if (below(sorted[mid] as A)) lo = mid + 1
    else hi = mid
  }
  return lo
}

const error = (operation: string, reason: EtcdErrorReason, detail: string): EtcdError =>
  new EtcdError({ operation, reason, detail })

const leaseNotFound = (operation: string) => error(operation, "LeaseNotFound", "etcdserver: requested lease not found")
const emptyKey = (operation: string) => error(operation, "Other", "etcdserver: key is not provided")

/**
 * Builds an in-memory etcd and its controls. The lease-expiry fiber lives in the
 * scope; closing the scope cancels open watches (`Canceled`) and makes every
 * later request fail with `Unavailable`.
 */
export const make: Effect.Effect<
  { readonly client: EtcdClient; readonly control: MemoryEtcdControl },
  never,
  Scope.Scope
> = Effect.gen(function* () {
  const clock = yield* Effect.clock
  // etcd builds lease ids from its member id and a counter; a random high half does the same job
  const leaseIdBase = BigInt(yield* Random.nextIntBetween(1, 2 ** 30)) << 32n
  let leaseCounter = 0

  // ---- state: only ever touched inside synchronous blocks, so every operation is atomic ----
  let revision = 1
  // the compacted revision; -1 before the first compaction (etcd's compactMainRev), so that compacting 0 works
  let compacted = -1
  /** The cluster id: a wiped store is another cluster. */
  let cluster = 1
  const values = new Map<string, StoredValue>()
  let sortedKeys: Array<string> = []
  const leases = new Map<LeaseId, Lease>()
  /** A lower bound of every lease deadline (keep-alives only move deadlines later). */
  let earliestDeadline = Infinity
  let log: Array<LogEntry> = []
  const watchers = new Set<Watcher>()
  let unavailable = false
  let closed = false
  let keepAlives = 0

  // wakes the expiry fiber when a lease may now expire earlier than it is sleeping for
  const wake = yield* Queue.sliding<void>(1)
  const signalExpiry = () => {
    wake.unsafeOffer(undefined)
  }

  const insertKey = (key: string) => {
    const i = lowerBound(sortedKeys, (k) => compareKeys(k, key) < 0)
    if (sortedKeys[i] !== key) sortedKeys.splice(i, 0, key)
  }

  const removeKey = (key: string) => {
    const stored = values.get(key)
    if (stored === undefined) return
    values.delete(key)
    if (stored.lease !== undefined) leases.get(stored.lease)?.keys.delete(key)
    const i = lowerBound(sortedKeys, (k) => compareKeys(k, key) < 0)
    if (sortedKeys[i] === key) sortedKeys.splice(i, 1)
  }

  const deliver = (watcher: Watcher, entry: LogEntry) => {
    if (entry.revision < watcher.from) return
    const events = entry.changes.filter((change) => change.key.startsWith(watcher.prefix))
    if (events.length > 0) watcher.sink.events(events)
  }

  /** Records the changes of a new revision and hands them to the watchers. */
  const commit = (changes: ReadonlyArray<Change>) => {
    const entry: LogEntry = { revision, changes }
    log.push(entry)
    for (const watcher of watchers) deliver(watcher, entry)
  }

  const failWatchers = (which: (watcher: Watcher) => boolean, failure: EtcdError) => {
    for (const watcher of [...watchers]) {
      if (which(watcher)) {
        watchers.delete(watcher)
        watcher.sink.fail(failure)
      }
    }
  }

  /** Revokes a lease: deletes its keys in one revision, as etcd's lessor does. */
  const revokeLease = (lease: Lease) => {
    leases.delete(lease.id)
    const keys = [...lease.keys].sort(compareKeys)
    if (keys.length === 0) return
    revision += 1
    for (const key of keys) removeKey(key)
    commit(keys.map((key): Change => ({ _tag: "Delete", key, revision })))
  }

  /** Revokes every lease whose deadline has passed, earliest first. Nothing expires during an outage. */
  const expireDue = (now: number) => {
    if (unavailable || now < earliestDeadline) return
    const due: Array<Lease> = []
    let earliest = Infinity
    for (const lease of leases.values()) {
      if (lease.deadline <= now) due.push(lease)
      else earliest = Math.min(earliest, lease.deadline)
    }
    earliestDeadline = earliest
    due.sort((a, b) => a.deadline - b.deadline || compareKeys(a.id, b.id))
    for (const lease of due) revokeLease(lease)
  }

  /**
   * One request: fails with `Unavailable` during an outage (unless `faulty` is
   * false), expires due leases, then runs `body` without yielding.
   */
  const request = <A>(
    operation: string,
    faulty: boolean,
    body: (now: number) => Effect.Effect<A, EtcdError>
  ): Effect.Effect<A, EtcdError> =>
    Effect.suspend(() => {
      if (closed) return Effect.fail(error(operation, "Unavailable", closedDetail))
      if (faulty && unavailable) {
        return Effect.fail(
          error(operation, "Unavailable", "the in-memory etcd is unavailable (MemoryEtcd.setUnavailable)")
        )
      }
      const now = clock.unsafeCurrentTimeMillis()
      expireDue(now)
      return body(now)
    })

  /**
   * Registers a watcher, handing its sink `Created` and the history from
   * `fromRevision` first; or fails the sink and registers nothing.
   */
  const openWatch = (prefix: string, fromRevision: number, faulty: boolean, sink: WatchSink): Watcher | undefined => {
    const fail = (failure: EtcdError) => {
      sink.fail(failure)
      return undefined
    }
    if (closed) return fail(error("watch", "Unavailable", closedDetail))
    if (faulty && unavailable) {
      return fail(error("watch", "Unavailable", "the in-memory etcd is unavailable (MemoryEtcd.setUnavailable)"))
    }
    expireDue(clock.unsafeCurrentTimeMillis())
    sink.events([{ _tag: "Created", revision, cluster: String(cluster) }])
    // etcd: a watch from below the compacted revision is canceled; revision 0 means "from now"
    if (fromRevision > 0 && fromRevision < compacted) {
      return fail(
        error(
          "watch",
          "Compacted",
          `etcdserver: mvcc: required revision has been compacted (watch from ${fromRevision}, compacted at ${compacted})`
        )
      )
    }
    const watcher: Watcher = { prefix, from: fromRevision > 0 ? fromRevision : revision + 1, faulty, sink }
    for (let i = lowerBound(log, (entry) => entry.revision < watcher.from); i < log.length; i++) {
      deliver(watcher, log[i] as LogEntry)
    }
    watchers.add(watcher)
    return watcher
  }

  const watchOnce =
    (faulty: boolean) =>
    (prefix: string, fromRevision: number, sink: WatchSink): Effect.Effect<() => void> =>
      Effect.sync(() => {
        const watcher = openWatch(prefix, fromRevision, faulty, sink)
        return () => {
          if (watcher !== undefined) watchers.delete(watcher)
        }
      })

  const primitives = (faulty: boolean): Primitives => ({
    grant: (ttlSeconds) =>
      request("grant", faulty, (now) => {
        // as the real client: etcd's TTL is a whole number of seconds
        if (!(Number.isInteger(ttlSeconds) && ttlSeconds > 0)) {
          return Effect.fail(error("grant", "Other", "TTL must be a positive integer"))
        }
        const ttl = Math.max(minLeaseTtlSeconds, ttlSeconds)
        if (!(ttl <= maxLeaseTtlSeconds)) {
          return Effect.fail(error("grant", "Other", `etcdserver: too large lease TTL (${ttlSeconds})`))
        }
        leaseCounter += 1
        const id = String(leaseIdBase + BigInt(leaseCounter))
        const deadline = now + ttl * 1000
        leases.set(id, { id, ttl, deadline, keys: new Set() })
        if (deadline < earliestDeadline) {
          earliestDeadline = deadline
          signalExpiry()
        }
        return Effect.succeed(id)
      }),

    keepAliveOnce: (id) =>
      request("keepAliveOnce", faulty, (now) => {
        const lease = leases.get(id)
        if (lease === undefined) return Effect.fail(leaseNotFound("keepAliveOnce"))
        lease.deadline = now + lease.ttl * 1000
        keepAlives += 1
        return Effect.succeed(lease.ttl)
      }),

    revoke: (id) =>
      request("revoke", faulty, () => {
        const lease = leases.get(id)
        if (lease === undefined) return Effect.fail(leaseNotFound("revoke"))
        revokeLease(lease)
        return Effect.void
      }),

    put: (key, value, options) =>
      request("put", faulty, () => {
        if (key.length === 0) return Effect.fail(emptyKey("put"))
        // etcd: lease 0 is "no lease"
        const leaseId = options?.lease === undefined || options.lease === "0" ? undefined : options.lease
        const lease = leaseId === undefined ? undefined : leases.get(leaseId)
        if (leaseId !== undefined && lease === undefined) return Effect.fail(leaseNotFound("put"))
        revision += 1
        const previous = values.get(key)
        if (previous === undefined) insertKey(key)
        else if (previous.lease !== undefined) leases.get(previous.lease)?.keys.delete(key)
        values.set(key, {
          value,
          createRevision: previous?.createRevision ?? revision,
          modRevision: revision,
          lease: leaseId
        })
        lease?.keys.add(key)
        commit([{ _tag: "Put", key, value, malformed: false, revision, lease: leaseId }])
        return Effect.succeed(revision)
      }),

    get: (key) =>
      request("get", faulty, () => {
        if (key.length === 0) return Effect.fail(emptyKey("get"))
        const stored = values.get(key)
        return Effect.succeed(stored === undefined ? Option.none() : Option.some(toKeyValue(key, stored)))
      }),

    delete: (key) =>
      request("delete", faulty, () => {
        if (key.length === 0) return Effect.fail(emptyKey("delete"))
        if (!values.has(key)) return Effect.succeed({ deleted: 0, revision })
        revision += 1
        removeKey(key)
        commit([{ _tag: "Delete", key, revision }])
        return Effect.succeed({ deleted: 1, revision })
      }),

    list: (prefix) =>
      request("list", faulty, () => {
        const entries: Array<KeyValue> = []
        for (let i = lowerBound(sortedKeys, (k) => compareKeys(k, prefix) < 0); i < sortedKeys.length; i++) {
          const key = sortedKeys[i] as string
          if (!key.startsWith(prefix)) break
          entries.push(toKeyValue(key, values.get(key) as StoredValue))
        }
        return Effect.succeed({ revision, entries, cluster: String(cluster) })
      }),

    watchOnce: watchOnce(faulty),

    compact: (target) =>
      request("compact", faulty, () => {
        if (target > revision) {
          return Effect.fail(error("compact", "Other", "etcdserver: mvcc: required revision is a future revision"))
        }
        if (target <= compacted) {
          return Effect.fail(error("compact", "Compacted", "etcdserver: mvcc: required revision has been compacted"))
        }
        compacted = target
        log = log.slice(lowerBound(log, (entry) => entry.revision < target))
        // etcd keeps the puts of the compacted revision but drops its tombstones
        const first = log[0]
        if (first !== undefined && first.revision === target) {
          first.changes = first.changes.filter((change) => change._tag === "Put")
        }
        return Effect.void
      }),

    revision: request("revision", faulty, () => Effect.succeed(revision))
  })

  // ---- lease expiry on the clock ----
  yield* Effect.forkScoped(
    Effect.forever(
      Effect.suspend(() => {
        const now = clock.unsafeCurrentTimeMillis()
        expireDue(now)
        // after expireDue, every remaining deadline is later than now
        const next = unavailable || closed ? Infinity : earliestDeadline
        // at least 1 ns: with a fractional clock (jittered schedules under TestClock) a deadline can be
        // less than a nanosecond away, a sleep of 0 ns, and this loop would wake at the same time forever
        return next === Infinity
          ? Queue.take(wake)
          : Effect.race(clock.sleep(Duration.millis(Math.max(next - now, 1e-6))), Queue.take(wake))
      })
    )
  )

  yield* Effect.addFinalizer(() =>
    Effect.sync(() => {
      closed = true
      failWatchers(() => true, error("watch", "Canceled", "the in-memory etcd was closed"))
    })
  )

  const client = yield* fromPrimitives(primitives(true))
  const direct = yield* fromPrimitives(primitives(false))

  const control: MemoryEtcdControl = {
    setUnavailable: Effect.sync(() => {
      if (unavailable) return
      expireDue(clock.unsafeCurrentTimeMillis())
      unavailable = true
      failWatchers(
        (watcher) => watcher.faulty,
        error("watch", "Unavailable", "the in-memory etcd is unavailable (MemoryEtcd.setUnavailable)")
      )
    }),
    restore: Effect.sync(() => {
      if (!unavailable) return
      unavailable = false
      // a restarted etcd refreshes every lease it recovers
      const now = clock.unsafeCurrentTimeMillis()
      earliestDeadline = Infinity
      for (const lease of leases.values()) {
        lease.deadline = now + lease.ttl * 1000
        earliestDeadline = Math.min(earliestDeadline, lease.deadline)
      }
      signalExpiry()
    }),
    loseLease: (id) =>
      Effect.sync(() => {
        const lease = leases.get(id)
        if (lease !== undefined) revokeLease(lease)
      }),
    leases: Effect.sync(() => {
      expireDue(clock.unsafeCurrentTimeMillis())
      return new Map([...leases.values()].map((lease) => [lease.id, lease.ttl] as const))
    }),
    keepAliveCount: Effect.sync(() => keepAlives),
    wipe: Effect.sync(() => {
      cluster += 1
      revision = 1
      compacted = -1
      values.clear()
      sortedKeys = []
      leases.clear()
      earliestDeadline = Infinity
      log = []
      failWatchers(() => true, error("watch", "Unavailable", "the in-memory etcd was wiped"))
    }),
    client: direct
  }

  return { client, control }
})

const toKeyValue = (key: string, stored: StoredValue): KeyValue => ({
  key,
  value: stored.value,
  malformed: false,
  createRevision: stored.createRevision,
  modRevision: stored.modRevision,
  lease: stored.lease
})
