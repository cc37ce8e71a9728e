/**
 * Shared leases: every registration of one `EtcdClient` with the same TTL option
 * rides on one lease, kept alive by one heartbeat fiber, like etcd's
 * concurrency `Session`. Keep-alive traffic is one request per heartbeat per TTL
 * option, whatever the number of registrations, and registering is one `put`.
 *
 * A group holds the registrations (members) of one TTL option, behind a
 * shared / exclusive lock. Joining on a live lease and putting back a deleted
 * key take it shared (so registrations run concurrently); losing the lease,
 * re-granting it, a join that needs a new lease, and leaving take it
 * exclusive. A member is re-put only while it is in its group, and leaving
 * removes it under the exclusive lock before anything is sent to etcd, so
 * nothing ever re-registers a deregistered key (kratos #3180).
 *
 * @internal
 */
import * as Cause from "effect/Cause"
import * as Clock from "effect/Clock"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import * as Exit from "effect/Exit"
import * as Fiber from "effect/Fiber"
import { globalValue } from "effect/GlobalValue"
import * as Metric from "effect/Metric"
import * as Option from "effect/Option"
import * as Schedule from "effect/Schedule"
import * as Scope from "effect/Scope"
import * as Stream from "effect/Stream"
import type { EtcdClient, LeaseId } from "../EtcdClient.js"
import { EtcdError } from "../EtcdError.js"
import { closedDetail } from "./memory.js"
import { grantAndPut, isTransient, revokeNow } from "./client.js"
import { Lock } from "./lock.js"
import type { TtlOption } from "../TtlOption.js"
import { inNextTurn } from "./nextTurn.js"
import type { StateCell } from "./registrarState.js"
import { RegistrationState } from "./registrarState.js"

// ---- metrics ----

/** Successful registrations (initial ones, not re-registrations). */
export const registrations = Metric.counter("effect_sd_etcd_registrations", {
  description: "services registered in etcd",
  incremental: true
})
/** Deregistrations. */
export const deregistrations = Metric.counter("effect_sd_etcd_deregistrations", {
  description: "services deregistered from etcd",
  incremental: true
})
/** Failed keep-alive requests. */
export const heartbeatFailures = Metric.counter("effect_sd_etcd_heartbeat_failures", {
  description: "lease keep-alive requests that failed",
  incremental: true
})
/** Leases found lost (revoked, expired, or unrenewed for a whole TTL). */
export const leasesLost = Metric.counter("effect_sd_etcd_leases_lost", {
  description: "registration leases lost",
  incremental: true
})
/** Keys put again after their lease was lost or they were deleted. */
export const reRegistrations = Metric.counter("effect_sd_etcd_re_registrations", {
  description: "keys put again by self-healing",
  incremental: true
})

// ---- model ----

/** The key and value a member puts. */
export interface Entry {
  readonly key: string
  readonly value: string
}

/** One registration's part of a group. Mutable fields change under the group lock. */
export interface Member {
  readonly entry: Entry
  readonly state: StateCell
  /** The revision of the last put of this key by this member. */
  lastPut: number
  /** The group it joined (set the moment it joins, so an interrupted register can undo it). */
  group: Group | undefined
}

interface Lease {
  readonly id: LeaseId
  /** When the last successful keep-alive was sent (Clock millis). */
  lastOk: number
  /** When the last successful keep-alive (or the grant) was answered (Clock millis). */
  lastAnswered: number
}

/** The registrations of one client with one TTL option (or without TTL). */
export interface Group {
  readonly client: EtcdClient
  readonly name: string
  readonly ttl: TtlOption | undefined
  readonly lock: GroupLock
  /** Holds the heartbeat, the healer and background deletes; closed with the last member. */
  readonly scope: Scope.CloseableScope
  readonly members: Set<Member>
  /** The watches of the members' keys, one per directory (see {@link dirOf}). */
  readonly dirs: Map<string, DirWatch>
  /** The live lease; undefined when there is none yet or it is lost. */
  lease: Lease | undefined
  /** A lease given up after a whole TTL without keep-alive: revoked once a new one holds the keys. */
  abandoned: LeaseId | undefined
  healing: boolean
  closed: boolean
  /**
   * Whether the group's last request to etcd went unanswered (a transient
   * failure: unreachable, timed out); cleared by the next answer. A
   * deregistration then does not wait on etcd for a key its lease removes (see
   * {@link leave}).
   */
  unreachable: boolean
  /** Whether the heartbeat runs: it starts with the first member, after its put (off the registration's path). */
  beating: boolean
}

/** The groups of each client instance. Sharing never crosses clients. */
const registries = globalValue(
  Symbol.for("effect-sd-etcd/Registrar/groups"),
  () => new WeakMap<EtcdClient, Map<string, Group>>()
)

const registryOf = (client: EtcdClient): Map<string, Group> => {
  let registry = registries.get(client)
  if (registry === undefined) {
    registry = new Map()
    registries.set(client, registry)
  }
  return registry
}

const groupName = (ttl: TtlOption | undefined): string =>
  ttl === undefined ? "none" : `${Duration.toMillis(ttl.heartbeat)}ms/${ttl.ttlSeconds}s`

/**
 * Retries of self-healing: jittered exponential backoff from 200 ms, capped at
 * 2 s (±20 % jitter), forever.
 */
export const healSchedule: Schedule.Schedule<unknown> = Schedule.exponential("200 millis").pipe(
  Schedule.either(Schedule.spaced("2 seconds")),
  Schedule.jittered
)

const describeKeys = (members: Iterable<Member>): string => {
  const keys = Array.from(members, (m) => m.entry.key)
  return keys.length <= 3 ? keys.join(", ") : `${keys.slice(0, 3).join(", ")} (+${keys.length - 3} more)`
}

const setAll = (members: Iterable<Member>, state: RegistrationState): Effect.Effect<void> =>
  Effect.forEach(members, (m) => m.state.set(state), { discard: true })

// ---- the group lock ----

/** A shared / exclusive lock: shared holders side by side, or one exclusive holder alone. */
interface GroupLock {
  readonly shared: <A, E, R>(self: Effect.Effect<A, E, R>) => Effect.Effect<A, E, R>
  readonly exclusive: <A, E, R>(self: Effect.Effect<A, E, R>) => Effect.Effect<A, E, R>
  /** Takes the exclusive lock at once when nobody holds the lock; says whether it did. */
  readonly tryExclusive: () => boolean
  /** Gives back the exclusive lock taken by `tryExclusive`. */
  readonly releaseExclusive: () => void
}

const allPermits = 1_000_000_000

const makeLock = (): GroupLock => {
  const lock = new Lock(allPermits)
  return {
    shared: lock.withPermits(1),
    exclusive: lock.withPermits(allPermits),
    tryExclusive: () => lock.tryTake(allPermits),
    releaseExclusive: () => lock.release(allPermits)
  }
}

// ---- groups ----

/** The open group of this client and TTL option, created (with its heartbeat) if needed. */
const groupFor = (client: EtcdClient, ttl: TtlOption | undefined): Effect.Effect<Group> =>
  Effect.gen(function* () {
    const registry = registryOf(client)
    const name = groupName(ttl)
    const existing = registry.get(name)
    if (existing !== undefined && !existing.closed) return existing
    const scope = yield* Scope.make()
    const lock = makeLock()
    const raced = registry.get(name)
    if (raced !== undefined && !raced.closed) {
      yield* Scope.close(scope, Exit.void)
      return raced
    }
    const group: Group = {
      client,
      name,
      ttl,
      lock,
      scope,
      members: new Set(),
      dirs: new Map(),
      lease: undefined,
      abandoned: undefined,
      healing: false,
      closed: false,
      unreachable: false,
      beating: false
    }
    registry.set(name, group)
    return group
  })

/** Marks a group closed, stops its fibers, and forgets it. Call under the exclusive lock. */
const closeGroup = (group: Group): Effect.Effect<void> =>
  Effect.gen(function* () {
    group.closed = true
    const registry = registryOf(group.client)
    if (registry.get(group.name) === group) registry.delete(group.name)
    yield* Scope.close(group.scope, Exit.void)
  })

// ---- heartbeat ----

const heartbeat = (group: Group, ttl: TtlOption): Effect.Effect<void> => {
  const ttlMillis = ttl.ttlSeconds * 1000
  const beat = Effect.gen(function* () {
    const lease = group.lease
    if (lease === undefined) return // lost: the healer is at work
    const sentAt = yield* Clock.currentTimeMillis
    // bounded by the time the lease has left: a keep-alive answered later is too late, and meanwhile
    // the state would say Registered while etcd has deleted the keys
    // (counted from the last answer: etcd renewed the lease somewhere between sending and answering,
    // and a bound from the sending would give up on answers that come slowly but in time)
    // plus a heartbeat: an answer held up a moment (a stalled connection, a pause of this process)
    // may still say the lease lives, and giving up on it would re-grant a live lease
    const left = Math.max(0, lease.lastAnswered + ttlMillis + Duration.toMillis(ttl.heartbeat) - sentAt)
    const result = yield* Effect.either(
      Effect.timeoutFail(group.client.keepAliveOnce(lease.id), {
        duration: Duration.millis(left),
        onTimeout: () =>
          new EtcdError({
            operation: "keepAlive",
            reason: "Timeout",
            detail: `no answer before the lease's TTL ran out (${ttl.ttlSeconds} s after the last keep-alive was answered)`
          })
      })
    )
    if (Either.isRight(result)) {
      group.unreachable = false
      if (group.lease === lease) {
        lease.lastOk = sentAt
        lease.lastAnswered = yield* Clock.currentTimeMillis
      }
      return
    }
    const error = result.left
    group.unreachable = isTransient(error)
    yield* Metric.increment(heartbeatFailures)
    if (error.reason === "LeaseNotFound") {
      return yield* group.lock.exclusive(leaseLost(group, lease.id, error))
    }
    const now = yield* Clock.currentTimeMillis
    const silent = now - lease.lastOk
    yield* Effect.logWarning("heartbeat failed").pipe(
      Effect.annotateLogs({ key: describeKeys(group.members), lease: lease.id, error: error.message })
    )
    if (silent >= ttlMillis) {
      yield* group.lock.exclusive(leaseLost(group, lease.id, error))
    }
  })
  return Effect.schedule(beat, Schedule.fixed(ttl.heartbeat)).pipe(Effect.asVoid)
}

// ---- losing and healing ----

/** The lease is gone (or given up): mark every member Retrying and start the healer. Call under the exclusive lock. */
const leaseLost = (group: Group, lease: LeaseId, error: EtcdError): Effect.Effect<void> =>
  Effect.gen(function* () {
    if (group.closed || group.lease?.id !== lease) return
    group.lease = undefined
    if (error.reason !== "LeaseNotFound") group.abandoned = lease
    yield* Metric.increment(leasesLost)
    yield* Effect.logWarning("lease lost").pipe(
      Effect.annotateLogs({ key: describeKeys(group.members), lease, error: error.message })
    )
    yield* setAll(group.members, RegistrationState.Retrying({ attempt: 1, error }))
    if (!group.healing && group.ttl !== undefined) {
      group.healing = true
      yield* Effect.forkIn(Effect.interruptible(healer(group, group.ttl)), group.scope)
    }
  })

/**
 * Grants a lease and puts every member's key on it, `joining`'s too. Call
 * under the exclusive lock, with a TTL option and no live lease. Alone, the
 * joining member's lease is revoked on failure, so no key is left
 * half-registered. With members (their lease lost, or given up: it may still
 * live in etcd, holding their keys), a failure does not revoke the new lease,
 * which would delete the keys moved onto it already (as for the healer, see
 * {@link putAllOn}); the joining key alone is deleted.
 */
const grantAndPutAll = (group: Group, ttl: TtlOption, joining: Member): Effect.Effect<void, EtcdError> =>
  Effect.gen(function* () {
    const sentAt = yield* Clock.currentTimeMillis
    if (group.members.size === 0) {
      const { lease, revisions } = yield* grantAndPut(group.client, ttl.ttlSeconds, [joining.entry])
      // the grant's answer is not seen apart from the put's: the lease's time is counted from the sending
      return yield* install(group, ttl, joining, [joining], lease, revisions, sentAt, sentAt)
    }
    const lease = yield* answered(group, group.client.grant(ttl.ttlSeconds))
    const grantedAt = yield* Clock.currentTimeMillis
    yield* putAllOn(group, ttl, lease, sentAt, grantedAt, joining)
  })

/**
 * Puts every member's key on `lease` (and `joining`'s), granted (sent at
 * `sentAt`, answered at `grantedAt`) outside the lock by the healer, or by a
 * join. Call under the exclusive lock, with no live lease. When a put fails,
 * the lease is not revoked: the keys put on it already (moved off the lease
 * given up, which may still live) would be deleted with it, and every
 * subscriber would see them go until the next attempt. Nobody keeps it alive:
 * it expires by itself within its TTL, unless the next attempt moves the keys
 * on first. The joining member's key, which may have landed, is deleted (see
 * {@link putMember}).
 */
const putAllOn = (
  group: Group,
  ttl: TtlOption,
  lease: LeaseId,
  sentAt: number,
  grantedAt: number,
  joining?: Member
): Effect.Effect<void, EtcdError> =>
  Effect.gen(function* () {
    const members = joining === undefined ? [...group.members] : [...group.members, joining]
    const revisions = yield* Effect.forEach(
      members,
      (member) => answered(group, group.client.put(member.entry.key, member.entry.value, { lease })),
      { concurrency: 16 }
    ).pipe(
      Effect.onExit((exit) => (Exit.isSuccess(exit) || joining === undefined ? Effect.void : unput(group, joining)))
    )
    yield* install(group, ttl, joining, members, lease, revisions, sentAt, grantedAt)
  })

/**
 * The new lease holds every member's key: it is the group's, and the joining
 * member, if any, is a member; the lease given up, if any, is revoked in the
 * background. Uninterruptible, and without waiting on etcd: a join interrupted
 * between installing the lease and adding its member would leave its key on
 * the lease, kept alive by the others, with no registration to remove it. Its
 * TTL runs from the grant (answered at `grantedAt`), not from the end of the
 * puts: slow puts do not lengthen the time the heartbeat allows it.
 */
const install = (
  group: Group,
  ttl: TtlOption,
  joining: Member | undefined,
  members: ReadonlyArray<Member>,
  lease: LeaseId,
  revisions: ReadonlyArray<number>,
  sentAt: number,
  grantedAt: number
): Effect.Effect<void> =>
  Effect.uninterruptible(
    Effect.gen(function* () {
      group.lease = { id: lease, lastOk: sentAt, lastAnswered: grantedAt }
      group.unreachable = false
      for (let i = 0; i < members.length; i++) {
        const member = members[i]!
        member.lastPut = revisions[i]!
        if (member === joining) continue
        yield* member.state.set(RegistrationState.Registered({ lease }))
        yield* Metric.increment(reRegistrations)
        yield* Effect.logInfo("re-registered").pipe(Effect.annotateLogs({ key: member.entry.key, lease }))
      }
      const abandoned = group.abandoned
      group.abandoned = undefined
      // it no longer holds any of our keys; if etcd kept it alive, don't leave it to expire by itself
      if (abandoned !== undefined) {
        yield* Effect.forkIn(Effect.interruptible(revokeAbandoned(group, ttl, abandoned)), group.scope)
      }
      if (joining !== undefined) yield* addMember(group, joining)
    })
  )

/**
 * Revokes a lease given up after a whole TTL without keep-alive, once a new
 * lease holds the keys. A failure right after an outage (a member still
 * electing, a breaker still open) is retried in the background, from 200 ms
 * on with the healing backoff, for one TTL: past that the lease, which nobody
 * renews, has expired by itself.
 */
const revokeAbandoned = (group: Group, ttl: TtlOption, lease: LeaseId): Effect.Effect<void> =>
  Effect.flatMap(Effect.either(group.client.revoke(lease)), (first) => {
    if (Either.isRight(first) || first.left.reason === "LeaseNotFound") return Effect.void
    const again = group.client.revoke(lease).pipe(
      Effect.catchIf(
        (error) => error.reason === "LeaseNotFound",
        () => Effect.void
      ),
      Effect.retry(healSchedule),
      Effect.timeout(Duration.seconds(ttl.ttlSeconds)),
      Effect.ignore
    )
    return Effect.asVoid(
      Effect.forkIn(Effect.interruptible(Effect.zipRight(Effect.sleep(Duration.millis(200)), again)), group.scope)
    )
  })

/**
 * Revokes, in the background, a lease granted outside the group's lock that
 * turned out not to be needed (it holds no key): under the lock, leaves would
 * wait on etcd behind it; unrevoked, it expires by itself.
 */
const revokeSpare = (group: Group, lease: LeaseId): Effect.Effect<void> =>
  Effect.asVoid(Effect.forkDaemon(Effect.ignore(group.client.revoke(lease))))

/**
 * Re-grants the lease and re-puts every key, with backoff, until it works or
 * the group needs it no more: nobody is left, or a join granted a lease
 * meanwhile (the members are then Registered, and a failed attempt of the
 * healer's must not say Retrying). `healing` is cleared under the lock, so a
 * lease lost right after starts a healer again.
 */
const healer = (group: Group, ttl: TtlOption): Effect.Effect<void> => {
  let attempt = 1
  const needed = () => !(group.closed || group.members.size === 0 || group.lease !== undefined)
  // whether to go on; clears `healing` when not. Call under the exclusive lock
  const goOn = (): boolean => {
    if (needed()) return true
    group.healing = false
    return false
  }
  const once = Effect.gen(function* () {
    if (!(yield* group.lock.exclusive(Effect.sync(goOn)))) return
    // the grant outside the lock: while etcd does not answer it waits a whole call timeout, and
    // leaves and joins would wait behind it; the puts under it, on the members there are then
    const sentAt = yield* Clock.currentTimeMillis
    const granted = yield* Effect.either(answered(group, group.client.grant(ttl.ttlSeconds)))
    const grantedAt = yield* Clock.currentTimeMillis
    const failed = yield* group.lock.exclusive(
      Effect.gen(function* () {
        if (Either.isRight(granted) && !needed()) {
          // someone else holds a lease by now, or nobody is left: this one is not needed (revoked
          // in the background: under the lock, leaves would wait on etcd behind it)
          yield* revokeSpare(group, granted.right)
        }
        const result = Either.isLeft(granted)
          ? granted
          : needed()
            ? yield* Effect.either(putAllOn(group, ttl, granted.right, sentAt, grantedAt))
            : Either.right(undefined)
        if (Either.isRight(result) || !goOn()) {
          group.healing = false
          return undefined
        }
        attempt++
        yield* setAll(group.members, RegistrationState.Retrying({ attempt, error: result.left }))
        return result.left
      })
    )
    if (failed === undefined) return
    yield* Effect.logWarning("re-registration failed, retrying").pipe(
      Effect.annotateLogs({ key: describeKeys(group.members), attempt, error: failed.message })
    )
    return yield* failed
  })
  return once.pipe(Effect.retry(healSchedule), Effect.ignore)
}

/**
 * Puts a member's key again after it was deleted at `deletedAt` while it
 * should exist. Skips when the member left, when the key was put again since,
 * or when the lease is lost (the healer re-puts every key then).
 */
const repairOnce = (group: Group, member: Member, deletedAt: number): Effect.Effect<boolean, EtcdError> =>
  Effect.gen(function* () {
    const outcome = yield* group.lock.shared(
      Effect.gen(function* () {
        if (group.closed || !group.members.has(member) || member.lastPut > deletedAt) return "skip" as const
        const lease = group.lease
        if (group.ttl !== undefined && lease === undefined) return "skip" as const
        const result = yield* Effect.either(
          answered(group, group.client.put(member.entry.key, member.entry.value, { lease: lease?.id }))
        )
        if (Either.isLeft(result)) {
          if (result.left.reason === "LeaseNotFound" && lease !== undefined) {
            return { lost: lease.id, error: result.left } as const
          }
          return yield* result.left
        }
        member.lastPut = result.right
        yield* member.state.set(RegistrationState.Registered({ lease: lease?.id }))
        yield* Metric.increment(reRegistrations)
        yield* Effect.logInfo("re-registered").pipe(
          Effect.annotateLogs({ key: member.entry.key, lease: lease?.id ?? "none", reason: "key deleted" })
        )
        return "done" as const
      })
    )
    if (outcome === "skip") return false
    if (outcome === "done") return true
    // the lease is gone: the healer puts every key back
    yield* group.lock.exclusive(leaseLost(group, outcome.lost, outcome.error))
    return false
  })

/** {@link repairOnce}, retried with backoff until it is done or not needed. */
export const repair = (group: Group, member: Member, deletedAt: number): Effect.Effect<void> => {
  // the attempt about to be made, as in Retrying: the first failure announces the second
  let attempt = 1
  return repairOnce(group, member, deletedAt).pipe(
    Effect.tapError((error) =>
      group.lock.shared(
        Effect.gen(function* () {
          attempt++
          if (!group.members.has(member)) return
          yield* member.state.set(RegistrationState.Retrying({ attempt, error }))
          yield* Effect.logWarning("re-registration failed, retrying").pipe(
            Effect.annotateLogs({ key: member.entry.key, attempt, error: error.message })
          )
        })
      )
    ),
    Effect.retry(healSchedule),
    Effect.catchAll(() => Effect.void),
    Effect.asVoid
  )
}

/** The live lease of a group, if any. */
export const currentLease = (group: Group): LeaseId | undefined => group.lease?.id

// ---- watching the keys ----

/**
 * Deleted keys are noticed by watching them, not by reading them on every
 * heartbeat: a watch reports a delete at once and costs nothing while nothing
 * changes. One watch per directory (the key up to its last `/`), not per key:
 * a process's registrations usually sit under one or two directories, so a
 * thousand registrations are a handful of watch streams. The watch also sees
 * the other keys of the directory (other instances of the same service) and
 * ignores them.
 */
interface DirWatch {
  readonly prefix: string
  /** The members under this directory, by key. */
  readonly members: Map<string, Set<Member>>
  /** The revision of the last change the watch has handled. */
  seen: number
  fiber: Fiber.RuntimeFiber<void> | undefined
}

/**
 * How long after the first registration of a directory its watch opens.
 * Opening a watch stream costs about as much as the registration's own put
 * (measured: 1.8 ms → 2.8 ms from register to visible, issue 7), and a
 * registration that ends within this time never needs one. The watch starts
 * from the revision of the put, so a delete meanwhile is replayed and
 * repaired when it opens: at most this much later.
 */
export const watchSettle = Duration.millis(100)

/** The directory watched for a key: up to its last `/`; a key without an inner `/` is watched alone. */
export const dirOf = (key: string): string => {
  const slash = key.lastIndexOf("/")
  return slash <= 0 ? key : key.slice(0, slash + 1)
}

const watchMember = (group: Group, member: Member): Effect.Effect<void> =>
  Effect.suspend(() => {
    const key = member.entry.key
    const prefix = dirOf(key)
    const existing = group.dirs.get(prefix)
    if (existing !== undefined) {
      const same = existing.members.get(key)
      if (same === undefined) existing.members.set(key, new Set([member]))
      else same.add(member)
      // the watch hands over every change in revision order; if it already handled some after our put,
      // a delete of our key may have gone by before we were listed: look once
      return existing.seen <= member.lastPut
        ? Effect.void
        : Effect.asVoid(Effect.forkIn(Effect.interruptible(checkKey(group, member)), group.scope))
    }
    const dir: DirWatch = { prefix, members: new Map([[key, new Set([member])]]), seen: 0, fiber: undefined }
    group.dirs.set(prefix, dir)
    return Effect.map(
      // from the put itself, not the revision after: a delete right after the put that is
      // compacted away before the watch opens then fails the watch as Compacted (and is
      // repaired by the listing that follows) instead of going unseen. Opened a moment later
      // (see watchSettle), so that it replays whatever happened meanwhile.
      Effect.forkIn(
        Effect.interruptible(Effect.zipRight(Effect.sleep(watchSettle), watchDir(group, dir, member.lastPut))),
        group.scope
      ),
      (fiber) => {
        dir.fiber = fiber
      }
    )
  })

const unwatchMember = (group: Group, member: Member): Effect.Effect<void> =>
  Effect.suspend(() => {
    const key = member.entry.key
    const dir = group.dirs.get(dirOf(key))
    const same = dir?.members.get(key)
    if (dir === undefined || same === undefined) return Effect.void
    same.delete(member)
    if (same.size === 0) dir.members.delete(key)
    if (dir.members.size > 0) return Effect.void
    group.dirs.delete(dir.prefix)
    return dir.fiber === undefined ? Effect.void : Fiber.interrupt(dir.fiber)
  })

/**
 * Puts the member's key back if it is missing now. One read of the key (as a
 * prefix: a role limited to the service's prefix may make it), whose revision
 * is the one the key was missing at.
 */
const checkKey = (group: Group, member: Member): Effect.Effect<void> =>
  Effect.gen(function* () {
    const key = member.entry.key
    const listing = yield* group.client.list(key)
    if (!listing.entries.some((kv) => kv.key === key)) yield* repair(group, member, listing.revision)
  }).pipe(Effect.retry(healSchedule), Effect.ignore)

const membersOf = (dir: DirWatch): ReadonlyArray<Member> => [...dir.members.values()].flatMap((set) => [...set])

/**
 * Watches a directory from `from` and puts back every member key deleted
 * there. A watch that etcd cancels (compaction, a wiped cluster) is opened
 * again after listing the directory, so a delete missed meanwhile is seen.
 */
const watchDir = (group: Group, dir: DirWatch, from: number): Effect.Effect<void> => {
  let first = true
  const once = Effect.gen(function* () {
    let start = from
    if (!first) {
      const listing = yield* group.client.list(dir.prefix)
      dir.seen = listing.revision
      const present = new Set(listing.entries.map((kv) => kv.key))
      for (const member of membersOf(dir)) {
        if (!present.has(member.entry.key)) yield* repair(group, member, listing.revision)
      }
      start = listing.revision + 1
    }
    first = false
    yield* group.client.watch(dir.prefix, { fromRevision: start }).pipe(
      Stream.runForEach((event) => {
        if (event._tag !== "Delete") {
          if (event._tag === "Put") dir.seen = event.revision
          return Effect.void
        }
        dir.seen = event.revision
        const members = dir.members.get(event.key)
        return members === undefined
          ? Effect.void
          : Effect.forEach([...members], (member) => repair(group, member, event.revision), { discard: true })
      })
    )
    return yield* new EtcdError({ operation: "watch", reason: "Canceled", detail: "the watch ended" })
  })
  return once.pipe(
    // a role that may write its keys but not read them cannot watch them: say so once, and
    // rely on the lease alone (a lost lease is still healed; a key deleted by hand is not)
    Effect.catchIf(
      (error) => error.reason === "PermissionDenied",
      (error) =>
        Effect.logError(
          "cannot watch the registered keys (permission denied): a key deleted by someone else is not put back until its lease is lost; grant read permission on the prefix"
        ).pipe(Effect.annotateLogs({ key: dir.prefix, error: error.message }))
    ),
    Effect.tapError((error) =>
      Effect.gen(function* () {
        // a wiped cluster starts its revisions again: ours mean nothing there
        if (error.reason === "Rewound") {
          dir.seen = 0
          for (const member of membersOf(dir)) member.lastPut = 0
        }
        yield* Effect.logWarning("watch of the registered keys failed, watching again").pipe(
          Effect.annotateLogs({ key: dir.prefix, error: error.message })
        )
      })
    ),
    Effect.retry(healSchedule),
    Effect.ignore
  )
}

// ---- joining and leaving ----

/**
 * Puts a joining member's key, on `lease` if any. A put that fails (a timeout,
 * an interruption) may still have landed: then the key is deleted (see
 * {@link unput}). A `LeaseNotFound` put did not land.
 */
const putMember = (group: Group, member: Member, lease: LeaseId | undefined): Effect.Effect<number, EtcdError> =>
  answered(group, group.client.put(member.entry.key, member.entry.value, { lease })).pipe(
    Effect.onExit((exit) => (Exit.isSuccess(exit) || isLeaseNotFound(exit.cause) ? Effect.void : unput(group, member)))
  )

/**
 * Deletes the key of a joining member whose put failed and may have landed, so
 * that a registration that failed leaves nothing behind, neither on a shared
 * lease that others keep alive nor as a plain key that nothing would ever
 * remove; a delete that fails too (etcd still unreachable, a breaker open) is
 * retried in the background while the group lives. A key that another member
 * of the group holds with the same value is left alone: it is on their lease.
 * Anyone else's (another value, or another TTL option's lease) is deleted
 * too: their watch puts it back, with their value, on their lease.
 */
const unput = (group: Group, member: Member): Effect.Effect<void> =>
  Effect.suspend(() => {
    const { key, value } = member.entry
    // on this group's lease: theirs; held elsewhere (no lease, another TTL option), the key must not
    // stay where this put moved it: deleted, the holder's watch puts it back on its own lease
    for (const m of group.members) if (m.entry.key === key && m.entry.value === value) return Effect.void
    return Effect.catchAll(answered(group, group.client.delete(key)), () => deleteLater(group, key, value))
  })

/**
 * Joins on the group's live lease (or without lease), under the shared lock:
 * one put. `NeedLease` when there is no live lease (a new group, or a lost
 * lease), `Closed` when the group closed meanwhile.
 */
const joinShared = (group: Group, member: Member): Effect.Effect<"Joined" | "NeedLease" | "Closed", EtcdError> =>
  group.lock.shared(
    Effect.gen(function* () {
      if (group.closed) return "Closed" as const
      const lease = group.lease
      if (group.ttl !== undefined && lease === undefined) return "NeedLease" as const
      const result = yield* Effect.either(putMember(group, member, lease?.id))
      if (Either.isLeft(result)) {
        if (result.left.reason === "LeaseNotFound") return "NeedLease" as const
        return yield* result.left
      }
      member.lastPut = result.right
      yield* addMember(group, member)
      return "Joined" as const
    })
  )

/**
 * Joins when there is no live lease, under the exclusive lock: grants one and
 * puts every key on it, this member's included. On failure or interruption
 * nothing of this member stays behind (see {@link grantAndPutAll}), an empty
 * group is closed. In a group whose lease was lost (members wait on the
 * healer, etcd may not answer), the grant is made before taking the lock, as
 * the healer's: leaves would otherwise wait a whole call timeout behind it.
 * A lease granted so and not used (someone else installed one meanwhile, the
 * group closed) is revoked in the background.
 */
const joinExclusive = (group: Group, ttl: TtlOption, member: Member): Effect.Effect<boolean, EtcdError> =>
  Effect.gen(function* () {
    let early: { readonly lease: LeaseId; readonly sentAt: number; readonly grantedAt: number } | undefined
    if (group.members.size > 0 && group.lease === undefined && !group.closed) {
      const sentAt = yield* Clock.currentTimeMillis
      const lease = yield* answered(group, group.client.grant(ttl.ttlSeconds))
      early = { lease, sentAt, grantedAt: yield* Clock.currentTimeMillis }
    }
    const granted = early
    let used = granted === undefined
    return yield* group.lock
      .exclusive(
        Effect.gen(function* () {
          if (group.closed) return false
          const lease = group.lease
          if (lease !== undefined) {
            // someone else granted one meanwhile, or the lease is lost and not known yet
            const result = yield* Effect.either(putMember(group, member, lease.id))
            if (Either.isRight(result)) {
              member.lastPut = result.right
              yield* addMember(group, member)
              return true
            }
            if (result.left.reason !== "LeaseNotFound") return yield* result.left
            yield* leaseLost(group, lease.id, result.left)
          }
          // the member is added by `install`, with the lease. The early lease only while it has more
          // than a heartbeat left (the lock may have been held long: a leave waiting on etcd)
          const now = yield* Clock.currentTimeMillis
          const fresh =
            granted !== undefined && now - granted.grantedAt < ttl.ttlSeconds * 1000 - Duration.toMillis(ttl.heartbeat)
          if (granted !== undefined && fresh && group.members.size > 0) {
            used = true
            const put = yield* Effect.either(
              putAllOn(group, ttl, granted.lease, granted.sentAt, granted.grantedAt, member)
            )
            if (Either.isRight(put)) return true
            // expired meanwhile all the same: granted again, under the lock
            if (put.left.reason !== "LeaseNotFound") return yield* put.left
          }
          yield* grantAndPutAll(group, ttl, member)
          return true
        }).pipe(
          Effect.onExit((exit) =>
            Exit.isSuccess(exit) || group.closed || group.members.size > 0 ? Effect.void : closeGroup(group)
          )
        )
      )
      .pipe(
        Effect.ensuring(
          Effect.suspend(() => (used || granted === undefined ? Effect.void : revokeSpare(group, granted.lease)))
        )
      )
  })

const addMember = (group: Group, member: Member): Effect.Effect<void> =>
  Effect.suspend(() => {
    group.members.add(member)
    member.group = group
    const registered = Effect.zipRight(
      watchMember(group, member),
      member.state.set(RegistrationState.Registered({ lease: group.lease?.id }))
    )
    if (group.beating || group.ttl === undefined) return registered
    group.beating = true
    // inherits the caller's services (Clock, logger); interruptible even if forked from a finalizer
    return Effect.zipRight(Effect.forkIn(Effect.interruptible(heartbeat(group, group.ttl)), group.scope), registered)
  })

const isLeaseNotFound = (cause: Cause.Cause<EtcdError>): boolean =>
  Option.exists(Cause.failureOption(cause), (e) => e.reason === "LeaseNotFound")

/**
 * Joins the member to the group of its TTL option on this client: puts its
 * key on the group's lease, granting one if there is none.
 */
export const join = (client: EtcdClient, ttl: TtlOption | undefined, member: Member): Effect.Effect<Group, EtcdError> =>
  Effect.gen(function* () {
    for (;;) {
      const group = yield* groupFor(client, ttl)
      // a group without a live lease (a new one, or one whose lease is lost) needs the exclusive
      // lock anyway: go there at once (joinExclusive checks again under it)
      const fast =
        ttl !== undefined && group.lease === undefined && !group.closed
          ? ("NeedLease" as const)
          : yield* joinShared(group, member)
      if (fast === "Joined") return group
      if (fast === "NeedLease" && ttl !== undefined && (yield* joinExclusive(group, ttl, member))) return group
      // the group closed while we waited for it: take a fresh one
    }
  })

/**
 * Removes the member and its key. The last member of a group stops the
 * heartbeat and revokes the lease (which deletes the key), falling back to
 * deleting the key; other members delete their key, and if etcd does not
 * answer, a background fiber keeps trying while the shared lease lives.
 * The member's state is `Deregistered` once the request is done, whatever its
 * outcome.
 *
 * The key goes first: setting the state, stopping the member's watch and the
 * group's fibers (a few milliseconds of stream teardown) come after the
 * request, so that they do not delay the key's removal. Nothing puts the key
 * back meanwhile: the member is out of the group, and a closed group neither
 * heals nor joins. Another member of the group with the same key and value
 * keeps it: the key stays, untouched.
 *
 * When the group's last request went unanswered (etcd unreachable, see
 * `Group.unreachable`), a member on a lease gives etcd {@link unreachableWait}
 * to answer instead of a whole call timeout (the request timeout times the
 * members, plus a second): a process closing N registrations during an outage
 * waited N + 1 of those, past a container's grace period. Unanswered, its key
 * is deleted in the background while others keep the lease alive, and the
 * last member leaves the lease, which nobody renews any more, to expire with
 * its keys within its TTL; the deregistration fails with the error, saying
 * so. A request without a lease has the whole call timeout: nothing else
 * would remove its key.
 */
export const leave = (group: Group, member: Member): Effect.Effect<void, EtcdError> =>
  group.lock.exclusive(
    Effect.suspend(() => {
      if (!group.members.delete(member)) return Effect.void
      const key = member.entry.key
      if (group.members.size === 0) {
        const lease = group.lease
        group.closed = true
        // the client's revoke is called when the effect runs, under lastLeaves' clean-up (a hand-made
        // client's revoke may throw)
        const revoke =
          lease === undefined
            ? Effect.void
            : ask(
                group,
                "revoke",
                Effect.suspend(() => group.client.revoke(lease.id))
              )
        return lastLeaves(group, member, lease?.id, revoke)
      }
      const ensure = Effect.zipRight(member.state.set(RegistrationState.Deregistered()), unwatchMember(group, member))
      // a registration of the same key and value stays: so does the key
      if ([...group.members].some((m) => m.entry.key === key && m.entry.value === member.entry.value)) return ensure
      return removeKey(group, key, member.entry.value).pipe(Effect.ensuring(ensure))
    })
  )

/**
 * {@link leave} started at once, for the common case: the member is the last
 * of its group, the group has a live lease, etcd answered its last request,
 * and nobody holds the group's lock. The lock is taken, the member removed,
 * and the revoke handed to the client (`sent`: where the client can send it
 * at once, see `revokeNow`) before this returns; `leaving`, to be run
 * uninterruptibly (it gives the lock back), waits for the answer and does the
 * rest, as {@link leave} does. A caller whose request was sent should wait for
 * {@link nextTurn} before anything else. The deregistration takes as long;
 * etcd gets the revoke sooner by what a dozen effects cost to build and run
 * with the caches cold, as a deregistration finds them: it closes a scope that
 * has been idle, often for the whole life of the process (issue 7). Answers
 * `undefined`, having done nothing, in every other case: {@link leave}.
 */
export const leaveAtOnce = (
  group: Group,
  member: Member
): { readonly sent: boolean; readonly leaving: Effect.Effect<void, EtcdError> } | undefined => {
  const lease = group.lease
  if (lease === undefined || group.unreachable || group.members.size !== 1 || !group.members.has(member)) {
    return undefined
  }
  if (!group.lock.tryExclusive()) return undefined
  group.members.delete(member)
  group.closed = true
  const revoke = revokeNow(group.client, lease.id)
  const leaving = Effect.suspend(() =>
    Effect.ensuring(
      lastLeaves(group, member, lease.id, answered(group, revoke.answer)),
      Effect.sync(() => group.lock.releaseExclusive())
    )
  )
  return { sent: revoke.sent, leaving }
}

/**
 * Waits for the next turn of the event loop, after the promise jobs already
 * queued: etcd3 sends a request a few promise jobs after it is handed it, and
 * those run once the fiber that handed it suspends. A fiber that goes on
 * building and running effects first (with the caches cold, about as long as
 * etcd3's own way to the wire) holds the request back.
 */
export const nextTurn: Effect.Effect<void> = Effect.async<void>((resume) => {
  inNextTurn(() => resume(Effect.void))
})

/**
 * The last member has left the group (removed from it, the group marked
 * closed, under the exclusive lock): `revoke` revokes the group's live lease
 * `lease` (when it has one), else the member's key is deleted; then the member
 * is Deregistered and the group's fibers stopped, whatever the outcome.
 */
const lastLeaves = (
  group: Group,
  member: Member,
  lease: LeaseId | undefined,
  revoke: Effect.Effect<void, EtcdError>
): Effect.Effect<void, EtcdError> =>
  Effect.gen(function* () {
    const key = member.entry.key
    if (lease !== undefined) {
      const revoked = yield* Effect.either(revoke)
      if (Either.isRight(revoked) || revoked.left.reason === "LeaseNotFound") return
      // etcd does not answer: a delete would wait as long, for a key that expires with the lease
      if (group.unreachable && group.ttl !== undefined) return yield* leftToExpire(group.ttl, lease, revoked.left)
      yield* Effect.logWarning("revoking the lease failed, deleting the key").pipe(
        Effect.annotateLogs({ key, lease, error: revoked.left.message })
      )
    }
    yield* Effect.asVoid(ask(group, "delete", group.client.delete(key)))
  }).pipe(
    Effect.ensuring(
      Effect.zipRight(
        member.state.set(RegistrationState.Deregistered()),
        Effect.zipRight(unwatchMember(group, member), closeGroup(group))
      )
    )
  )

/** Notes whether etcd answered the group's request (see `Group.unreachable`). */
const answered = <A>(group: Group, request: Effect.Effect<A, EtcdError>): Effect.Effect<A, EtcdError> =>
  Effect.tapBoth(request, {
    onFailure: (error) =>
      Effect.sync(() => {
        group.unreachable = isTransient(error)
      }),
    onSuccess: () =>
      Effect.sync(() => {
        group.unreachable = false
      })
  })

/**
 * How long a request of a leaving member waits for etcd when the group's last
 * request went unanswered (see {@link leave}).
 */
export const unreachableWait = Duration.seconds(1)

/**
 * A request of a leaving member: noted as answered or not (see
 * `Group.unreachable`); while etcd is taken for unreachable, and the key has a
 * lease, given {@link unreachableWait} to answer.
 */
const ask = <A>(group: Group, operation: string, request: Effect.Effect<A, EtcdError>): Effect.Effect<A, EtcdError> =>
  // a group with a TTL: its keys are on a lease (the live one, or one given up after an outage)
  group.unreachable && group.ttl !== undefined
    ? // interruptible: a deregistration runs uninterruptibly, and a timeout must be able to stop the request
      Effect.timeoutFail(Effect.interruptible(answered(group, request)), {
        duration: unreachableWait,
        onTimeout: () =>
          new EtcdError({
            operation,
            reason: "Timeout",
            detail: `etcd did not answer the last request, nor this one within ${Duration.format(unreachableWait)}`
          })
      })
    : answered(group, request)

/** The last member leaves while etcd does not answer: the lease is left to expire, with its keys. */
const leftToExpire = (ttl: TtlOption, lease: LeaseId, error: EtcdError): Effect.Effect<never, EtcdError> =>
  Effect.fail(
    new EtcdError({
      operation: error.operation,
      reason: error.reason,
      detail: `${error.detail ?? error.reason}; lease ${lease} is no longer kept alive and expires with its keys within ${ttl.ttlSeconds} s`,
      cause: error
    })
  )

/** Deletes the key of a member that leaves a group others stay in. Call under the exclusive lock. */
const removeKey = (group: Group, key: string, value: string): Effect.Effect<void, EtcdError> =>
  Effect.gen(function* () {
    const deleted = yield* Effect.either(ask(group, "delete", group.client.delete(key)))
    if (Either.isRight(deleted)) return
    yield* deleteLater(group, key, value)
    return yield* deleted.left
  })

/**
 * Deletes a key that no member holds any more in the background, retried with
 * backoff while the group lives and etcd does not answer: the shared lease
 * would keep it alive. An answered refusal (permission denied) is logged as an
 * error, once. Skips
 * when a registration of this client holds the key again (in this group or
 * another: a registration of the same key on another TTL option), or when the
 * group is closed: its lease is then revoked or left to expire, and the key
 * with it; a key without lease is then left, as the caller was told.
 */
const deleteLoop = (group: Group, key: string, value: string): Effect.Effect<void> =>
  Effect.gen(function* () {
    // checked under the lock, sent outside it: a request to an etcd that does not answer would hold
    // up every join, heal and leave of the group (a registration of the key that joins in between
    // has its key put back by its watch)
    const holder = yield* group.lock.exclusive(Effect.sync(() => holderOf(group, key, value)))
    // a closed group: its lease is revoked or left to expire, with the key (one without lease is
    // left, as the caller was told), unless another group's registration holds it
    if (holder === group || (holder === undefined && group.closed)) return
    if (holder !== undefined) {
      // held with the same value on another TTL option (or none): theirs if it is on their lease,
      // else where this group's put moved it, kept alive by nobody who holds it: deleted, and the
      // holder's watch puts it back on its own lease
      const current = yield* ask(group, "get", group.client.get(key))
      if (Option.isNone(current)) return
      // a holder with a TTL and no lease is healing: where the key should be is not known yet (its
      // healer may have put it on a lease not installed yet): asked again later
      if (holder.ttl !== undefined && holder.lease === undefined) {
        return yield* new EtcdError({ operation: "delete", reason: "Unavailable", detail: "its holder is healing" })
      }
      // on the lease of any group that holds it (two TTL options may hold it; the last put wins)
      const holders = [...registryOf(group.client).values()].filter((g) =>
        [...g.members].some((m) => m.entry.key === key && m.entry.value === value)
      )
      if (current.value.value === value && holders.some((g) => current.value.lease === g.lease?.id)) return
    }
    yield* ask(group, "delete", group.client.delete(key))
  }).pipe(
    // an error that etcd answered (permission denied) will not go away by asking again: said once, loudly
    // (a closed client answers Unavailable too: nothing will change that, and the retries stop)
    Effect.retry({ schedule: healSchedule, while: (error) => isTransient(error) && !isClientClosed(error) }),
    Effect.catchAll((error) =>
      Effect.logError(
        group.ttl === undefined
          ? "cannot delete the key of a closed registration: it stays in etcd"
          : "cannot delete the key of a closed registration: it stays while this client's lease lives"
      ).pipe(Effect.annotateLogs({ key, error: error.message }))
    )
  )

const deleteLater = (group: Group, key: string, value: string): Effect.Effect<void> => {
  // in the scope of `owner` (this group first); when that closes before the loop is done, handed
  // over to a group that then holds the key and value, if any, and so on: on behalf of another
  // group's registration (one healing, say), nothing else would remove a key this group's put left
  // where the holder does not keep it
  const runIn = (owner: Group): Effect.Effect<void> =>
    Effect.asVoid(
      Effect.forkIn(
        Effect.interruptible(deleteLoop(group, key, value)).pipe(
          Effect.onInterrupt(() =>
            Effect.suspend(() => {
              const holder = holderOf(group, key, value)
              return holder === undefined || holder === owner || holder.closed ? Effect.void : runIn(holder)
            })
          )
        ),
        owner.scope
      )
    )
  return runIn(group)
}

/**
 * A closed client's answer (`Unavailable`, on which other loops retry quietly):
 * etcd3's, or the in-memory etcd's.
 */
const isClientClosed = (error: EtcdError): boolean =>
  error.detail !== undefined && (error.detail.includes("client was already closed") || error.detail === closedDetail)

/**
 * The group of a registration of this client that holds `key` with `value`:
 * `group` itself when one of its members does, else another TTL option's (or
 * the no-TTL one's); `undefined` when none does.
 */
const holderOf = (group: Group, key: string, value: string): Group | undefined => {
  const holds = (g: Group) => {
    for (const member of g.members) if (member.entry.key === key && member.entry.value === value) return true
    return false
  }
  if (holds(group)) return group
  for (const g of registryOf(group.client).values()) if (g !== group && holds(g)) return g
  return undefined
}
