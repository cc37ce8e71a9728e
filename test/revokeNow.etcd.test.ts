import { describe, expect, layer } from "@effect/vitest"
import { vi } from "vitest"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Scope from "effect/Scope"
import * as Net from "node:net"
import * as EtcdClient from "../src/EtcdClient.js"
import { revokeNow } from "../src/internal/client.js"
import { EtcdServer } from "../src/testing/index.js"
import * as Registrar from "../src/Registrar.js"
import * as TtlOption from "../src/TtlOption.js"

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

const timed = <A, E, R>(effect: Effect.Effect<A, E, R>) =>
  Effect.gen(function* () {
    const start = Date.now()
    const exit = yield* Effect.exit(effect)
    return { exit, ms: Date.now() - start }
  })

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
        const pooled = yield* withRandom(0, EtcdClient.make(options))
        const direct = yield* withRandom(0, EtcdClient.make(options))
        const l1 = yield* withRandom(0, pooled.grant(30))
        const l2 = yield* withRandom(0, direct.grant(30))
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

    it.scoped("TLS: revokeNow revokes", () =>
      Effect.gen(function* () {
        const own = yield* EtcdServer.make({ tls: true })
        const client = yield* EtcdClient.make(own.clientOptions)
        const lease = yield* client.grant(30)
        yield* client.put("/review/tls", "v", { lease })
        yield* Effect.suspend(() => revokeNow(client, lease).answer)
        expect((yield* client.get("/review/tls"))._tag).toBe("None")
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
  })
})
