/**
 * The Registrar against a real etcd spawned by the test kit, on the real
 * clock: registration visibility, deregistration on scope close, child
 * processes killed with SIGKILL / SIGTERM / SIGINT, an etcd outage longer
 * than the TTL, a key deleted by hand.
 *
 * Nothing here sleeps for a fixed time: every wait is on an event (a watch
 * event, a state change, a child's output or exit), bounded by a generous
 * timeout that only turns a hang into a failure.
 */
import { describe, expect, layer } from "@effect/vitest"
import { vi } from "vitest"
import * as Deferred from "effect/Deferred"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Option from "effect/Option"
import * as Queue from "effect/Queue"
import * as Scope from "effect/Scope"
import * as Stream from "effect/Stream"
import * as ChildProcess from "node:child_process"
import { randomUUID } from "node:crypto"
import * as Path from "node:path"
import { fileURLToPath } from "node:url"
import * as EtcdClient from "../src/EtcdClient.js"
import * as Registrar from "../src/Registrar.js"
import { EtcdServer } from "../src/testing/index.js"
import * as TtlOption from "../src/TtlOption.js"
import { closedPort } from "./testing-helpers.js"

const here = Path.dirname(fileURLToPath(import.meta.url))
const fixture = Path.join(here, "fixtures", "registrar-child.ts")
const run = randomUUID().slice(0, 8)

/** A safety net that turns a hang into a failure; never what a test waits for. */
const within = (seconds: number, what: string) =>
  Effect.timeoutFail({ duration: Duration.seconds(seconds), onTimeout: () => new Error(`timed out: ${what}`) })

/** A client of its own, as an observer that shares nothing with the registrations. */
const observer = Effect.flatMap(EtcdServer.EtcdServer, (server) => EtcdClient.make(server.clientOptions))

type Change = { readonly _tag: "Put" | "Delete"; readonly key: string; readonly revision: number; readonly at: number }

/**
 * Watches exactly `key` from the current revision + 1 (so nothing after this
 * call is missed) and returns a queue of its changes with the wall-clock time
 * they were seen at.
 */
const watchKey = (client: EtcdClient.EtcdClient, key: string) =>
  Effect.gen(function* () {
    const from = (yield* client.revision) + 1
    const changes = yield* Queue.unbounded<Change>()
    yield* client.watch(key, { fromRevision: from }).pipe(
      Stream.runForEach((event) =>
        (event._tag === "Put" || event._tag === "Delete") && event.key === key
          ? Queue.offer(changes, { _tag: event._tag, key, revision: event.revision, at: Date.now() })
          : Effect.void
      ),
      Effect.forkScoped
    )
    return changes
  })

const nextChange = (changes: Queue.Queue<Change>, what: string) => Queue.take(changes).pipe(within(30, what))

const stateOf = (registration: Registrar.Registration) => Registrar.state(registration)

/** Waits for the first state (the current one included) that satisfies `predicate`. */
const awaitState = (
  registration: Registrar.Registration,
  predicate: (state: Registrar.RegistrationState) => boolean,
  what: string
) =>
  registration.state.changes.pipe(
    Stream.filter(predicate),
    Stream.runHead,
    Effect.map(Option.getOrThrow),
    within(60, what)
  )

interface Child {
  readonly pid: number
  /** The child's `{"registered":...}` line. */
  readonly registered: Deferred.Deferred<{ readonly registered: string; readonly lease: string }>
  readonly exit: Deferred.Deferred<{ readonly code: number | null; readonly signal: NodeJS.Signals | null }>
  readonly stderr: () => string
}

/** Spawns the registrar fixture; the scope SIGKILLs it (by its pid) if it is still alive. */
const spawnChild = (endpoint: string, key: string, heartbeatMillis: number, ttlMillis: number) =>
  Effect.acquireRelease(
    Effect.gen(function* () {
      const registered = yield* Deferred.make<{ readonly registered: string; readonly lease: string }>()
      const exit = yield* Deferred.make<{ readonly code: number | null; readonly signal: NodeJS.Signals | null }>()
      const child = ChildProcess.spawn(
        process.execPath,
        ["--import", "tsx", fixture, endpoint, key, `http://${key}`, `${heartbeatMillis}`, `${ttlMillis}`],
        { stdio: ["ignore", "pipe", "pipe"] }
      )
      let stdout = ""
      let stderr = ""
      child.stdout.on("data", (chunk: Buffer) => {
        stdout += chunk.toString("utf8")
        const line = stdout.split("\n").find((l) => l.startsWith("{"))
        if (line !== undefined) Deferred.unsafeDone(registered, Exit.succeed(JSON.parse(line)))
      })
      child.stderr.on("data", (chunk: Buffer) => {
        stderr += chunk.toString("utf8")
      })
      child.on("exit", (code, signal) => Deferred.unsafeDone(exit, Exit.succeed({ code, signal })))
      if (child.pid === undefined) return yield* Effect.dieMessage("the child did not start")
      return { pid: child.pid, registered, exit, stderr: () => stderr } satisfies Child
    }),
    (child) =>
      Effect.gen(function* () {
        if (yield* Deferred.isDone(child.exit)) return
        process.kill(child.pid, "SIGKILL")
        yield* Deferred.await(child.exit)
      })
  )

const awaitRegisteredChild = (child: Child) =>
  Deferred.await(child.registered).pipe(
    within(60, "the child to register"),
    Effect.tapError(() => Effect.logError(`child stderr: ${child.stderr()}`))
  )

describe("Registrar against a real etcd", () => {
  layer(EtcdServer.layer(), { excludeTestServices: true, timeout: "60 seconds" })((it) => {
    it.scoped("the key is in etcd, on a lease, when make returns", () =>
      Effect.gen(function* () {
        const server = yield* EtcdServer.EtcdServer
        const client = yield* EtcdClient.make(server.clientOptions)
        const other = yield* observer
        const ttl = yield* TtlOption.make({ heartbeat: "1 second", ttl: "3 seconds" })
        const key = `/registrar-${run}/visible/1`
        const started = performance.now()
        const registration = yield* Registrar.make({ key, value: "http://10.0.0.1:8080", ttl }).pipe(
          Effect.provideService(EtcdClient.EtcdClient, client)
        )
        const took = performance.now() - started
        const kv = Option.getOrThrow(yield* other.get(key))
        const state = yield* stateOf(registration)
        expect(kv.value).toBe("http://10.0.0.1:8080")
        expect(state._tag === "Registered" && state.lease).toBe(kv.lease)
        yield* Effect.log(`[measure] first registration (grant + put): ${took.toFixed(1)} ms`)
      })
    )

    it.scoped("closing the scope removes the key at once: a watcher sees the delete", () =>
      Effect.gen(function* () {
        const server = yield* EtcdServer.EtcdServer
        const client = yield* EtcdClient.make(server.clientOptions)
        const other = yield* observer
        const ttl = yield* TtlOption.make({ heartbeat: "1 second", ttl: "10 seconds" })
        const key = `/registrar-${run}/close/1`
        const scope = yield* Scope.make()
        yield* Registrar.make({ key, value: "v", ttl }).pipe(
          Effect.provideService(EtcdClient.EtcdClient, client),
          Scope.extend(scope)
        )
        const changes = yield* watchKey(other, key)
        const closing = Date.now()
        yield* Scope.close(scope, Exit.void)
        // gone when close returns: not left to a 10 s TTL
        expect(Option.isNone(yield* other.get(key))).toBe(true)
        const change = yield* nextChange(changes, "the delete")
        expect(change._tag).toBe("Delete")
        yield* Effect.log(`[measure] scope close -> delete seen by a watcher: ${change.at - closing} ms`)
      })
    )

    it.scoped("a deregistration whose revoke goes first to a member that is down removes the key all the same", () =>
      Effect.gen(function* () {
        const server = yield* EtcdServer.EtcdServer
        const down = `http://127.0.0.1:${yield* closedPort}`
        const client = yield* EtcdClient.make({
          ...server.clientOptions,
          endpoints: [...server.clientOptions.endpoints, down]
        })
        const other = yield* observer
        const ttl = yield* TtlOption.make({ heartbeat: "1 second", ttl: "10 seconds" })
        for (let i = 0; i < 3; i++) {
          const key = `/registrar-${run}/revoke-down/${i}`
          const scope = yield* Scope.make()
          const registration = yield* Registrar.make({ key, value: "v", ttl }).pipe(
            Effect.provideService(EtcdClient.EtcdClient, client),
            Scope.extend(scope)
          )
          // the pool's shuffle of two members, with Math.random near 1, puts the second (the one down)
          // first: the revoke is sent to it, fails, and goes again through the pool, which fails over
          yield* Effect.acquireUseRelease(
            Effect.sync(() => vi.spyOn(Math, "random").mockReturnValue(0.99)),
            () => registration.deregister,
            (spy) => Effect.sync(() => spy.mockRestore())
          )
          expect((yield* stateOf(registration))._tag).toBe("Deregistered")
          // gone at once, not left to its 10 s TTL
          expect(Option.isNone(yield* other.get(key))).toBe(true)
          yield* Scope.close(scope, Exit.void)
        }
      })
    )

    it.scoped("a deregistration ends while a test fakes the timers (setImmediate included)", () =>
      Effect.gen(function* () {
        const server = yield* EtcdServer.EtcdServer
        const client = yield* EtcdClient.make(server.clientOptions)
        const other = yield* observer
        const ttl = yield* TtlOption.make({ heartbeat: "1 second", ttl: "10 seconds" })
        const key = `/registrar-${run}/fake-timers/1`
        const registration = yield* Registrar.make({ key, value: "v", ttl }).pipe(
          Effect.provideService(EtcdClient.EtcdClient, client)
        )
        // the faked timers never fire by themselves; the safety net is the test's own timeout
        yield* Effect.acquireUseRelease(
          Effect.sync(() => vi.useFakeTimers({ toFake: ["setImmediate", "setTimeout", "clearTimeout"] })),
          () => registration.deregister,
          () => Effect.sync(() => vi.useRealTimers())
        )
        expect((yield* stateOf(registration))._tag).toBe("Deregistered")
        expect(Option.isNone(yield* other.get(key))).toBe(true)
      })
    )

    it.scoped(
      "a client wrapped by a prototype or a proxy that replaces grant, put and revoke: they are the ones called",
      () =>
        Effect.gen(function* () {
          const server = yield* EtcdServer.EtcdServer
          const client = yield* EtcdClient.make(server.clientOptions)
          const other = yield* observer
          const ttl = yield* TtlOption.make({ heartbeat: "1 second", ttl: "10 seconds" })
          const calls: Array<string> = []
          const replaced = {
            grant: (ttlSeconds: number) =>
              Effect.zipRight(
                Effect.sync(() => calls.push("grant")),
                client.grant(ttlSeconds)
              ),
            put: (...args: Parameters<EtcdClient.EtcdClient["put"]>) =>
              Effect.zipRight(
                Effect.sync(() => calls.push("put")),
                client.put(...args)
              ),
            revoke: (lease: EtcdClient.LeaseId) =>
              Effect.zipRight(
                Effect.sync(() => calls.push("revoke")),
                client.revoke(lease)
              )
          }
          const byPrototype: EtcdClient.EtcdClient = Object.assign(
            Object.create(client) as EtcdClient.EtcdClient,
            replaced
          )
          const byProxy = new Proxy(client, {
            get: (target, property, receiver) =>
              typeof property === "string" && property in replaced
                ? replaced[property as keyof typeof replaced]
                : Reflect.get(target, property, receiver)
          })
          for (const [name, wrapper] of [
            ["prototype", byPrototype],
            ["proxy", byProxy]
          ] as const) {
            calls.length = 0
            const key = `/registrar-${run}/wrapped/${name}`
            const scope = yield* Scope.make()
            yield* Registrar.make({ key, value: "v", ttl }).pipe(
              Effect.provideService(EtcdClient.EtcdClient, wrapper),
              Scope.extend(scope)
            )
            yield* Scope.close(scope, Exit.void)
            expect(calls).toEqual(["grant", "put", "revoke"])
            expect(Option.isNone(yield* other.get(key))).toBe(true)
          }
        })
    )

    it.scoped("a child process killed with SIGKILL leaves a key that expires within TTL + 1 s", () =>
      Effect.gen(function* () {
        const server = yield* EtcdServer.EtcdServer
        const other = yield* observer
        const key = `/registrar-${run}/sigkill/1`
        const child = yield* spawnChild(server.clientUrl, key, 500, 2000)
        yield* awaitRegisteredChild(child)
        const changes = yield* watchKey(other, key)
        expect(Option.isSome(yield* other.get(key))).toBe(true)
        const killedAt = Date.now()
        process.kill(child.pid, "SIGKILL")
        const exit = yield* Deferred.await(child.exit)
        expect(exit.signal).toBe("SIGKILL")
        const change = yield* nextChange(changes, "the lease to expire")
        const took = change.at - killedAt
        expect(change._tag).toBe("Delete")
        expect(took).toBeLessThanOrEqual(3000)
        yield* Effect.log(`[measure] SIGKILL -> key expired (TTL 2 s): ${took} ms`)
      })
    )

    for (const signal of ["SIGTERM", "SIGINT"] as const) {
      it.scoped(`a child process that gets ${signal} removes its key before it exits`, () =>
        Effect.gen(function* () {
          const server = yield* EtcdServer.EtcdServer
          const other = yield* observer
          const key = `/registrar-${run}/${signal.toLowerCase()}/1`
          // a 30 s TTL: expiry cannot be what removes the key here
          const child = yield* spawnChild(server.clientUrl, key, 1000, 30_000)
          const { lease } = yield* awaitRegisteredChild(child)
          const changes = yield* watchKey(other, key)
          expect(Option.getOrThrow(yield* other.get(key)).lease).toBe(lease)
          const signalledAt = Date.now()
          process.kill(child.pid, signal)
          const exit = yield* Deferred.await(child.exit).pipe(within(30, "the child to exit"))
          const exitedAt = Date.now()
          // gone by the time it exited
          expect(Option.isNone(yield* other.get(key))).toBe(true)
          expect(exit.code).toBe(0)
          const change = yield* nextChange(changes, "the delete")
          expect(change._tag).toBe("Delete")
          yield* Effect.log(
            `[measure] ${signal} -> key deleted: ${change.at - signalledAt} ms, process exited: ${exitedAt - signalledAt} ms`
          )
        })
      )
    }

    it.scoped("a key deleted by hand comes back on the same lease", () =>
      Effect.gen(function* () {
        const server = yield* EtcdServer.EtcdServer
        const client = yield* EtcdClient.make(server.clientOptions)
        const other = yield* observer
        const ttl = yield* TtlOption.make({ heartbeat: "1 second", ttl: "3 seconds" })
        const key = `/registrar-${run}/deleted/1`
        const registration = yield* Registrar.make({ key, value: "v", ttl }).pipe(
          Effect.provideService(EtcdClient.EtcdClient, client)
        )
        const state = yield* stateOf(registration)
        const changes = yield* watchKey(other, key)
        const deleted = yield* other.delete(key)
        expect(deleted.deleted).toBe(1)
        const gone = yield* nextChange(changes, "our delete")
        expect(gone._tag).toBe("Delete")
        const back = yield* nextChange(changes, "the key to be put back")
        expect(back._tag).toBe("Put")
        const kv = Option.getOrThrow(yield* other.get(key))
        expect(kv.value).toBe("v")
        expect(kv.lease).toBe(state._tag === "Registered" ? state.lease : "none")
        yield* Effect.log(`[measure] key deleted by hand -> put back: ${back.at - gone.at} ms (as seen by a watcher)`)
      })
    )

    it.scoped("a lease revoked by hand: the key comes back on a new lease", () =>
      Effect.gen(function* () {
        const server = yield* EtcdServer.EtcdServer
        const client = yield* EtcdClient.make(server.clientOptions)
        const other = yield* observer
        const ttl = yield* TtlOption.make({ heartbeat: "1 second", ttl: "3 seconds" })
        const key = `/registrar-${run}/revoked/1`
        const registration = yield* Registrar.make({ key, value: "v", ttl }).pipe(
          Effect.provideService(EtcdClient.EtcdClient, client)
        )
        const first = Option.getOrThrow(yield* other.get(key)).lease!
        const changes = yield* watchKey(other, key)
        yield* other.revoke(first)
        expect((yield* nextChange(changes, "the revocation's delete"))._tag).toBe("Delete")
        expect((yield* nextChange(changes, "the key to be put back"))._tag).toBe("Put")
        const kv = Option.getOrThrow(yield* other.get(key))
        expect(kv.lease).not.toBe(first)
        const state = yield* awaitState(registration, (s) => s._tag === "Registered", "Registered")
        expect(state._tag === "Registered" && state.lease).toBe(kv.lease)
      })
    )

    it.scoped("registrations of one client share a lease; revoking it puts every key back on one new lease", () =>
      Effect.gen(function* () {
        const server = yield* EtcdServer.EtcdServer
        const client = yield* EtcdClient.make(server.clientOptions)
        const other = yield* observer
        const ttl = yield* TtlOption.make({ heartbeat: "1 second", ttl: "3 seconds" })
        const keys = ["a", "b", "c"].map((k) => `/registrar-${run}/shared/${k}`)
        const registrations = yield* Effect.forEach(keys, (key) =>
          Registrar.make({ key, value: "v", ttl }).pipe(Effect.provideService(EtcdClient.EtcdClient, client))
        )
        const leases = yield* Effect.forEach(keys, (key) =>
          Effect.map(other.get(key), (kv) => Option.getOrThrow(kv).lease)
        )
        expect(new Set(leases).size).toBe(1)
        const first = leases[0]!
        yield* other.revoke(first)
        const states = yield* Effect.forEach(registrations, (r) =>
          awaitState(r, (s) => s._tag === "Registered" && s.lease !== first, "re-registration")
        )
        const after = yield* Effect.forEach(keys, (key) =>
          Effect.map(other.get(key), (kv) => Option.getOrThrow(kv).lease)
        )
        expect(new Set(after).size).toBe(1)
        expect(after[0]).not.toBe(first)
        for (const state of states) expect(state._tag === "Registered" && state.lease).toBe(after[0])
        // another client does not share it
        const client2 = yield* EtcdClient.make(server.clientOptions)
        const apart = yield* Registrar.make({ key: `/registrar-${run}/shared/d`, value: "v", ttl }).pipe(
          Effect.provideService(EtcdClient.EtcdClient, client2)
        )
        const apartState = yield* stateOf(apart)
        expect(apartState._tag === "Registered" && apartState.lease).not.toBe(after[0])
      })
    )

    it.scoped(
      "etcd stopped for longer than the TTL, then started again: the key is back within a few heartbeats, with no call from the user",
      () =>
        Effect.gen(function* () {
          const server = yield* EtcdServer.EtcdServer
          const client = yield* EtcdClient.make(server.clientOptions)
          const ttl = yield* TtlOption.make({ heartbeat: "500 millis", ttl: "2 seconds" })
          const key = `/registrar-${run}/outage/1`
          const registration = yield* Registrar.make({ key, value: "v", ttl }).pipe(
            Effect.provideService(EtcdClient.EtcdClient, client)
          )
          const first = yield* stateOf(registration)
          const stoppedAt = Date.now()
          yield* server.stop
          // the TTL has passed without a keep-alive: the Registrar gives the lease up
          const lost = yield* awaitState(registration, (s) => s._tag === "Retrying", "the lease to be given up")
          const lostAt = Date.now()
          expect(lost._tag === "Retrying" && ["Unavailable", "Timeout"].includes(lost.error.reason)).toBe(true)
          // and keeps trying while etcd is down
          yield* awaitState(
            registration,
            (s) => s._tag === "Retrying" && s.attempt >= 3,
            "a few re-registration attempts"
          )
          yield* server.start
          const startedAt = Date.now()
          const back = yield* awaitState(registration, (s) => s._tag === "Registered", "the re-registration")
          const backAt = Date.now()
          const other = yield* observer
          const kv = Option.getOrThrow(yield* other.get(key))
          expect(kv.value).toBe("v")
          expect(back._tag === "Registered" && back.lease).toBe(kv.lease)
          expect(first._tag === "Registered" && first.lease).not.toBe(kv.lease)
          // a few heartbeats: the 2 s backoff cap, plus the client reconnecting
          expect(backAt - startedAt).toBeLessThanOrEqual(5000)
          yield* Effect.log(
            `[measure] etcd stopped -> lease given up: ${lostAt - stoppedAt} ms; etcd healthy again -> re-registered: ${backAt - startedAt} ms`
          )
        })
    )
  })
})
