/**
 * The Registrar on the in-memory etcd, driven by the TestClock: heartbeats,
 * self-healing, deregistration, shared leases, bad input.
 */
import { describe, expect, it } from "@effect/vitest"
import * as Cause from "effect/Cause"
import * as Chunk from "effect/Chunk"
import * as Clock from "effect/Clock"
import * as Context from "effect/Context"
import * as Deferred from "effect/Deferred"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Fiber from "effect/Fiber"
import * as HashMap from "effect/HashMap"
import * as Layer from "effect/Layer"
import * as Logger from "effect/Logger"
import * as Metric from "effect/Metric"
import * as Option from "effect/Option"
import * as Ref from "effect/Ref"
import * as Scope from "effect/Scope"
import * as Stream from "effect/Stream"
import * as SubscriptionRef from "effect/SubscriptionRef"
import * as TestClock from "effect/TestClock"
import * as Tracer from "effect/Tracer"
import { EtcdClient, layerMemory, type LeaseId, MemoryEtcd, type MemoryEtcdControl } from "../src/EtcdClient.js"
import type { InvalidOptions } from "../src/EtcdError.js"
import { EtcdError, NoKey, NoValue } from "../src/EtcdError.js"
import * as Registrar from "../src/Registrar.js"
import type { Service } from "../src/Service.js"
import * as TtlOption from "../src/TtlOption.js"

type State = Registrar.RegistrationState

const ttlOf = (heartbeat: Duration.DurationInput, ttl: Duration.DurationInput) => TtlOption.make({ heartbeat, ttl })

/** heartbeat 1 s, TTL 3 s */
const standard = ttlOf("1 second", "3 seconds")

const service = (key: string, ttl?: TtlOption.TtlOption): Service => ({ key, value: `http://${key.slice(1)}`, ttl })

/** The key as stored, read past any injected fault. */
const stored = (key: string) =>
  Effect.flatMap(MemoryEtcd, (etcd) => Effect.orDie(etcd.client.get(key))).pipe(Effect.map(Option.getOrUndefined))

const leaseIds = Effect.flatMap(MemoryEtcd, (etcd) => etcd.leases).pipe(Effect.map((m) => [...m.keys()]))

const keepAlives = Effect.flatMap(MemoryEtcd, (etcd) => etcd.keepAliveCount)

const revision = Effect.flatMap(MemoryEtcd, (etcd) => Effect.orDie(etcd.client.revision))

const leaseOf = (registration: Registrar.Registration) =>
  Effect.map(Registrar.state(registration), (s) => (s._tag === "Registered" ? s.lease : undefined))

/**
 * Records every state of a registration with the clock time it was seen at;
 * returns once the recorder has seen the current state (so nothing after it is missed).
 */
const recordStates = (registration: Registrar.Registration) =>
  Effect.gen(function* () {
    const log = yield* Ref.make<Array<readonly [number, State]>>([])
    const ready = yield* Deferred.make<void>()
    yield* registration.state.changes.pipe(
      Stream.runForEach((state) =>
        Effect.gen(function* () {
          const now = yield* Clock.currentTimeMillis
          yield* Ref.update(log, (entries) => [...entries, [now, state] as const])
          yield* Deferred.succeed(ready, undefined)
        })
      ),
      Effect.forkScoped
    )
    yield* Deferred.await(ready)
    return log
  })

/** Advances the TestClock in `step`s until `done` holds; fails the test after `limit`. Returns the time it took. */
const advanceUntil = (
  done: Effect.Effect<boolean, never, MemoryEtcdControl | EtcdClient>,
  step: Duration.DurationInput = "100 millis",
  limit: Duration.DurationInput = "5 minutes"
) =>
  Effect.gen(function* () {
    const start = yield* Clock.currentTimeMillis
    const max = Duration.toMillis(limit)
    while (!(yield* done)) {
      if ((yield* Clock.currentTimeMillis) - start > max) {
        return yield* Effect.dieMessage(`condition not met within ${Duration.format(limit)}`)
      }
      yield* TestClock.adjust(step)
    }
    return (yield* Clock.currentTimeMillis) - start
  })

const isRegistered = (registration: Registrar.Registration) =>
  Effect.map(Registrar.state(registration), (s) => s._tag === "Registered")

const counter = (metric: Metric.Metric.Counter<number>) => Effect.map(Metric.value(metric), (s) => s.count)

/** A failure injected into a client's request. */
const injected = (operation: string, reason: EtcdError["reason"]) =>
  Effect.fail(new EtcdError({ operation, reason, detail: "injected" }))

/**
 * `client`, whose puts (of `only`, if given) land but answer with a timeout
 * while `lose(true)` (an answer lost), and whose next `n` deletes fail after
 * `failDeletes(n)` (etcd still unreachable).
 */
const lossyClient = (client: EtcdClient, only?: string) => {
  let lossy = false
  let failing = 0
  const lossyOne: EtcdClient = {
    ...client,
    put: (key, value, options) =>
      lossy && (only === undefined || key === only)
        ? Effect.zipRight(client.put(key, value, options), injected("put", "Timeout"))
        : client.put(key, value, options),
    delete: (key) => (failing-- > 0 ? injected("delete", "Unavailable") : client.delete(key))
  }
  return {
    client: lossyOne,
    lose: (on: boolean) => {
      lossy = on
    },
    failDeletes: (n: number) => {
      failing = n
    }
  }
}

/**
 * `client`, whose grants, keep-alives, revokes, deletes and puts time out after
 * 10 s (a 3-member cluster's call timeout) while `hang(true)`.
 */
const hangingClient = (client: EtcdClient) => {
  let hung = false
  const hang = <A>(operation: string, request: Effect.Effect<A, EtcdError>) =>
    hung
      ? Effect.zipRight(
          Effect.sleep("10 seconds"),
          Effect.fail(new EtcdError({ operation, reason: "Timeout", detail: "injected" }))
        )
      : request
  const hanging: EtcdClient = {
    ...client,
    grant: (ttl) => hang("grant", client.grant(ttl)),
    keepAliveOnce: (lease) => hang("keepAlive", client.keepAliveOnce(lease)),
    revoke: (lease) => hang("revoke", client.revoke(lease)),
    delete: (key) => hang("delete", client.delete(key)),
    put: (key, value, options) => hang("put", client.put(key, value, options))
  }
  return {
    client: hanging,
    hang: (on: boolean) => {
      hung = on
    }
  }
}

describe("Registrar on the in-memory etcd", () => {
  it.scoped("make returns once the key is in etcd, on a lease of the TTL", () =>
    Effect.gen(function* () {
      const before = yield* counter(Registrar.metrics.registrations)
      const registration = yield* Registrar.make(service("/svc/a/1", yield* standard))
      const state = yield* Registrar.state(registration)
      expect(state._tag).toBe("Registered")
      const lease = yield* leaseOf(registration)
      const kv = yield* stored("/svc/a/1")
      expect(kv?.value).toBe("http://svc/a/1")
      expect(kv?.lease).toBe(lease)
      const leases = yield* Effect.flatMap(MemoryEtcd, (etcd) => etcd.leases)
      expect([...leases]).toEqual([[lease, 3]])
      expect(yield* counter(Registrar.metrics.registrations)).toBe(before + 1)
    }).pipe(Effect.provide(layerMemory))
  )

  it.scoped("heartbeats: one keep-alive per heartbeat, and the key outlives many TTLs", () =>
    Effect.gen(function* () {
      yield* Registrar.make(service("/svc/hb/1", yield* standard))
      expect(yield* keepAlives).toBe(0)
      yield* TestClock.adjust("999 millis")
      expect(yield* keepAlives).toBe(0)
      yield* TestClock.adjust("1 millis")
      expect(yield* keepAlives).toBe(1)
      yield* TestClock.adjust("9 seconds")
      expect(yield* keepAlives).toBe(10)
      yield* TestClock.adjust("50 seconds")
      expect(yield* keepAlives).toBe(60)
      expect((yield* stored("/svc/hb/1"))?.value).toBe("http://svc/hb/1")
    }).pipe(Effect.provide(layerMemory))
  )

  it.scoped("closing the scope revokes the lease: the key is gone at once", () =>
    Effect.gen(function* () {
      const scope = yield* Scope.make()
      const registration = yield* Registrar.make(service("/svc/close/1", yield* standard)).pipe(Scope.extend(scope))
      const lease = yield* leaseOf(registration)
      expect(yield* leaseIds).toEqual([lease])
      yield* Scope.close(scope, Exit.void)
      expect(yield* stored("/svc/close/1")).toBeUndefined()
      expect(yield* leaseIds).toEqual([])
      expect((yield* Registrar.state(registration))._tag).toBe("Deregistered")
    }).pipe(Effect.provide(layerMemory))
  )

  it.scoped("a scope that fails or is interrupted deregisters too", () =>
    Effect.gen(function* () {
      const ttl = yield* standard
      const failed = yield* Effect.exit(
        Effect.scoped(Effect.zipRight(Registrar.make(service("/svc/fail/1", ttl)), Effect.fail("boom" as const)))
      )
      expect(Exit.isFailure(failed)).toBe(true)
      expect(yield* stored("/svc/fail/1")).toBeUndefined()

      const registered = yield* Deferred.make<void>()
      const fiber = yield* Effect.fork(
        Effect.scoped(
          Effect.zipRight(
            Effect.zipRight(Registrar.make(service("/svc/fail/2", ttl)), Deferred.succeed(registered, undefined)),
            Effect.never
          )
        )
      )
      yield* Deferred.await(registered)
      expect((yield* stored("/svc/fail/2"))?.value).toBe("http://svc/fail/2")
      yield* Fiber.interrupt(fiber)
      expect(yield* stored("/svc/fail/2")).toBeUndefined()
      expect(yield* leaseIds).toEqual([])
    }).pipe(Effect.provide(layerMemory))
  )

  it.scoped(
    "a state first looked at after the registration healed is the current one, and its changes go on from there",
    () =>
      Effect.gen(function* () {
        const registration = yield* Registrar.make(service("/svc/late/1", yield* standard))
        const leases = yield* leaseIds
        expect(leases).toHaveLength(1)
        const first = leases[0]!
        yield* Effect.flatMap(MemoryEtcd, (etcd) => etcd.loseLease(first))
        // nothing has read the state yet: wait on the store, not on the state
        yield* advanceUntil(Effect.map(stored("/svc/late/1"), (kv) => kv !== undefined && kv.lease !== first))
        const second = (yield* stored("/svc/late/1"))!.lease
        expect(yield* Registrar.state(registration)).toEqual(Registrar.RegistrationState.Registered({ lease: second }))
        const states = yield* recordStates(registration)
        yield* registration.deregister
        yield* advanceUntil(Effect.map(Ref.get(states), (entries) => entries.length === 2))
        expect((yield* Ref.get(states)).map(([, s]) => s)).toEqual([
          Registrar.RegistrationState.Registered({ lease: second }),
          Registrar.RegistrationState.Deregistered()
        ])
      }).pipe(Effect.provide(layerMemory))
  )

  it.scoped("a lease revoked by someone else is granted again and the key comes back", () =>
    Effect.gen(function* () {
      const before = yield* counter(Registrar.metrics.reRegistrations)
      const lostBefore = yield* counter(Registrar.metrics.leasesLost)
      const registration = yield* Registrar.make(service("/svc/lost/1", yield* standard))
      const states = yield* recordStates(registration)
      const first = (yield* leaseOf(registration))!
      yield* Effect.flatMap(MemoryEtcd, (etcd) => etcd.loseLease(first))
      yield* advanceUntil(
        Effect.map(Registrar.state(registration), (s) => s._tag === "Registered" && s.lease !== first)
      )
      const second = yield* leaseOf(registration)
      expect(second).not.toBe(first)
      const kv = yield* stored("/svc/lost/1")
      expect(kv?.value).toBe("http://svc/lost/1")
      expect(kv?.lease).toBe(second)
      expect(yield* leaseIds).toEqual([second])
      const tags = (yield* Ref.get(states)).map(([, s]) => s._tag)
      expect(tags).toEqual(["Registered", "Retrying", "Registered"])
      const retrying = (yield* Ref.get(states))[1]![1]
      expect(retrying._tag === "Retrying" && retrying.error.reason).toBe("LeaseNotFound")
      expect(yield* counter(Registrar.metrics.reRegistrations)).toBe(before + 1)
      expect(yield* counter(Registrar.metrics.leasesLost)).toBe(lostBefore + 1)
      // and the new lease is kept alive
      const count = yield* keepAlives
      yield* TestClock.adjust("10 seconds")
      expect(yield* keepAlives).toBe(count + 10)
      expect((yield* stored("/svc/lost/1"))?.lease).toBe(second)
    }).pipe(Effect.provide(layerMemory))
  )

  it.scoped(
    "etcd unreachable for longer than the TTL: the lease is given up after one TTL, re-granting backs off (jittered, capped at 2 s) and succeeds once etcd is back",
    () =>
      Effect.gen(function* () {
        const etcd = yield* MemoryEtcd
        const registration = yield* Registrar.make(service("/svc/outage/1", yield* standard))
        const first = (yield* leaseOf(registration))!
        const states = yield* recordStates(registration)
        const failuresBefore = yield* counter(Registrar.metrics.heartbeatFailures)
        yield* etcd.setUnavailable
        const outageStart = yield* Clock.currentTimeMillis
        // heartbeats at 1, 2, 3 s fail; the last good keep-alive was sent at 0 s: lost at 3 s
        yield* advanceUntil(Effect.map(Registrar.state(registration), (s) => s._tag === "Retrying"))
        expect((yield* Clock.currentTimeMillis) - outageStart).toBe(3000)
        expect(yield* counter(Registrar.metrics.heartbeatFailures)).toBe(failuresBefore + 3)
        // keep etcd away for a minute
        yield* TestClock.adjust("60 seconds")
        const retries = (yield* Ref.get(states)).filter(([, s]) => s._tag === "Retrying")
        const attempts = retries.map(([, s]) => (s._tag === "Retrying" ? s.attempt : 0))
        expect(attempts.slice(0, 5)).toEqual([1, 2, 3, 4, 5])
        // attempt 1 follows the loss at once; the gap before attempt n+1 is the backoff:
        // 200 ms doubling, capped at 2 s, jittered ±20 %
        const gaps = retries.slice(1).map(([t], i) => t - retries[i]![0])
        expect(gaps[0]).toBe(0)
        gaps.slice(1).forEach((gap, i) => {
          const base = Math.min(200 * 2 ** i, 2000)
          expect(gap).toBeGreaterThanOrEqual(Math.floor(base * 0.8))
          expect(gap).toBeLessThanOrEqual(Math.ceil(base * 1.2))
        })
        expect(gaps.length).toBeGreaterThan(25)
        // no key was put meanwhile, etcd being unreachable
        expect((yield* Registrar.state(registration))._tag).toBe("Retrying")
        yield* etcd.restore
        const took = yield* advanceUntil(isRegistered(registration))
        expect(took).toBeLessThanOrEqual(2400)
        const second = yield* leaseOf(registration)
        expect(second).not.toBe(first)
        expect((yield* stored("/svc/outage/1"))?.lease).toBe(second)
        // the abandoned lease (which etcd refreshed on its return) is revoked
        expect(yield* leaseIds).toEqual([second])
      }).pipe(Effect.provide(layerMemory))
  )

  it.scoped("a re-grant whose puts partly fail deletes none of the keys already moved onto its lease", () =>
    Effect.gen(function* () {
      const etcd = yield* MemoryEtcd
      const client = yield* EtcdClient
      // keep-alives of this process fail (etcd itself, kept alive by someone else here, keeps the
      // lease); once re-granting, the put of one key fails once
      let cutOff = true
      let failPutsOfB = 0
      const flaky: EtcdClient = {
        ...client,
        keepAliveOnce: (lease) => (cutOff ? injected("keepAlive", "Unavailable") : client.keepAliveOnce(lease)),
        put: (key, value, options) =>
          key === "/svc/partial/b" && failPutsOfB-- > 0
            ? injected("put", "Unavailable")
            : client.put(key, value, options)
      }
      const ttl = yield* standard
      const a = yield* Registrar.make(service("/svc/partial/a", ttl)).pipe(Effect.provideService(EtcdClient, flaky))
      yield* Registrar.make(service("/svc/partial/b", ttl)).pipe(Effect.provideService(EtcdClient, flaky))
      const first = (yield* leaseOf(a))!
      const deletes: Array<string> = []
      yield* etcd.client.watch("/svc/partial/", { fromRevision: (yield* revision) + 1 }).pipe(
        Stream.runForEach((event) => Effect.sync(() => event._tag === "Delete" && deletes.push(event.key))),
        Effect.forkScoped
      )
      failPutsOfB = 1
      yield* advanceUntil(
        Effect.zipRight(
          Effect.ignore(etcd.client.keepAliveOnce(first)),
          Effect.map(Registrar.state(a), (s) => s._tag === "Registered" && s.lease !== first)
        ),
        "100 millis",
        "30 seconds"
      )
      cutOff = false
      yield* TestClock.adjust("5 seconds")
      expect(failPutsOfB).toBeLessThan(0)
      // the first attempt's put of a landed, b's failed: a stayed on the attempt's lease until the next
      expect(deletes).toEqual([])
      expect((yield* stored("/svc/partial/a"))?.lease).toBe(yield* leaseOf(a))
    }).pipe(Effect.provide(layerMemory))
  )

  it.scoped("an abandoned lease whose revoke fails once is revoked in the background", () =>
    Effect.gen(function* () {
      const etcd = yield* MemoryEtcd
      const client = yield* EtcdClient
      const unavailable = (operation: string) =>
        Effect.fail(new EtcdError({ operation, reason: "Unavailable", detail: "injected" }))
      // this process cannot reach etcd for its keep-alives (while etcd itself, kept alive by
      // someone else here, does not expire the lease); and its first revoke fails
      let cutOff = true
      let failRevokes = 1
      const flaky: EtcdClient = {
        ...client,
        keepAliveOnce: (lease) => (cutOff ? unavailable("keepAlive") : client.keepAliveOnce(lease)),
        revoke: (lease) => (failRevokes-- > 0 ? unavailable("revoke") : client.revoke(lease))
      }
      const registration = yield* Registrar.make(service("/svc/abandoned/1", yield* standard)).pipe(
        Effect.provideService(EtcdClient, flaky)
      )
      const first = (yield* leaseOf(registration))!
      // given up after a TTL without keep-alive; a new lease holds the key
      yield* advanceUntil(
        Effect.zipRight(
          Effect.ignore(etcd.client.keepAliveOnce(first)),
          Effect.map(Registrar.state(registration), (s) => s._tag === "Registered" && s.lease !== first)
        ),
        "100 millis",
        "30 seconds"
      )
      cutOff = false
      const second = (yield* leaseOf(registration))!
      expect((yield* stored("/svc/abandoned/1"))?.lease).toBe(second)
      // the revoke of the abandoned lease failed once: it is still there
      expect(new Set(yield* leaseIds)).toEqual(new Set([first, second]))
      const took = yield* advanceUntil(
        Effect.map(leaseIds, (ids) => ids.length === 1 && ids[0] === second),
        "10 millis",
        "3 seconds"
      )
      // then revoked in the background, 200 ms later
      expect(took).toBeGreaterThanOrEqual(190)
      expect(took).toBeLessThanOrEqual(210)
    }).pipe(Effect.provide(layerMemory))
  )

  it.scoped(
    "closing registrations while etcd does not answer: one request waits out its timeout, the rest do not, and the keys go with the lease",
    () =>
      Effect.gen(function* () {
        // etcd hangs: every request of this process times out after 10 s (a 3-member cluster's call timeout)
        const { client: hanging, hang } = hangingClient(yield* EtcdClient)
        const scope = yield* Scope.make()
        const keys = ["/svc/hung/1", "/svc/hung/2", "/svc/hung/3", "/svc/hung/4"]
        const ttl = yield* standard
        const registrations = yield* Effect.forEach(keys, (key) => Registrar.make(service(key, ttl))).pipe(
          Effect.provideService(EtcdClient, hanging),
          Scope.extend(scope)
        )
        hang(true)
        const closing = yield* Effect.fork(Scope.close(scope, Exit.void))
        const took = yield* advanceUntil(
          Effect.map(closing.poll, (exit) => exit._tag === "Some"),
          "1 second",
          "2 minutes"
        )
        // the first delete waits out its 10 s; etcd is taken for unreachable after it, and each later
        // request (two deletes, the revoke) gets 1 s: 13 s in all, not 40 s (10 s each)
        expect(took).toBeLessThanOrEqual(14_000)
        for (const registration of registrations)
          expect((yield* Registrar.state(registration))._tag).toBe("Deregistered")
        // nobody renews the lease any more: it expires with the keys
        yield* advanceUntil(
          Effect.map(leaseIds, (ids) => ids.length === 0),
          "1 second",
          "30 seconds"
        )
        for (const key of keys) expect(yield* stored(key)).toBeUndefined()
      }).pipe(Effect.provide(layerMemory))
  )

  it.scoped(
    "closing registrations one by one after the lease was lost in an outage: a second each after the first, not a call timeout",
    () =>
      Effect.gen(function* () {
        // etcd hangs: every request of this process times out after 10 s (a 3-member cluster's call timeout)
        const { client: hanging, hang } = hangingClient(yield* EtcdClient)
        const ttl = yield* standard
        const scopes = yield* Effect.forEach([1, 2, 3], (i) =>
          Effect.flatMap(Scope.make(), (scope) =>
            Registrar.make(service(`/svc/lost/${i}`, ttl)).pipe(
              Effect.provideService(EtcdClient, hanging),
              Scope.extend(scope),
              Effect.as(scope)
            )
          )
        )
        const registration = yield* Registrar.make(service("/svc/lost/watched", ttl)).pipe(
          Effect.provideService(EtcdClient, hanging)
        )
        const states = yield* recordStates(registration)
        hang(true)
        // the lease is taken for lost, and the healer is at work (each grant: 10 s)
        yield* advanceUntil(
          Effect.map(Ref.get(states), (seen) => seen.some(([, s]) => s._tag === "Retrying")),
          "100 millis",
          "30 seconds"
        )
        const took: Array<number> = []
        for (const scope of scopes) {
          const closing = yield* Effect.fork(Scope.close(scope, Exit.void))
          took.push(
            yield* advanceUntil(
              Effect.map(closing.poll, (exit) => exit._tag === "Some"),
              "100 millis",
              "40 seconds"
            )
          )
        }
        // etcd was taken for unreachable before the first: a second each (not 10 s, nor behind the healer's grant)
        for (const t of took) expect(t).toBeLessThanOrEqual(1_100)
        // etcd back, the requests in flight run out: the test's scope closes the last registration
        hang(false)
        yield* TestClock.adjust("30 seconds")
      }).pipe(Effect.provide(layerMemory))
  )

  it.scoped(
    "a registration joining after the lease was lost in an outage: a close meanwhile does not wait for its grant",
    () =>
      Effect.gen(function* () {
        // etcd hangs: every request of this process times out after 10 s (a 3-member cluster's call timeout)
        const { client: hanging, hang } = hangingClient(yield* EtcdClient)
        const ttl = yield* standard
        const scope = yield* Scope.make()
        yield* Registrar.make(service("/svc/joinlost/a", ttl)).pipe(
          Effect.provideService(EtcdClient, hanging),
          Scope.extend(scope)
        )
        const registration = yield* Registrar.make(service("/svc/joinlost/b", ttl)).pipe(
          Effect.provideService(EtcdClient, hanging)
        )
        hang(true)
        yield* advanceUntil(
          Effect.map(Registrar.state(registration), (s) => s._tag === "Retrying"),
          "100 millis",
          "30 seconds"
        )
        // a registration joins: it needs a lease, and its grant waits 10 s for etcd
        const joining = yield* Effect.fork(
          Registrar.make(service("/svc/joinlost/c", ttl)).pipe(
            Effect.provideService(EtcdClient, hanging),
            Effect.scoped
          )
        )
        yield* TestClock.adjust("100 millis")
        const closing = yield* Effect.fork(Scope.close(scope, Exit.void))
        const took = yield* advanceUntil(
          Effect.map(closing.poll, (exit) => exit._tag === "Some"),
          "100 millis",
          "40 seconds"
        )
        // etcd back: the join's grant times out, it fails; the test's scope closes the rest
        yield* advanceUntil(
          Effect.map(joining.poll, (exit) => exit._tag === "Some"),
          "100 millis",
          "40 seconds"
        )
        hang(false)
        yield* TestClock.adjust("30 seconds")
        // etcd was taken for unreachable: a second (not behind the join's 10 s grant)
        expect(took).toBeLessThanOrEqual(1_100)
      }).pipe(Effect.provide(layerMemory))
  )

  it.scoped(
    "a key left to a background delete is not deleted once this client registers it again, on another TTL option",
    () =>
      Effect.gen(function* () {
        const client = yield* EtcdClient
        let failDeletes = false
        const flaky: EtcdClient = {
          ...client,
          delete: (key) => (failDeletes ? injected("delete", "Unavailable") : client.delete(key))
        }
        const short = yield* standard
        const scope = yield* Scope.make()
        yield* Registrar.make(service("/svc/again/k", short)).pipe(
          Effect.provideService(EtcdClient, flaky),
          Scope.extend(scope)
        )
        yield* Registrar.make(service("/svc/again/other", short)).pipe(Effect.provideService(EtcdClient, flaky))
        // the delete fails: it goes on in the background, while the other registration keeps the lease
        failDeletes = true
        yield* Scope.close(scope, Exit.void)
        // registered again meanwhile, on another TTL option (another lease)
        const again = yield* Registrar.make(service("/svc/again/k", yield* ttlOf("2 seconds", "6 seconds"))).pipe(
          Effect.provideService(EtcdClient, flaky)
        )
        const put = yield* stored("/svc/again/k")
        expect(put?.lease).toBe(yield* leaseOf(again))
        failDeletes = false
        yield* TestClock.adjust("10 seconds")
        // never deleted (and put back by the new registration's watch): untouched
        expect((yield* stored("/svc/again/k"))?.modRevision).toBe(put?.modRevision)
      }).pipe(Effect.provide(layerMemory))
  )

  it.scoped("a keep-alive that never answers: the lease is taken for lost once its TTL has run out", () =>
    Effect.gen(function* () {
      const client = yield* EtcdClient
      let hang = false
      // etcd hangs for this process: keep-alives never answer, and its watch hears nothing
      const silent: EtcdClient = {
        ...client,
        keepAliveOnce: (lease) => (hang ? Effect.never : client.keepAliveOnce(lease)),
        watch: (prefix, options) => Stream.filter(client.watch(prefix, options), () => !hang)
      }
      const registration = yield* Registrar.make(service("/svc/silent/1", yield* standard)).pipe(
        Effect.provideService(EtcdClient, silent)
      )
      const states = yield* recordStates(registration)
      const start = yield* Clock.currentTimeMillis
      hang = true
      // heartbeat 1 s, TTL 3 s: the beat sent at 1 s never answers; the last answered one was sent at 0 s
      yield* advanceUntil(
        Effect.map(Ref.get(states), (seen) => seen.some(([, s]) => s._tag === "Retrying")),
        "100 millis",
        "30 seconds"
      )
      const lost = (yield* Ref.get(states)).find(([, s]) => s._tag === "Retrying")!
      // the TTL and a heartbeat's grace (an answer held up a moment may still come in time)
      expect(lost[0] - start).toBeLessThanOrEqual(4_100)
    }).pipe(Effect.provide(layerMemory))
  )

  it.scoped("a re-grant whose puts were slow: its lease is given up once its TTL from the grant has run out", () =>
    Effect.gen(function* () {
      const etcd = yield* MemoryEtcd
      const client = yield* EtcdClient
      // once the first lease is lost: puts take 2 s (of a 3 s TTL), no keep-alive of another lease is
      // answered, and the registrar's watch of its key hears nothing (only the heartbeat can find out)
      let first: LeaseId | undefined
      const slow: EtcdClient = {
        ...client,
        put: (key, value, options) =>
          first !== undefined
            ? Effect.zipRight(Effect.sleep("2 seconds"), client.put(key, value, options))
            : client.put(key, value, options),
        keepAliveOnce: (lease) => (first !== undefined && lease !== first ? Effect.never : client.keepAliveOnce(lease))
      }
      const registration = yield* Registrar.make(service("/svc/slowputs/1", yield* standard)).pipe(
        Effect.provideService(EtcdClient, slow)
      )
      first = (yield* leaseOf(registration))!
      yield* etcd.loseLease(first)
      yield* advanceUntil(
        Effect.map(Registrar.state(registration), (s) => s._tag === "Registered" && s.lease !== first),
        "100 millis",
        "30 seconds"
      )
      // etcd deletes the key once the new lease's TTL has run out (no keep-alive reached it)
      yield* advanceUntil(
        Effect.map(stored("/svc/slowputs/1"), (kv) => kv === undefined),
        "100 millis",
        "30 seconds"
      )
      // the heartbeat gives the lease up (taking it for lost then waits for a repair's slow put)
      const failures = yield* counter(Registrar.metrics.heartbeatFailures)
      const stale = yield* advanceUntil(
        Effect.map(counter(Registrar.metrics.heartbeatFailures), (n) => n > failures),
        "100 millis",
        "30 seconds"
      )
      yield* advanceUntil(
        Effect.map(Registrar.state(registration), (s) => s._tag === "Retrying"),
        "100 millis",
        "30 seconds"
      )
      // etcd answers again: the healer's puts finish (the scope's close would wait for them on the TestClock)
      first = undefined
      yield* advanceUntil(isRegistered(registration), "100 millis", "30 seconds")
      // a heartbeat's grace at most: the puts' 2 s did not count as the lease's time
      expect(stale).toBeLessThanOrEqual(1_100)
    }).pipe(Effect.provide(layerMemory))
  )

  it.scoped("a join while the lease is given up, whose own put fails, deletes none of the other keys", () =>
    Effect.gen(function* () {
      const etcd = yield* MemoryEtcd
      const client = yield* EtcdClient
      // keep-alives of this process fail (etcd itself, kept alive by someone else here, keeps the lease);
      // grants fail while failGrants; the put of the joining key lands but its answer is lost
      let cutOff = true
      let failGrants = false
      const flaky: EtcdClient = {
        ...client,
        keepAliveOnce: (lease) => (cutOff ? injected("keepAlive", "Unavailable") : client.keepAliveOnce(lease)),
        grant: (ttl) => (failGrants ? injected("grant", "Unavailable") : client.grant(ttl)),
        put: (key, value, options) =>
          key === "/svc/join/b"
            ? Effect.zipRight(client.put(key, value, options), injected("put", "Timeout"))
            : client.put(key, value, options)
      }
      const ttl = yield* standard
      cutOff = false
      const a = yield* Registrar.make(service("/svc/join/a", ttl)).pipe(Effect.provideService(EtcdClient, flaky))
      const first = (yield* leaseOf(a))!
      const deletes: Array<string> = []
      yield* etcd.client.watch("/svc/join/", { fromRevision: (yield* revision) + 1 }).pipe(
        Stream.runForEach((event) => Effect.sync(() => event._tag === "Delete" && deletes.push(event.key))),
        Effect.forkScoped
      )
      cutOff = true
      failGrants = true
      // the lease is given up (someone else keeps it alive in etcd): a is Retrying, the healer's grants fail
      yield* advanceUntil(
        Effect.zipRight(
          Effect.ignore(etcd.client.keepAliveOnce(first)),
          Effect.map(Registrar.state(a), (s) => s._tag === "Retrying")
        ),
        "100 millis",
        "30 seconds"
      )
      expect((yield* stored("/svc/join/a"))?.lease).toBe(first)
      // etcd grants again; before the healer's next attempt, b registers: its put fails
      failGrants = false
      const joined = yield* Effect.exit(
        Registrar.make(service("/svc/join/b", ttl)).pipe(Effect.provideService(EtcdClient, flaky))
      )
      expect(Exit.isFailure(joined)).toBe(true)
      // a's key was moved onto the join's new lease: it must not be revoked with it
      expect(deletes.filter((k) => k === "/svc/join/a")).toEqual([])
      expect(yield* stored("/svc/join/a")).toBeDefined()
      // and the failed registration left no key behind
      expect(yield* stored("/svc/join/b")).toBeUndefined()
    }).pipe(Effect.provide(layerMemory))
  )

  it.scoped("a healer's grant that fails after a join re-granted the lease: every registration stays Registered", () =>
    Effect.gen(function* () {
      const client = yield* EtcdClient
      let cutOff = false
      let hangNextGrant = false
      const flaky: EtcdClient = {
        ...client,
        keepAliveOnce: (lease) => (cutOff ? injected("keepAlive", "Unavailable") : client.keepAliveOnce(lease)),
        // the healer's grant (the first after the loss) hangs 10 s, then times out (a call timeout)
        grant: (ttl) =>
          Effect.suspend(() => {
            if (!hangNextGrant) return client.grant(ttl)
            hangNextGrant = false
            return Effect.zipRight(Effect.sleep("10 seconds"), injected("grant", "Timeout"))
          })
      }
      const ttl = yield* standard
      const a = yield* Registrar.make(service("/svc/stuck/a", ttl)).pipe(Effect.provideService(EtcdClient, flaky))
      cutOff = true
      hangNextGrant = true
      yield* advanceUntil(
        Effect.map(Registrar.state(a), (s) => s._tag === "Retrying"),
        "100 millis",
        "30 seconds"
      )
      expect(hangNextGrant).toBe(false) // the healer's grant is in flight
      cutOff = false
      // a registration joins meanwhile: it grants a lease and puts both keys on it
      const c = yield* Registrar.make(service("/svc/stuck/c", ttl)).pipe(Effect.provideService(EtcdClient, flaky))
      expect((yield* Registrar.state(a))._tag).toBe("Registered")
      expect((yield* Registrar.state(c))._tag).toBe("Registered")
      // the healer's grant times out; then it finds a live lease and stops
      yield* TestClock.adjust("30 seconds")
      const lease = yield* Effect.map(stored("/svc/stuck/a"), (kv) => kv?.lease)
      expect(lease).toBeDefined()
      expect((yield* stored("/svc/stuck/c"))?.lease).toBe(lease)
      expect(yield* leaseIds).toContain(lease)
      // both keys are in etcd on a live lease, kept alive: the states should say so
      expect((yield* Registrar.state(c))._tag).toBe("Registered")
      expect((yield* Registrar.state(a))._tag).toBe("Registered")
    }).pipe(Effect.provide(layerMemory))
  )

  it.scoped("a second registration of the same key and value whose put fails leaves the key the first one holds", () =>
    Effect.gen(function* () {
      const etcd = yield* MemoryEtcd
      const client = yield* EtcdClient
      const { client: flaky, lose } = lossyClient(client)
      const ttl = yield* standard
      const first = yield* Registrar.make(service("/svc/same/k", ttl)).pipe(Effect.provideService(EtcdClient, flaky))
      yield* TestClock.adjust("1 second") // the first's watch is open
      const deletes: Array<string> = []
      yield* etcd.client.watch("/svc/same/", { fromRevision: (yield* revision) + 1 }).pipe(
        Stream.runForEach((event) => Effect.sync(() => event._tag === "Delete" && deletes.push(event.key))),
        Effect.forkScoped
      )
      lose(true)
      const second = yield* Effect.exit(
        Registrar.make(service("/svc/same/k", ttl)).pipe(Effect.provideService(EtcdClient, flaky))
      )
      lose(false)
      expect(Exit.isFailure(second)).toBe(true)
      expect((yield* Registrar.state(first))._tag).toBe("Registered")
      yield* TestClock.adjust("1 second")
      // closing a second registration of the same key and value leaves the key alone; failing to make one should too
      expect(deletes).toEqual([])
    }).pipe(Effect.provide(layerMemory))
  )

  // deletes refused: none, the cleanup's first one, or every one until the holder (last of its
  // group) has closed
  for (const [where, refused] of [
    ["without TTL", "none"],
    ["on another TTL option's lease", "none"],
    ["without TTL", "once"],
    ["on another TTL option's lease", "once"],
    ["without TTL", "until the holder closed"],
    ["on another TTL option's lease", "until the holder closed"]
  ] as const) {
    it.scoped(
      `a failed registration ${where} of a key and value a TTL registration holds${refused === "none" ? "" : `, whose cleanup deletes fail ${refused}`}: after that one closes, the key is gone`,
      () =>
        Effect.gen(function* () {
          const key = `/svc/failed/${where === "without TTL" ? "plain" : "other"}-${refused.replaceAll(" ", "-")}/k`
          const { client: flaky, lose, failDeletes } = lossyClient(yield* EtcdClient, key)
          const registered = (ttl: TtlOption.TtlOption | undefined) =>
            Registrar.make({ key, value: "http://k", ttl }).pipe(Effect.provideService(EtcdClient, flaky))
          const scopeA = yield* Scope.make()
          const a = yield* registered(yield* standard).pipe(Scope.extend(scopeA))
          // another service of the process, on the other TTL option: its lease lives on
          const other = yield* ttlOf("2 seconds", "6 seconds")
          yield* Registrar.make(service(`${key}-other-service`, other)).pipe(Effect.provideService(EtcdClient, flaky))
          yield* TestClock.adjust("1 second")
          // the put lands, its answer is lost (its cleanup deletes may fail: etcd still unreachable)
          lose(true)
          failDeletes(refused === "none" ? 0 : refused === "once" ? 1 : 1_000_000)
          const b = yield* Effect.exit(registered(where === "without TTL" ? undefined : other))
          lose(false)
          expect(Exit.isFailure(b)).toBe(true)
          yield* TestClock.adjust(refused === "until the holder closed" ? "5 seconds" : "30 seconds")
          expect((yield* Registrar.state(a))._tag).toBe("Registered")
          // the holder closes (its revoke works: the key is not on its lease any more)
          yield* Scope.close(scopeA, Exit.void)
          yield* TestClock.adjust(refused === "until the holder closed" ? "5 seconds" : "30 seconds")
          if (refused === "until the holder closed") {
            failDeletes(0) // deletes work again
            yield* TestClock.adjust("60 seconds")
          }
          // no registration of this client holds the key: it must not be in etcd (where the failed put
          // moved it: a plain key, or on the other TTL option's lease, kept alive)
          expect(yield* stored(key)).toBeUndefined()
        }).pipe(Effect.provide(layerMemory))
    )
  }

  it.scoped(
    "a join interrupted while it revokes the given-up lease leaves no key behind on the group's live lease",
    () =>
      Effect.gen(function* () {
        const client = yield* EtcdClient
        let cutOff = false
        let failGrants = false
        let hangRevoke = false
        let revokeHung = false
        const flaky: EtcdClient = {
          ...client,
          keepAliveOnce: (lease) => (cutOff ? injected("keepAlive", "Unavailable") : client.keepAliveOnce(lease)),
          grant: (ttl) => (failGrants ? injected("grant", "Unavailable") : client.grant(ttl)),
          // a slow revoke (etcd just back after an outage)
          revoke: (lease) =>
            Effect.suspend(() => {
              if (!hangRevoke) return client.revoke(lease)
              revokeHung = true
              return Effect.zipRight(Effect.sleep("10 seconds"), client.revoke(lease))
            })
        }
        const ttl = yield* standard
        const a = yield* Registrar.make({ key: "/svc/int/a", value: "http://a", ttl }).pipe(
          Effect.provideService(EtcdClient, flaky)
        )
        cutOff = true
        failGrants = true
        // the lease is given up after a TTL without answered keep-alives; the healer's grants fail
        yield* advanceUntil(
          Effect.map(Registrar.state(a), (s) => s._tag === "Retrying"),
          "100 millis",
          "30 seconds"
        )
        cutOff = false
        failGrants = false
        hangRevoke = true
        // b registers (its caller gives up on it, say a timeout) before the healer's next attempt
        const b = yield* Effect.fork(
          Effect.scoped(
            Registrar.make({ key: "/svc/int/b", value: "http://b", ttl }).pipe(Effect.provideService(EtcdClient, flaky))
          )
        )
        for (let i = 0; i < 1000 && !revokeHung; i++) yield* Effect.yieldNow()
        expect(revokeHung).toBe(true) // b's join is revoking the lease given up, after putting both keys
        yield* Fiber.interrupt(b)
        hangRevoke = false
        yield* TestClock.adjust("30 seconds")
        expect((yield* Registrar.state(a))._tag).toBe("Registered")
        // b's registration failed: nothing holds its key, nothing will ever delete it
        expect(yield* stored("/svc/int/b")).toBeUndefined()
      }).pipe(Effect.provide(layerMemory))
  )

  it.scoped(
    "a failed registration of a key another registration holds with another value: the key gets its holder's value back",
    () =>
      Effect.gen(function* () {
        const client = yield* EtcdClient
        const { client: flaky, lose, failDeletes } = lossyClient(client)
        const ttl = yield* standard
        const a = yield* Registrar.make({ key: "/svc/val/k", value: "http://a", ttl }).pipe(
          Effect.provideService(EtcdClient, flaky)
        )
        yield* TestClock.adjust("1 second") // a's watch is open
        lose(true)
        failDeletes(1)
        const b = yield* Effect.exit(
          Registrar.make({ key: "/svc/val/k", value: "http://b", ttl }).pipe(Effect.provideService(EtcdClient, flaky))
        )
        lose(false)
        expect(Exit.isFailure(b)).toBe(true)
        yield* TestClock.adjust("30 seconds")
        expect((yield* Registrar.state(a))._tag).toBe("Registered")
        // a is the only registration of the key: etcd should say a's value, not the failed b's
        expect((yield* stored("/svc/val/k"))?.value).toBe("http://a")
      }).pipe(Effect.provide(layerMemory))
  )

  it.scoped("a join whose early grant waited for the lock longer than the TTL does not fail with LeaseNotFound", () =>
    Effect.gen(function* () {
      const etcd = yield* MemoryEtcd
      const client = yield* EtcdClient
      let failGrants = false
      let allowGrants = 0
      let hangDeletes = false
      const flaky: EtcdClient = {
        ...client,
        grant: (t) =>
          Effect.suspend(() =>
            failGrants && allowGrants-- <= 0 ? injected("grant", "PermissionDenied") : client.grant(t)
          ),
        delete: (key) =>
          hangDeletes ? Effect.zipRight(Effect.sleep("10 seconds"), injected("delete", "Timeout")) : client.delete(key)
      }
      const ttl = yield* standard
      const use = Effect.provideService(EtcdClient, flaky)
      const a = yield* use(Registrar.make({ key: "/svc/old/a", value: "a", ttl }))
      const scopeC = yield* Scope.make()
      yield* use(Registrar.make({ key: "/svc/old/c", value: "c", ttl })).pipe(Scope.extend(scopeC))
      const first = (yield* leaseOf(a))!
      // the lease is lost; the healer's grants are refused for now
      failGrants = true
      yield* etcd.loseLease(first)
      yield* advanceUntil(
        Effect.map(Registrar.state(a), (s) => s._tag === "Retrying"),
        "100 millis",
        "3 seconds"
      )
      // c closes: its delete waits out a call timeout (10 s) under the group's lock
      hangDeletes = true
      const closing = yield* Effect.fork(Scope.close(scopeC, Exit.void))
      for (let i = 0; i < 50; i++) yield* Effect.yieldNow()
      // b joins: its early grant is answered at once, then it waits for the lock
      allowGrants = 1
      const b = yield* Effect.fork(Effect.exit(use(Registrar.make({ key: "/svc/old/b", value: "b", ttl }))))
      for (let i = 0; i < 50; i++) yield* Effect.yieldNow()
      expect(allowGrants).toBeLessThanOrEqual(0)
      failGrants = false
      hangDeletes = false
      yield* TestClock.adjust("11 seconds")
      yield* Fiber.join(closing)
      const joined = yield* Fiber.join(b)
      // etcd answered every request of b's: it should be registered
      expect(Exit.isSuccess(joined)).toBe(true)
    }).pipe(Effect.provide(layerMemory))
  )

  it.scoped(
    "a failed registration without TTL of a key whose holder is healing (its puts done, its lease not installed yet): the key ends on the holder's lease, though the no-TTL group closes meanwhile",
    () =>
      Effect.gen(function* () {
        const etcd = yield* MemoryEtcd
        const client = yield* EtcdClient
        const key = "/svc/heal/k"
        const slowKey = "/svc/heal/slow"
        let slow = false
        let lossy = false
        let failDeletes = 0
        const flaky: EtcdClient = {
          ...client,
          put: (k, value, options) =>
            Effect.suspend(() => {
              // the healer's put of the other key waits 5 s (under the group's lock)
              if (k === slowKey && slow)
                return Effect.zipRight(Effect.sleep("5 seconds"), client.put(k, value, options))
              // the failed registration's put lands as a plain key, its answer lost
              if (k === key && lossy && options?.lease === undefined)
                return Effect.zipRight(client.put(k, value, options), injected("put", "Timeout"))
              return client.put(k, value, options)
            }),
          delete: (k) =>
            Effect.suspend(() => (failDeletes-- > 0 ? injected("delete", "Unavailable") : client.delete(k)))
        }
        const use = Effect.provideService(EtcdClient, flaky)
        const ttl = yield* ttlOf("1 second", "10 seconds")
        const scope = yield* Scope.make()
        const holder = yield* use(Registrar.make({ key, value: "http://k", ttl })).pipe(Scope.extend(scope))
        yield* use(Registrar.make({ key: slowKey, value: "http://s", ttl })).pipe(Scope.extend(scope))
        slow = true
        yield* etcd.loseLease((yield* leaseOf(holder))!)
        yield* TestClock.adjust("1 second")
        yield* advanceUntil(
          Effect.map(stored(key), (kv) => kv !== undefined),
          "100 millis",
          "3 seconds"
        )
        // the healer has put the key on its new lease and waits on the other put
        lossy = true
        failDeletes = 1
        expect(Exit.isFailure(yield* Effect.exit(use(Registrar.make({ key, value: "http://k" }))))).toBe(true)
        lossy = false
        // meanwhile another registration without TTL (another key) comes and goes: the no-TTL group closes
        const plain = yield* Scope.make()
        yield* use(Registrar.make({ key: "/svc/heal/plain", value: "http://x" })).pipe(Scope.extend(plain))
        yield* Scope.close(plain, Exit.void)
        slow = false
        yield* TestClock.adjust("30 seconds")
        const lease = yield* leaseOf(holder)
        expect(lease).toBeDefined()
        // registered on a lease: the key is on it (not left a plain key, which its revoke would not remove)
        expect((yield* stored(key))?.lease).toBe(lease)
        yield* Scope.close(scope, Exit.void)
        yield* TestClock.adjust("30 seconds")
        expect(yield* stored(key)).toBeUndefined()
      }).pipe(Effect.provide(layerMemory))
  )

  it.scoped(
    "two registrations of a key and value on two TTL options; a failed no-TTL one's background delete does not delete the key from the lease it is on",
    () =>
      Effect.gen(function* () {
        const etcd = yield* MemoryEtcd
        const key = "/svc/twoholders/k"
        const { client: flaky, lose, failDeletes } = lossyClient(yield* EtcdClient, key)
        const registered = (ttl: TtlOption.TtlOption | undefined) =>
          Registrar.make({ key, value: "http://k", ttl }).pipe(Effect.provideService(EtcdClient, flaky))
        yield* registered(yield* standard)
        yield* TestClock.adjust("1 second")
        lose(true)
        failDeletes(1)
        expect(Exit.isFailure(yield* Effect.exit(registered(undefined)))).toBe(true)
        lose(false)
        // before the background delete's retry (200 ms on), a registration on another TTL option: the key on its lease
        const c = yield* registered(yield* ttlOf("2 seconds", "6 seconds"))
        const cLease = yield* leaseOf(c)
        expect((yield* stored(key))?.lease).toBe(cLease)
        const deletes: Array<string> = []
        yield* etcd.client.watch("/svc/twoholders/", { fromRevision: (yield* revision) + 1 }).pipe(
          Stream.runForEach((event) => Effect.sync(() => event._tag === "Delete" && deletes.push(event.key))),
          Effect.forkScoped
        )
        yield* TestClock.adjust("30 seconds")
        // the key was on the lease of a registration that holds it: nothing had to delete it
        expect(deletes).toEqual([])
      }).pipe(Effect.provide(layerMemory))
  )

  it.scoped(
    "a background delete handed over to a holder that closes in turn is handed over again, to the holder left",
    () =>
      Effect.gen(function* () {
        const key = "/svc/handover/k"
        const { client: flaky, lose, failDeletes } = lossyClient(yield* EtcdClient, key)
        const registered = (ttl: TtlOption.TtlOption | undefined) =>
          Registrar.make({ key, value: "http://k", ttl }).pipe(Effect.provideService(EtcdClient, flaky))
        const scopeB = yield* Scope.make()
        yield* registered(yield* standard).pipe(Scope.extend(scopeB))
        const c = yield* registered(yield* ttlOf("2 seconds", "6 seconds"))
        const cLease = yield* leaseOf(c)
        // a no-TTL group kept open by another registration
        const scopeA = yield* Scope.make()
        yield* Registrar.make(service("/svc/handover/anchor")).pipe(
          Effect.provideService(EtcdClient, flaky),
          Scope.extend(scopeA)
        )
        yield* TestClock.adjust("1 second")
        lose(true)
        failDeletes(1_000_000)
        expect(Exit.isFailure(yield* Effect.exit(registered(undefined)))).toBe(true)
        lose(false)
        // moved off C's lease: a plain key, whose delete etcd does not answer for now
        expect((yield* stored(key))?.lease).toBeUndefined()
        yield* TestClock.adjust("5 seconds")
        // the no-TTL group closes (handed over to a holder), then B closes (handed over to C)
        yield* Effect.exit(Scope.close(scopeA, Exit.void))
        yield* TestClock.adjust("5 seconds")
        yield* Scope.close(scopeB, Exit.void)
        yield* TestClock.adjust("5 seconds")
        failDeletes(0)
        yield* TestClock.adjust("60 seconds")
        expect((yield* Registrar.state(c))._tag).toBe("Registered")
        expect((yield* stored(key))?.lease).toBe(cLease)
      }).pipe(Effect.provide(layerMemory))
  )

  it.scoped("a background delete stops once the client is closed, instead of asking every 2 s for good", () =>
    Effect.gen(function* () {
      const client = yield* EtcdClient
      let closed = false
      let deletesAfterClose = 0
      const flaky: EtcdClient = {
        ...client,
        // the put lands, its answer is lost
        put: (key, value, options) => Effect.zipRight(client.put(key, value, options), injected("put", "Timeout")),
        // etcd does not answer; then the client is closed, and says so
        delete: () =>
          Effect.suspend(() => {
            if (!closed) return injected("delete", "Unavailable")
            deletesAfterClose++
            return Effect.fail(
              new EtcdError({
                operation: "delete",
                reason: "Unavailable",
                detail: "Tried to call a KV method on etcd3, but the client was already closed"
              })
            )
          })
      }
      const failed = yield* Effect.exit(
        Registrar.make({ key: "/svc/closedclient/k", value: "http://k" }).pipe(Effect.provideService(EtcdClient, flaky))
      )
      expect(Exit.isFailure(failed)).toBe(true)
      yield* TestClock.adjust("10 seconds")
      closed = true
      yield* TestClock.adjust("1 hour")
      // one answer from the closed client, and no more asking
      expect(deletesAfterClose).toBe(1)
    }).pipe(Effect.provide(layerMemory))
  )

  it.scoped("a background delete stops once the in-memory client is closed, too", () =>
    Effect.gen(function* () {
      const clientScope = yield* Scope.make()
      const client = Context.get(yield* Layer.buildWithScope(layerMemory, clientScope), EtcdClient)
      let closed = false
      let deletesAfterClose = 0
      const flaky: EtcdClient = {
        ...client,
        put: (key, value, options) => Effect.zipRight(client.put(key, value, options), injected("put", "Timeout")),
        // etcd does not answer; then the in-memory client is closed and answers for itself
        delete: (key) =>
          Effect.suspend(() => {
            if (!closed) return injected("delete", "Unavailable")
            deletesAfterClose++
            return client.delete(key)
          })
      }
      const failed = yield* Effect.exit(
        Registrar.make({ key: "/svc/memclosed/k", value: "http://k" }).pipe(Effect.provideService(EtcdClient, flaky))
      )
      expect(Exit.isFailure(failed)).toBe(true)
      yield* TestClock.adjust("10 seconds")
      yield* Scope.close(clientScope, Exit.void)
      closed = true
      yield* TestClock.adjust("1 hour")
      expect(deletesAfterClose).toBe(1)
    })
  )

  it.scoped("a heartbeat that went unanswered once does not keep a deregistration from removing the key", () =>
    Effect.gen(function* () {
      const client = yield* EtcdClient
      let failKeepAlives = 0
      const blip: EtcdClient = {
        ...client,
        keepAliveOnce: (lease) =>
          failKeepAlives-- > 0 ? injected("keepAlive", "Timeout") : client.keepAliveOnce(lease)
      }
      const scope = yield* Scope.make()
      const ttl = yield* standard
      const first = yield* Registrar.make(service("/svc/blip/a", ttl)).pipe(
        Effect.provideService(EtcdClient, blip),
        Scope.extend(scope)
      )
      yield* Registrar.make(service("/svc/blip/b", ttl)).pipe(
        Effect.provideService(EtcdClient, blip),
        Scope.extend(scope)
      )
      // one heartbeat goes unanswered; etcd itself is fine, and the scope closes before the next heartbeat
      failKeepAlives = 1
      yield* TestClock.adjust("1 second")
      expect(failKeepAlives).toBe(0)
      yield* Scope.close(scope, Exit.void)
      expect((yield* Registrar.state(first))._tag).toBe("Deregistered")
      // removed at once, not left to expire with the lease
      expect(yield* stored("/svc/blip/a")).toBeUndefined()
      expect(yield* stored("/svc/blip/b")).toBeUndefined()
      expect(yield* leaseIds).toEqual([])
    }).pipe(Effect.provide(layerMemory))
  )

  it.scoped(
    "a registration whose put timed out after landing leaves no key on the shared lease, though its first delete fails too",
    () =>
      Effect.gen(function* () {
        const client = yield* EtcdClient
        const ttl = yield* standard
        // once armed, a put lands but its answer is lost, and the delete that cleans up fails twice (a breaker open)
        let lossy = false
        let failDeletes = 2
        const flaky: EtcdClient = {
          ...client,
          put: (key, value, options) =>
            lossy
              ? Effect.zipRight(client.put(key, value, options), injected("put", "Timeout"))
              : client.put(key, value, options),
          delete: (key) => (lossy && failDeletes-- > 0 ? injected("delete", "Unavailable") : client.delete(key))
        }
        const stays = yield* Registrar.make(service("/svc/late/stays", ttl)).pipe(
          Effect.provideService(EtcdClient, flaky)
        )
        lossy = true
        const error = yield* Effect.flip(
          Registrar.make(service("/svc/late/failed", ttl)).pipe(Effect.provideService(EtcdClient, flaky))
        )
        expect(error._tag).toBe("EtcdError")
        expect((yield* stored("/svc/late/failed"))?.lease).toBe(yield* leaseOf(stays))
        // the shared lease stays alive (the other registration): the key must go anyway
        yield* advanceUntil(
          Effect.map(stored("/svc/late/failed"), (kv) => kv === undefined),
          "100 millis",
          "10 seconds"
        )
        expect((yield* stored("/svc/late/stays"))?.value).toBe("http://svc/late/stays")
      }).pipe(Effect.provide(layerMemory))
  )

  it.scoped("a deleted key that cannot be put back at once: Retrying counts the attempt about to be made", () =>
    Effect.gen(function* () {
      const etcd = yield* MemoryEtcd
      const client = yield* EtcdClient
      let failPuts = 0
      const flaky: EtcdClient = {
        ...client,
        put: (key, value, options) =>
          failPuts-- > 0 ? injected("put", "Unavailable") : client.put(key, value, options)
      }
      const registration = yield* Registrar.make(service("/svc/repair/1", yield* standard)).pipe(
        Effect.provideService(EtcdClient, flaky)
      )
      const states = yield* recordStates(registration)
      failPuts = 2
      yield* Effect.orDie(etcd.client.delete("/svc/repair/1"))
      yield* advanceUntil(
        Effect.map(stored("/svc/repair/1"), (kv) => kv !== undefined),
        "100 millis",
        "30 seconds"
      )
      const seen = (yield* Ref.get(states)).map(([, s]) => (s._tag === "Retrying" ? `Retrying ${s.attempt}` : s._tag))
      // two failed put-backs: the second and the third attempts announced, then the third works
      expect(seen).toEqual(["Registered", "Retrying 2", "Retrying 3", "Registered"])
    }).pipe(Effect.provide(layerMemory))
  )

  it.scoped("a registration's state is read-only to its users", () =>
    Effect.gen(function* () {
      const registration = yield* Registrar.make(service("/svc/readonly/1", yield* standard))
      const state = registration.state
      const deregistered = Registrar.RegistrationState.Deregistered()
      // @ts-expect-error: the state is a Subscribable, not a SubscriptionRef: only the Registrar writes it
      const write = () => SubscriptionRef.set(state, deregistered)
      expect(write).toBeTypeOf("function")
      expect("modify" in registration.state).toBe(false)
      expect((yield* registration.state.get)._tag).toBe("Registered")
    }).pipe(Effect.provide(layerMemory))
  )

  it.scoped("the same key and value registered twice: closing one leaves the key untouched for the other", () =>
    Effect.gen(function* () {
      const ttl = yield* standard
      const scope = yield* Scope.make()
      yield* Registrar.make(service("/svc/twice/1", ttl)).pipe(Scope.extend(scope))
      const other = yield* Registrar.make(service("/svc/twice/1", ttl))
      const before = yield* stored("/svc/twice/1")
      yield* Scope.close(scope, Exit.void)
      yield* TestClock.adjust("5 seconds")
      // not deleted and put back (a subscriber would have closed and remade its endpoint): never touched
      expect((yield* stored("/svc/twice/1"))?.modRevision).toBe(before?.modRevision)
      expect((yield* Registrar.state(other))._tag).toBe("Registered")
    }).pipe(Effect.provide(layerMemory))
  )

  it.scoped("a short outage (less than the TTL) keeps the lease: heartbeat failures only", () =>
    Effect.gen(function* () {
      const etcd = yield* MemoryEtcd
      const registration = yield* Registrar.make(service("/svc/blip/1", yield* standard))
      const lease = yield* leaseOf(registration)
      const states = yield* recordStates(registration)
      yield* etcd.setUnavailable
      yield* TestClock.adjust("2 seconds")
      yield* etcd.restore
      yield* TestClock.adjust("10 seconds")
      expect((yield* Ref.get(states)).map(([, s]) => s._tag)).toEqual(["Registered"])
      expect(yield* leaseOf(registration)).toBe(lease)
      expect((yield* stored("/svc/blip/1"))?.lease).toBe(lease)
    }).pipe(Effect.provide(layerMemory))
  )

  it.scoped("a key deleted by someone else is put back on the same lease", () =>
    Effect.gen(function* () {
      const etcd = yield* MemoryEtcd
      const registration = yield* Registrar.make(service("/svc/del/1", yield* standard))
      const lease = yield* leaseOf(registration)
      const states = yield* recordStates(registration)
      // a neighbour whose key shares our prefix does not count
      yield* Effect.orDie(etcd.client.put("/svc/del/10", "other"))
      yield* Effect.orDie(etcd.client.delete("/svc/del/10"))
      const { revision: deletedAt } = yield* Effect.orDie(etcd.client.delete("/svc/del/1"))
      yield* advanceUntil(Effect.map(stored("/svc/del/1"), (kv) => kv !== undefined))
      const kv = (yield* stored("/svc/del/1"))!
      expect(kv.value).toBe("http://svc/del/1")
      expect(kv.lease).toBe(lease)
      expect(kv.modRevision).toBe(deletedAt + 1)
      expect((yield* Ref.get(states)).map(([, s]) => s._tag)).toEqual(["Registered", "Registered"])
      expect(yield* leaseIds).toEqual([lease])
    }).pipe(Effect.provide(layerMemory))
  )

  it.scoped("a key deleted before its watch opens (the first 100 ms) is put back when it opens", () =>
    Effect.gen(function* () {
      const etcd = yield* MemoryEtcd
      const registration = yield* Registrar.make(service("/svc/early/1", yield* standard))
      const lease = yield* leaseOf(registration)
      yield* Effect.orDie(etcd.client.delete("/svc/early/1"))
      yield* TestClock.adjust("99 millis")
      expect(yield* stored("/svc/early/1")).toBeUndefined()
      yield* TestClock.adjust("1 millis")
      // the watch replays from the registration's put: the delete is seen and repaired
      yield* advanceUntil(
        Effect.map(stored("/svc/early/1"), (kv) => kv !== undefined),
        "1 millis",
        "50 millis"
      )
      expect((yield* stored("/svc/early/1"))?.lease).toBe(lease)
    }).pipe(Effect.provide(layerMemory))
  )

  it.scoped("a wiped cluster (revision back to 1): the key comes back on a new lease", () =>
    Effect.gen(function* () {
      const etcd = yield* MemoryEtcd
      const registration = yield* Registrar.make(service("/svc/wipe/1", yield* standard))
      // some history, so that the wiped store is behind what the watch has seen
      for (let i = 0; i < 5; i++) yield* Effect.orDie(etcd.client.put("/other", `${i}`))
      const lease = yield* leaseOf(registration)
      yield* etcd.wipe
      yield* advanceUntil(
        Effect.gen(function* () {
          const kv = yield* stored("/svc/wipe/1")
          return kv !== undefined && (yield* isRegistered(registration))
        })
      )
      const kv = (yield* stored("/svc/wipe/1"))!
      expect(kv.lease).not.toBe(lease)
      expect(kv.lease).toBe(yield* leaseOf(registration))
      // and it stays: deleting it again is noticed on the new history
      yield* Effect.orDie(etcd.client.delete("/svc/wipe/1"))
      yield* advanceUntil(Effect.map(stored("/svc/wipe/1"), (kv) => kv !== undefined))
    }).pipe(Effect.provide(layerMemory))
  )

  it.scoped("after deregistration nothing is kept alive or put again, however long the clock runs", () =>
    Effect.gen(function* () {
      const etcd = yield* MemoryEtcd
      const registration = yield* Registrar.make(service("/svc/dereg/1", yield* standard))
      yield* TestClock.adjust("5 seconds")
      yield* registration.deregister
      expect((yield* Registrar.state(registration))._tag).toBe("Deregistered")
      expect(yield* stored("/svc/dereg/1")).toBeUndefined()
      const count = yield* keepAlives
      const rev = yield* revision
      // someone deletes and puts keys around, a lease is lost: none of it concerns us any more
      yield* Effect.orDie(etcd.client.put("/svc/dereg/1", "squatter"))
      yield* Effect.orDie(etcd.client.delete("/svc/dereg/1"))
      yield* TestClock.adjust("1 hour")
      expect(yield* keepAlives).toBe(count)
      expect(yield* revision).toBe(rev + 2)
      expect(yield* stored("/svc/dereg/1")).toBeUndefined()
      expect(yield* leaseIds).toEqual([])
      expect((yield* Registrar.state(registration))._tag).toBe("Deregistered")
    }).pipe(Effect.provide(layerMemory))
  )

  it.scoped(
    "a hand-made client whose revoke throws: the deregistration dies, but nothing stays held or kept alive",
    () =>
      Effect.gen(function* () {
        const client = yield* EtcdClient
        // throws where it should fail with an effect
        const throwing: EtcdClient = {
          ...client,
          revoke: () => {
            throw new Error("boom")
          }
        }
        const scope = yield* Scope.make()
        const registration = yield* Registrar.make(service("/svc/throw/1", yield* standard)).pipe(
          Effect.provideService(EtcdClient, throwing),
          Scope.extend(scope)
        )
        const exit = yield* Effect.exit(registration.deregister)
        expect(Exit.isFailure(exit) && Cause.isDie(exit.cause)).toBe(true)
        expect((yield* Registrar.state(registration))._tag).toBe("Deregistered")
        const count = yield* keepAlives
        yield* TestClock.adjust("10 seconds")
        // the group is closed: its lease is no longer renewed, and expires with the key
        expect(yield* keepAlives).toBe(count)
        expect(yield* stored("/svc/throw/1")).toBeUndefined()
        // the locks were given back: closing the scope ends
        const closing = yield* Effect.fork(Scope.close(scope, Exit.void))
        yield* TestClock.adjust("1 second")
        expect(Option.isSome(yield* Fiber.poll(closing))).toBe(true)
      }).pipe(Effect.provide(layerMemory))
  )

  it.scoped("a hand-made client whose revoke throws, deregistered after a heartbeat went unanswered: the same", () =>
    Effect.gen(function* () {
      const client = yield* EtcdClient
      let failKeepAlives = 0
      const throwing: EtcdClient = {
        ...client,
        keepAliveOnce: (lease) =>
          failKeepAlives-- > 0 ? injected("keepAlive", "Timeout") : client.keepAliveOnce(lease),
        revoke: () => {
          throw new Error("boom")
        }
      }
      const scope = yield* Scope.make()
      const registration = yield* Registrar.make(service("/svc/throwslow/1", yield* standard)).pipe(
        Effect.provideService(EtcdClient, throwing),
        Scope.extend(scope)
      )
      // one heartbeat unanswered: etcd is taken for unreachable, and the deregistration takes its other way
      failKeepAlives = 1
      yield* TestClock.adjust("1 second")
      expect(failKeepAlives).toBe(0)
      const exit = yield* Effect.exit(registration.deregister)
      expect(Exit.isFailure(exit) && Cause.isDie(exit.cause)).toBe(true)
      expect((yield* Registrar.state(registration))._tag).toBe("Deregistered")
      const count = yield* keepAlives
      yield* TestClock.adjust("10 seconds")
      expect(yield* keepAlives).toBe(count)
      expect(yield* stored("/svc/throwslow/1")).toBeUndefined()
      yield* Scope.close(scope, Exit.void)
    }).pipe(Effect.provide(layerMemory))
  )

  it.scoped("deregistered while re-granting (etcd down): never comes back once etcd is (kratos #3180)", () =>
    Effect.gen(function* () {
      const etcd = yield* MemoryEtcd
      const registration = yield* Registrar.make(service("/svc/3180/1", yield* standard))
      yield* etcd.setUnavailable
      yield* advanceUntil(Effect.map(Registrar.state(registration), (s) => s._tag === "Retrying"))
      yield* TestClock.adjust("5 seconds")
      const result = yield* Effect.either(registration.deregister)
      // etcd is down: the key could not be removed now, and the caller is told
      expect(result._tag === "Left" && result.left.reason).toBe("Unavailable")
      expect((yield* Registrar.state(registration))._tag).toBe("Deregistered")
      const count = yield* keepAlives
      yield* etcd.restore
      // the old lease, refreshed by etcd's return, holds the key until it expires unrenewed
      yield* TestClock.adjust("1 hour")
      expect(yield* stored("/svc/3180/1")).toBeUndefined()
      expect(yield* leaseIds).toEqual([])
      expect(yield* keepAlives).toBe(count)
      expect((yield* Registrar.state(registration))._tag).toBe("Deregistered")
    }).pipe(Effect.provide(layerMemory))
  )

  it.scoped("register and deregister are idempotent; register works again after deregister", () =>
    Effect.gen(function* () {
      const registration = yield* Registrar.make(service("/svc/idem/1", yield* standard))
      const lease = yield* leaseOf(registration)
      const rev = yield* revision
      yield* registration.register
      yield* registration.register
      expect(yield* revision).toBe(rev)
      expect(yield* leaseOf(registration)).toBe(lease)
      yield* registration.deregister
      yield* registration.deregister
      expect(yield* stored("/svc/idem/1")).toBeUndefined()
      yield* registration.register
      const again = yield* leaseOf(registration)
      expect(again).not.toBe(lease)
      expect((yield* stored("/svc/idem/1"))?.lease).toBe(again)
      // and it heals as every registration does
      yield* Effect.flatMap(MemoryEtcd, (etcd) => Effect.orDie(etcd.client.delete("/svc/idem/1")))
      yield* advanceUntil(Effect.map(stored("/svc/idem/1"), (kv) => kv !== undefined))
    }).pipe(Effect.provide(layerMemory))
  )

  it.scoped("Registrar.layer registers while the layer lives and deregisters when it ends", () =>
    Effect.gen(function* () {
      const ttl = yield* standard
      const scope = yield* Scope.make()
      const context = yield* Layer.buildWithScope(Registrar.layer(service("/svc/layer/1", ttl)), scope)
      const registration = Context.get(context, Registrar.Registrar)
      expect((yield* stored("/svc/layer/1"))?.lease).toBe(yield* leaseOf(registration))
      yield* Effect.provide(Registrar.deregister, context)
      expect(yield* stored("/svc/layer/1")).toBeUndefined()
      yield* Effect.provide(Registrar.register, context)
      expect((yield* stored("/svc/layer/1"))?.value).toBe("http://svc/layer/1")
      yield* Scope.close(scope, Exit.void)
      expect(yield* stored("/svc/layer/1")).toBeUndefined()
      expect(yield* leaseIds).toEqual([])
    }).pipe(Effect.provide(layerMemory))
  )

  it.scoped("without a TTL: a plain key, no lease, no heartbeat, put back when deleted", () =>
    Effect.gen(function* () {
      const etcd = yield* MemoryEtcd
      const scope = yield* Scope.make()
      const registration = yield* Registrar.make(service("/svc/plain/1")).pipe(Scope.extend(scope))
      expect(yield* Registrar.state(registration)).toEqual(Registrar.RegistrationState.Registered({ lease: undefined }))
      const kv = yield* stored("/svc/plain/1")
      expect(kv?.lease).toBeUndefined()
      expect(yield* leaseIds).toEqual([])
      yield* Effect.orDie(etcd.client.delete("/svc/plain/1"))
      yield* advanceUntil(Effect.map(stored("/svc/plain/1"), (kv) => kv !== undefined))
      yield* TestClock.adjust("1 minute")
      expect(yield* keepAlives).toBe(0)
      yield* Scope.close(scope, Exit.void)
      expect(yield* stored("/svc/plain/1")).toBeUndefined()
    }).pipe(Effect.provide(layerMemory))
  )

  it.scoped("with a tracer provided, make, register and deregister are spans with the key", () =>
    Effect.gen(function* () {
      const builtIn = yield* Effect.tracer
      const spans: Array<Tracer.Span> = []
      const recording = Tracer.make({
        span: (...args) => {
          const span = builtIn.span(...args)
          spans.push(span)
          return span
        },
        context: (f, fiber) => builtIn.context(f, fiber)
      })
      const ttl = yield* standard
      yield* Effect.scoped(Registrar.make(service("/svc/traced/1", ttl))).pipe(Effect.withTracer(recording))
      expect(spans.map((span) => span.name)).toEqual(["Registrar.make", "Registrar.register", "Registrar.deregister"])
      for (const span of spans) {
        expect(span.attributes.get("key")).toBe("/svc/traced/1")
        expect(span.status._tag).toBe("Ended")
      }
    }).pipe(Effect.provide(layerMemory))
  )

  it.scoped("logs register, lease lost, re-registered, deregister with the key and lease", () =>
    Effect.gen(function* () {
      const lines = yield* Ref.make<Array<{ message: string; key: unknown; lease: unknown }>>([])
      const logger = Logger.make(({ annotations, message }) => {
        const text = Array.isArray(message) ? message.map(String).join(" ") : String(message)
        const annotation = (name: string) => Option.getOrUndefined(HashMap.get(annotations, name))
        Effect.runSync(
          Ref.update(lines, (all) => [...all, { message: text, key: annotation("key"), lease: annotation("lease") }])
        )
      })
      yield* Effect.gen(function* () {
        const registration = yield* Registrar.make(service("/svc/log/1", yield* standard))
        const first = (yield* leaseOf(registration))!
        yield* Effect.flatMap(MemoryEtcd, (etcd) => etcd.loseLease(first))
        yield* advanceUntil(Effect.map(leaseOf(registration), (l) => l !== undefined && l !== first))
        const second = (yield* leaseOf(registration))!
        yield* registration.deregister
        const logged = yield* Ref.get(lines)
        expect(logged.map((l) => l.message)).toEqual(["register", "lease lost", "re-registered", "deregister"])
        expect(logged.map((l) => l.key)).toEqual(["/svc/log/1", "/svc/log/1", "/svc/log/1", "/svc/log/1"])
        expect(logged.map((l) => l.lease)).toEqual([first, first, second, second])
      }).pipe(Effect.provide(Logger.replace(Logger.defaultLogger, logger)))
    }).pipe(Effect.provide(layerMemory))
  )

  it.scoped("a key whose delete etcd refuses is logged once as an error, not retried forever", () =>
    Effect.gen(function* () {
      const client = yield* EtcdClient
      let deletes = 0
      const refusing: EtcdClient = {
        ...client,
        delete: () =>
          Effect.suspend(() => {
            deletes++
            return injected("delete", "PermissionDenied")
          })
      }
      const errors = yield* Ref.make<Array<string>>([])
      const logger = Logger.make(({ logLevel, message, annotations }) => {
        if (logLevel._tag !== "Error") return
        const text = Array.isArray(message) ? message.map(String).join(" ") : String(message)
        const key = Option.getOrUndefined(HashMap.get(annotations, "key"))
        Effect.runSync(Ref.update(errors, (all) => [...all, `${text} (${String(key)})`]))
      })
      yield* Effect.gen(function* () {
        const ttl = yield* standard
        const scope = yield* Scope.make()
        yield* Registrar.make(service("/svc/refused/a", ttl)).pipe(Scope.extend(scope))
        yield* Registrar.make(service("/svc/refused/b", ttl))
        yield* Scope.close(scope, Exit.void)
        yield* TestClock.adjust("1 minute")
      }).pipe(Effect.provideService(EtcdClient, refusing), Effect.provide(Logger.replace(Logger.defaultLogger, logger)))
      // the deregistration's delete, then the background one: refused, said once
      expect(deletes).toBe(2)
      expect(yield* Ref.get(errors)).toEqual([
        "cannot delete the key of a closed registration: it stays while this client's lease lives (/svc/refused/a)"
      ])
    }).pipe(Effect.provide(layerMemory))
  )

  it.effect("a scope's deregistration logs as where it registered; the fiber closing the scope keeps its own", () =>
    Effect.gen(function* () {
      const lines = yield* Ref.make<Array<string>>([])
      const logger = Logger.make(({ annotations, message }) => {
        const text = Array.isArray(message) ? message.map(String).join(" ") : String(message)
        const who = Option.getOrUndefined(HashMap.get(annotations, "who"))
        Effect.runSync(Ref.update(lines, (all) => [...all, `${text} by ${String(who)}`]))
      })
      yield* Effect.gen(function* () {
        const scope = yield* Scope.make()
        yield* Registrar.make(service("/svc/log/scope", yield* standard)).pipe(
          Scope.extend(scope),
          Effect.annotateLogs("who", "registrar")
        )
        yield* Effect.gen(function* () {
          yield* Scope.close(scope, Exit.void)
          yield* Effect.logInfo("closed")
        }).pipe(Effect.annotateLogs("who", "closer"))
        expect(yield* stored("/svc/log/scope")).toBeUndefined()
        expect(yield* Ref.get(lines)).toEqual(["register by registrar", "deregister by registrar", "closed by closer"])
      }).pipe(Effect.provide(Logger.replace(Logger.defaultLogger, logger)))
    }).pipe(Effect.provide(layerMemory))
  )
})

describe("Registrar shares one lease per client and TTL option", () => {
  it.scoped("1000 registrations: one lease, one keep-alive per heartbeat", () =>
    Effect.gen(function* () {
      const ttl = yield* standard
      const registrations = yield* Effect.forEach(Chunk.range(1, 1000), (i) =>
        Registrar.make(service(`/svc/many/${i}`, ttl))
      )
      const leases = yield* leaseIds
      expect(leases.length).toBe(1)
      for (const r of registrations) expect(yield* leaseOf(r)).toBe(leases[0])
      yield* TestClock.adjust("10 seconds")
      expect(yield* keepAlives).toBe(10)
      const listing = yield* Effect.flatMap(MemoryEtcd, (etcd) => Effect.orDie(etcd.client.list("/svc/many/")))
      expect(listing.entries.length).toBe(1000)
    }).pipe(Effect.provide(layerMemory))
  )

  it.scoped(
    "a registration whose put lands but reports a failure leaves no key: on a lease granted while it waited, and without TTL",
    () =>
      Effect.gen(function* () {
        const base = yield* EtcdClient
        // grants take 50 ms; a put of a key ending in /b lands, then fails as if its answer never came
        const client: EtcdClient = {
          ...base,
          grant: (ttl) => Effect.zipRight(Effect.sleep("50 millis"), base.grant(ttl)),
          put: (key, value, options) =>
            key.endsWith("/b")
              ? Effect.zipRight(
                  base.put(key, value, options),
                  Effect.fail(new EtcdError({ operation: "put", reason: "Timeout", detail: "landed, no answer" }))
                )
              : base.put(key, value, options)
        }
        const ttl = yield* standard
        // both start with no lease; b waits for a's grant and puts its key on a's lease
        const both = yield* Effect.fork(
          Effect.all(
            [Registrar.make(service("/svc/late/a", ttl)), Effect.exit(Registrar.make(service("/svc/late/b", ttl)))],
            { concurrency: "unbounded" }
          ).pipe(Effect.provideService(EtcdClient, client))
        )
        yield* TestClock.adjust("50 millis")
        const [a, b] = yield* Fiber.join(both)
        expect(Exit.isFailure(b)).toBe(true)
        expect(yield* stored("/svc/late/b")).toBeUndefined()
        expect((yield* stored("/svc/late/a"))?.lease).toBe(yield* leaseOf(a))
        // a plain key (no TTL) would stay forever
        const plain = yield* Effect.exit(
          Registrar.make(service("/svc/plain/b")).pipe(Effect.provideService(EtcdClient, client))
        )
        expect(Exit.isFailure(plain)).toBe(true)
        expect(yield* stored("/svc/plain/b")).toBeUndefined()
      }).pipe(Effect.provide(layerMemory))
  )

  it.effect("register on a registration whose scope has closed is a defect, and puts nothing back", () =>
    Effect.gen(function* () {
      const ttl = yield* standard
      const registration = yield* Effect.scoped(Registrar.make(service("/svc/closed/a", ttl)))
      expect(yield* stored("/svc/closed/a")).toBeUndefined()
      const exit = yield* Effect.exit(registration.register)
      expect(Exit.isFailure(exit) && Cause.isDie(exit.cause)).toBe(true)
      expect(String(Exit.isFailure(exit) ? Cause.squash(exit.cause) : "")).toContain("after its scope closed")
      expect(yield* stored("/svc/closed/a")).toBeUndefined()
      expect(yield* leaseIds).toEqual([])
      expect((yield* Registrar.state(registration))._tag).toBe("Deregistered")
    }).pipe(Effect.provide(layerMemory))
  )

  it.scoped("deregistering one deletes only its key; the lease is revoked with the last", () =>
    Effect.gen(function* () {
      const ttl = yield* standard
      const a = yield* Registrar.make(service("/svc/share/a", ttl))
      const b = yield* Registrar.make(service("/svc/share/b", ttl))
      const lease = yield* leaseOf(a)
      expect(yield* leaseOf(b)).toBe(lease)
      yield* a.deregister
      expect(yield* stored("/svc/share/a")).toBeUndefined()
      expect((yield* stored("/svc/share/b"))?.lease).toBe(lease)
      expect(yield* leaseIds).toEqual([lease])
      yield* TestClock.adjust("10 seconds")
      expect((yield* stored("/svc/share/b"))?.lease).toBe(lease)
      yield* b.deregister
      expect(yield* stored("/svc/share/b")).toBeUndefined()
      expect(yield* leaseIds).toEqual([])
      // a new registration starts a new lease
      const c = yield* Registrar.make(service("/svc/share/c", ttl))
      expect(yield* leaseOf(c)).not.toBe(lease)
    }).pipe(Effect.provide(layerMemory))
  )

  it.scoped("a lost shared lease: every key of it comes back on one new lease", () =>
    Effect.gen(function* () {
      const ttl = yield* standard
      const registrations = yield* Effect.forEach(["a", "b", "c"], (k) =>
        Registrar.make(service(`/svc/lostshared/${k}`, ttl))
      )
      const first = (yield* leaseOf(registrations[0]!))!
      yield* Effect.flatMap(MemoryEtcd, (etcd) => etcd.loseLease(first))
      yield* advanceUntil(
        Effect.map(Effect.forEach(registrations, leaseOf), (leases) =>
          leases.every((l) => l !== undefined && l !== first)
        )
      )
      const [second] = yield* leaseIds
      for (const k of ["a", "b", "c"]) expect((yield* stored(`/svc/lostshared/${k}`))?.lease).toBe(second)
      for (const r of registrations) expect(yield* leaseOf(r)).toBe(second)
    }).pipe(Effect.provide(layerMemory))
  )

  it.scoped("different TTL options, or different clients, never share a lease", () =>
    Effect.gen(function* () {
      const a = yield* Registrar.make(service("/svc/apart/a", yield* standard))
      const b = yield* Registrar.make(service("/svc/apart/b", yield* ttlOf("2 seconds", "6 seconds")))
      expect(yield* leaseOf(a)).not.toBe(yield* leaseOf(b))
      expect((yield* leaseIds).length).toBe(2)
      // another client (another in-memory etcd): its own lease
      const other = yield* Registrar.make(service("/svc/apart/a", yield* standard)).pipe(Effect.provide(layerMemory))
      expect(yield* leaseOf(other)).toBeDefined()
      expect((yield* leaseIds).length).toBe(2)
      yield* TestClock.adjust("6 seconds")
      // 6 heartbeats of 1 s and 3 of 2 s
      expect(yield* keepAlives).toBe(9)
    }).pipe(Effect.provide(layerMemory))
  )
})

describe("Registrar rejects bad input before touching etcd", () => {
  const untouched = <E>(attempt: Effect.Effect<unknown, E, EtcdClient | Scope.Scope>) =>
    Effect.gen(function* () {
      const rev = yield* revision
      const error = yield* Effect.flip(attempt)
      expect(yield* revision).toBe(rev)
      expect(yield* leaseIds).toEqual([])
      expect(yield* keepAlives).toBe(0)
      return error
    })

  it.scoped("an empty key fails with NoKey", () =>
    Effect.gen(function* () {
      const error = yield* untouched(Registrar.make({ key: "", value: "http://x", ttl: yield* standard }))
      expect(error).toBeInstanceOf(NoKey)
      expect((error as NoKey).message).toBe("no key provided")
    }).pipe(Effect.provide(layerMemory))
  )

  it.scoped("an empty value fails with NoValue", () =>
    Effect.gen(function* () {
      const error = yield* untouched(Registrar.make({ key: "/svc/x", value: "", ttl: yield* standard }))
      expect(error).toBeInstanceOf(NoValue)
      expect((error as NoValue).message).toBe("no value provided")
    }).pipe(Effect.provide(layerMemory))
  )

  it.scoped("a 100 ms heartbeat fails with InvalidOptions, from TtlOption.make and from a hand-built option", () =>
    Effect.gen(function* () {
      const fromMake = yield* Effect.flip(ttlOf("100 millis", "3 seconds"))
      expect(fromMake._tag).toBe("InvalidOptions")
      expect(fromMake.option).toBe("heartbeat")
      const handBuilt: TtlOption.TtlOption = {
        _tag: "TtlOption",
        heartbeat: Duration.millis(100),
        ttl: Duration.seconds(3),
        ttlSeconds: 3
      }
      const error = (yield* untouched(Registrar.make(service("/svc/bad/hb", handBuilt)))) as InvalidOptions
      expect(error._tag).toBe("InvalidOptions")
      expect(error.option).toBe("heartbeat")
    }).pipe(Effect.provide(layerMemory))
  )

  it.scoped("a TTL of two heartbeats or less fails with InvalidOptions; a little more is accepted", () =>
    Effect.gen(function* () {
      // at exactly two heartbeats, a lost heartbeat's successor and the lease's expiry fall due together
      const accepted = yield* ttlOf("1 second", "2001 millis")
      expect(accepted.ttlSeconds).toBe(3)
      for (const [heartbeat, ttl] of [
        ["1 second", "1 second"],
        ["2 seconds", "1 second"],
        ["1 second", "2 seconds"],
        ["1500 millis", "3 seconds"]
      ] as const) {
        const fromMake = yield* Effect.flip(ttlOf(heartbeat, ttl))
        expect(fromMake.option).toBe("ttl")
        const handBuilt: TtlOption.TtlOption = {
          _tag: "TtlOption",
          heartbeat: Duration.decode(heartbeat),
          ttl: Duration.decode(ttl),
          ttlSeconds: Math.ceil(Duration.toSeconds(ttl))
        }
        const error = (yield* untouched(Registrar.make(service("/svc/bad/ttl", handBuilt)))) as InvalidOptions
        expect(error._tag).toBe("InvalidOptions")
        expect(error.option).toBe("ttl")
      }
    }).pipe(Effect.provide(layerMemory))
  )

  it.scoped("the errors are typed: catchTag handles each", () =>
    Effect.gen(function* () {
      const outcome = yield* Registrar.make({ key: "", value: "" }).pipe(
        Effect.as("registered"),
        Effect.catchTags({
          NoKey: () => Effect.succeed("no key"),
          NoValue: () => Effect.succeed("no value"),
          InvalidOptions: () => Effect.succeed("invalid"),
          EtcdError: (e: EtcdError) => Effect.succeed(e.reason)
        })
      )
      expect(outcome).toBe("no key")
    }).pipe(Effect.provide(layerMemory))
  )
})
