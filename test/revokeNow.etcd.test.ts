import { describe, expect, layer } from "@effect/vitest"
import { vi } from "vitest"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Scope from "effect/Scope"
import * as Etcd3 from "etcd3"
import { ConnectionPool } from "etcd3/lib/connection-pool.js"
import * as Net from "node:net"
import * as EtcdClient from "../src/EtcdClient.js"
import { revokeNow } from "../src/internal/client.js"
import { EtcdServer } from "../src/testing/index.js"
import * as Registrar from "../src/Registrar.js"
import * as TtlOption from "../src/TtlOption.js"
import { closedPort } from "./testing-helpers.js"

/** A TCP listener that accepts connections and never answers (a hung member). */
const blackhole = Effect.acquireRelease(
  Effect.promise(
    () =>
      new Promise<{ port: number; server: Net.Server; sockets: Set<Net.Socket> }>((resolve) => {
        const sockets = new Set<Net.Socket>()
        const server = Net.createServer((s) => {
          sockets.add(s)
          s.on("error", () => undefined)
        })
        server.listen(0, "127.0.0.1", () => {
          const address = server.address()
          resolve({ port: typeof address === "object" && address !== null ? address.port : 0, server, sockets })
        })
      })
  ),
  ({ server, sockets }) =>
    Effect.sync(() => {
      for (const s of sockets) s.destroy()
      server.close()
    })
)

/** Runs `effect` with Math.random returning `value`. */
const withRandom = <A, E, R>(value: number, effect: Effect.Effect<A, E, R>) =>
  Effect.acquireUseRelease(
    Effect.sync(() => vi.spyOn(Math, "random").mockReturnValue(value)),
    () => effect,
    (spy) => Effect.sync(() => spy.mockRestore())
  )

/**
 * Two clients of `options`, one to revoke through etcd3's pool and one through
 * `revokeNow`, each with a lease of 30 s: made with `Math.random` at `random`,
 * which decides the member each one tries first.
 */
const twoClients = (options: EtcdClient.EtcdClientOptions, random: number) =>
  withRandom(
    random,
    Effect.gen(function* () {
      const pooled = yield* EtcdClient.make(options)
      const direct = yield* EtcdClient.make(options)
      return { pooled, direct, l1: yield* pooled.grant(30), l2: yield* direct.grant(30) }
    })
  )

const timed = <A, E, R>(effect: Effect.Effect<A, E, R>) =>
  Effect.gen(function* () {
    const start = Date.now()
    const exit = yield* Effect.exit(effect)
    return { exit, ms: Date.now() - start }
  })

/** What the sends of a revoke are counted on: etcd3's Lease service client, one class for every client. */
interface LeaseServiceClient {
  readonly leaseRevoke: (...args: Array<unknown>) => unknown
}

/**
 * Counts every revoke sent to a member, by any client of the process: a spy on
 * the class of etcd3's gRPC Lease clients (reached through a client of its own,
 * never connected), restored with the scope.
 */
const countedSends = Effect.acquireRelease(
  Effect.sync(() => {
    const probe = new Etcd3.Etcd3({ hosts: "http://127.0.0.1:1" })
    // etcd3 keeps its pool protected; its hosts hand out the gRPC service clients
    const pool = (
      probe as unknown as {
        readonly pool: { readonly hosts: ReadonlyArray<{ getServiceClient(name: string): unknown }> }
      }
    ).pool
    const proto = Object.getPrototypeOf(pool.hosts[0]!.getServiceClient("Lease")) as LeaseServiceClient
    probe.close()
    return vi.spyOn(proto, "leaseRevoke")
  }),
  (spy) => Effect.sync(() => spy.mockRestore())
)

/** The pool's `exec` (its way for every unary call), spied on: which calls went through it. */
const execCalls = Effect.acquireRelease(
  Effect.sync(() => vi.spyOn(ConnectionPool.prototype, "exec")),
  (spy) => Effect.sync(() => spy.mockRestore())
)

/**
 * A deregistration's revoke sent straight to a member (`revokeNow`, etcd3.ts's
 * `directRevoke`) against real etcd: it must end as etcd3's own call through
 * its pool would, in time and in what it fails with.
 *
 * The waits of 1.2 s are the members' circuit breakers' (half-open after 1 s),
 * which no event announces.
 */
describe("revokeNow against a real etcd", () => {
  layer(EtcdServer.layer(), { excludeTestServices: true, timeout: "60 seconds" })((it) => {
    it.scoped("a revoke whose first member is hung waits one request timeout at most, as the pool's own", () =>
      Effect.gen(function* () {
        const server = yield* EtcdServer.EtcdServer
        const hole = yield* blackhole
        const options = {
          ...server.clientOptions,
          endpoints: [...server.clientOptions.endpoints, `http://127.0.0.1:${hole.port}`],
          headerTimeoutPerRequest: "500 millis" as const
        }
        // Math.random 0: the live member first (creation, grant); 0.99: the hung one first
        const { direct, l1, l2, pooled } = yield* twoClients(options, 0)
        const pool = yield* withRandom(0.99, timed(pooled.revoke(l1)))
        const fast = yield* withRandom(0.99, timed(Effect.suspend(() => revokeNow(direct, l2).answer)))
        expect(Exit.isSuccess(pool.exit)).toBe(true)
        expect(Exit.isSuccess(fast.exit)).toBe(true)
        expect(pool.ms).toBeLessThan(750)
        expect(fast.ms).toBeLessThan(750)
      })
    )

    it.scoped(
      "a revoke that was sent and failed does not say 'not sent' (single member down, breaker testing it)",
      () =>
        Effect.gen(function* () {
          const own = yield* EtcdServer.make()
          const a = yield* EtcdClient.make(own.clientOptions)
          const b = yield* EtcdClient.make(own.clientOptions)
          const la = yield* a.grant(30)
          const lb = yield* b.grant(30)
          yield* own.stop
          // two failed attempts each: both clients' breakers open
          expect(Exit.isFailure(yield* Effect.exit(a.get("/x")))).toBe(true)
          expect(Exit.isFailure(yield* Effect.exit(b.get("/x")))).toBe(true)
          // past halfOpenAfter (1 s): the next call is the breaker's test, and is sent
          yield* Effect.sleep("1200 millis")
          const viaPool = yield* Effect.flip(a.revoke(la))
          const viaDirect = yield* Effect.flip(Effect.suspend(() => revokeNow(b, lb).answer))
          expect(viaDirect.reason).toBe(viaPool.reason)
          expect(viaDirect.detail).not.toMatch(/^not sent/)
        })
    )

    it.scoped("a hung single member whose breaker tests it: the revoke's Timeout, as through the pool", () =>
      Effect.gen(function* () {
        const own = yield* EtcdServer.make()
        const options = { ...own.clientOptions, headerTimeoutPerRequest: "500 millis" as const }
        const a = yield* EtcdClient.make(options)
        const b = yield* EtcdClient.make(options)
        const la = yield* a.grant(30)
        const lb = yield* b.grant(30)
        yield* own.pause
        yield* Effect.addFinalizer(() => own.resume)
        yield* Effect.all([Effect.exit(a.get("/x")), Effect.exit(b.get("/x"))], { concurrency: 2 })
        yield* Effect.sleep("1200 millis")
        const [viaPool, viaDirect] = yield* Effect.all(
          [Effect.flip(a.revoke(la)), Effect.flip(Effect.suspend(() => revokeNow(b, lb).answer))],
          { concurrency: 2 }
        )
        expect(viaDirect.reason).toBe(viaPool.reason)
      })
    )

    it.scoped(
      "a deregistration with its only member down (its breaker testing it): the error says what the revoke met",
      () =>
        Effect.gen(function* () {
          const own = yield* EtcdServer.make()
          const client = yield* EtcdClient.make(own.clientOptions)
          const ttl = yield* TtlOption.make({ heartbeat: "10 seconds", ttl: "30 seconds" })
          const scope = yield* Scope.make()
          const registration = yield* Registrar.make({ key: "/review/k", value: "v", ttl }).pipe(
            Effect.provideService(EtcdClient.EtcdClient, client),
            Scope.extend(scope)
          )
          yield* own.stop
          expect(Exit.isFailure(yield* Effect.exit(client.get("/x")))).toBe(true)
          yield* Effect.sleep("1200 millis")
          const error = yield* Effect.flip(registration.deregister)
          expect(error.reason).toBe("Unavailable")
          expect(error.detail).not.toMatch(/^not sent/)
          yield* Scope.close(scope, Exit.void)
        })
    )

    it.scoped("an unknown lease: LeaseNotFound through revokeNow as through the pool", () =>
      Effect.gen(function* () {
        const server = yield* EtcdServer.EtcdServer
        const client = yield* EtcdClient.make(server.clientOptions)
        const viaPool = yield* Effect.flip(client.revoke("123456789"))
        const viaDirect = yield* Effect.flip(Effect.suspend(() => revokeNow(client, "123456789").answer))
        expect(viaDirect.reason).toBe("LeaseNotFound")
        expect(viaDirect.detail).toBe(viaPool.detail)
      })
    )

    it.scoped("a closed client: the same error through revokeNow as through the pool", () =>
      Effect.gen(function* () {
        const server = yield* EtcdServer.EtcdServer
        const scope = yield* Scope.make()
        const client = yield* EtcdClient.make(server.clientOptions).pipe(Scope.extend(scope))
        const lease = yield* client.grant(30)
        yield* Scope.close(scope, Exit.void)
        const viaPool = yield* Effect.flip(client.revoke(lease))
        const viaDirect = yield* Effect.flip(Effect.suspend(() => revokeNow(client, lease).answer))
        expect(viaDirect.reason).toBe(viaPool.reason)
        expect(viaDirect.detail).toBe(viaPool.detail)
      })
    )

    it.scoped("the revoke is sent straight to a member, not through the pool, over plain http and over TLS", () =>
      Effect.gen(function* () {
        const server = yield* EtcdServer.EtcdServer
        const tls = yield* EtcdServer.make({ tls: true })
        for (const options of [server.clientOptions, tls.clientOptions]) {
          const client = yield* EtcdClient.make(options)
          const lease = yield* client.grant(30)
          yield* client.put("/revoke-now/direct", "v", { lease })
          const exec = yield* execCalls
          yield* Effect.suspend(() => revokeNow(client, lease).answer)
          expect(exec.mock.calls.filter((call) => call[1] === "leaseRevoke")).toEqual([])
          expect((yield* client.get("/revoke-now/direct"))._tag).toBe("None")
          exec.mockRestore()
        }
      })
    )

    it.scoped("every member down: no more sends than etcd3's own call through its pool", () =>
      Effect.gen(function* () {
        const own = yield* EtcdServer.make()
        const dead = yield* closedPort
        // [dead, live]: Math.random near 1 puts the live one first (creation, grants)
        const options = {
          ...own.clientOptions,
          endpoints: [`http://127.0.0.1:${dead}`, ...own.clientOptions.endpoints]
        }
        const { direct, l1, l2, pooled } = yield* twoClients(options, 0.99)
        yield* own.stop
        const sends = yield* countedSends
        expect(Exit.isFailure(yield* withRandom(0.99, Effect.exit(pooled.revoke(l1))))).toBe(true)
        const viaPool = sends.mock.calls.length
        sends.mockClear()
        const viaDirect = yield* withRandom(0.99, Effect.exit(Effect.suspend(() => revokeNow(direct, l2).answer)))
        expect(Exit.isFailure(viaDirect)).toBe(true)
        expect(viaPool).toBeGreaterThan(1)
        expect(sends.mock.calls.length).toBe(viaPool)
      })
    )

    it.scoped("one member hung, the other down: it fails with the reason of etcd3's own call, as soon", () =>
      Effect.gen(function* () {
        const own = yield* EtcdServer.make()
        const hole = yield* blackhole
        // [hung, live]: Math.random near 1 puts the live one first for creation and grants
        const options = {
          ...own.clientOptions,
          endpoints: [`http://127.0.0.1:${hole.port}`, ...own.clientOptions.endpoints],
          headerTimeoutPerRequest: "300 millis" as const
        }
        const { direct, l1, l2, pooled } = yield* twoClients(options, 0.99)
        yield* own.stop
        // Math.random 0: the hung member first, then the one down
        const viaPool = yield* withRandom(0, timed(Effect.flip(pooled.revoke(l1))))
        const viaDirect = yield* withRandom(0, timed(Effect.flip(Effect.suspend(() => revokeNow(direct, l2).answer))))
        const reason = (exit: typeof viaPool.exit) => (Exit.isSuccess(exit) ? exit.value.reason : "no error")
        expect(reason(viaDirect.exit)).toBe(reason(viaPool.exit))
        // one request timeout (300 ms) for the hung member in both; a second one would be 300 ms more
        expect(viaDirect.ms).toBeLessThan(viaPool.ms + 200)
      })
    )
  })
})
