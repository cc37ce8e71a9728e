/**
 * Security against a real etcd spawned by the test kit: client-certificate
 * auth refuses a client without a certificate with a typed error; with etcd
 * auth on, a user registers where its role lets it write and gets
 * PermissionDenied elsewhere, a read-only user subscribes, and no password ever
 * shows in a log line or in an error's message, cause or printed form.
 */
import { describe, expect, layer } from "@effect/vitest"
import * as Cause from "effect/Cause"
import * as ConfigProvider from "effect/ConfigProvider"
import * as Effect from "effect/Effect"
import * as Fiber from "effect/Fiber"
import * as Layer from "effect/Layer"
import * as Option from "effect/Option"
import * as Redacted from "effect/Redacted"
import * as Stream from "effect/Stream"
import { randomUUID } from "node:crypto"
import { inspect } from "node:util"
import * as EtcdClient from "../../src/EtcdClient.js"
import * as Registrar from "../../src/Registrar.js"
import * as Subscriber from "../../src/Subscriber.js"
import { EtcdAuth, EtcdServer } from "../../src/testing/index.js"
import * as TtlOption from "../../src/TtlOption.js"
import { etcd3 } from "../testing-helpers.js"
import { awaitInstances, captureLogs, echoFactory, measure, timed, unhandledRejections, within } from "./support.js"

const run = randomUUID().slice(0, 8)

/** Every printed form of an error a user might log or show. */
const printed = (error: unknown): string =>
  [
    String(error),
    error instanceof Error ? error.message : "",
    inspect(error, { depth: 20 }),
    Cause.pretty(Cause.fail(error)),
    JSON.stringify(error) ?? ""
  ].join("\n")

describe("Reliability: security", () => {
  layer(EtcdServer.layer({ tls: true }), { excludeTestServices: true, timeout: "60 seconds" })((it) => {
    it.scoped("client-certificate auth: a client without a certificate is refused with a typed error", () =>
      Effect.gen(function* () {
        const server = yield* EtcdServer.EtcdServer
        const rejections = yield* unhandledRejections
        const tls = server.tls!
        // the kit's client, with its certificate: works
        const good = yield* EtcdClient.make(server.clientOptions)
        yield* good.put(`/reliability-${run}/tls/a`, "1")
        // the CA only, no client certificate
        const [noCert, took] = yield* timed(
          Effect.flip(EtcdClient.make({ endpoints: server.clientUrls, caCert: tls.caCert, dialTimeout: "2 seconds" }))
        )
        expect(noCert._tag).toBe("EtcdError")
        expect(noCert._tag === "EtcdError" && ["Unavailable", "AuthFailed"].includes(noCert.reason)).toBe(true)
        expect(took).toBeLessThan(3000)
        // no TLS files at all (the system's roots do not know the kit's CA)
        const noFiles = yield* Effect.flip(EtcdClient.make({ endpoints: server.clientUrls, dialTimeout: "2 seconds" }))
        expect(noFiles._tag).toBe("EtcdError")
        // a registration through such a client never starts: the layer fails with the typed error
        const ttl = yield* TtlOption.make({ heartbeat: "500 millis", ttl: "2 seconds" })
        const viaLayer = yield* Effect.flip(
          Layer.build(
            Registrar.layer({ key: `/reliability-${run}/tls/b`, value: "v", ttl }).pipe(
              Layer.provide(
                EtcdClient.layer({ endpoints: server.clientUrls, caCert: tls.caCert, dialTimeout: "2 seconds" })
              )
            )
          ).pipe(Effect.scoped)
        )
        expect(viaLayer._tag).toBe("EtcdError")
        expect(Option.isNone(yield* good.get(`/reliability-${run}/tls/b`))).toBe(true)
        expect(rejections.reasons).toEqual([])
        yield* measure("security: client without certificate -> typed error", took)
      })
    )
  })

  layer(EtcdServer.layer(), { excludeTestServices: true, timeout: "60 seconds" })((it) => {
    it.scoped(
      "etcd auth: a user registers where its role may write and gets PermissionDenied elsewhere; a read-only user subscribes; no password shows in logs or errors",
      () =>
        captureLogs((logs) =>
          Effect.gen(function* () {
            const server = yield* EtcdServer.EtcdServer
            const rejections = yield* unhandledRejections
            const passwords = {
              root: `root-pw-${run}`,
              foo: `foo-pw-${run}`,
              reader: `reader-pw-${run}`,
              wrong: `wrong-pw-${run}`
            }
            const rootPassword = Redacted.make(passwords.root)
            yield* EtcdAuth.enable(server, rootPassword)
            yield* EtcdAuth.createRole(server, {
              rootPassword,
              role: "foo-writer",
              permissions: [{ prefix: "/services/foo/", permission: "ReadWrite" }]
            })
            yield* EtcdAuth.createUser(server, {
              rootPassword,
              user: "foo",
              password: Redacted.make(passwords.foo),
              roles: ["foo-writer"]
            })
            yield* EtcdAuth.createRole(server, {
              rootPassword,
              role: "services-reader",
              permissions: [{ prefix: "/services/", permission: "Read" }]
            })
            yield* EtcdAuth.createUser(server, {
              rootPassword,
              user: "reader",
              password: Redacted.make(passwords.reader),
              roles: ["services-reader"]
            })
            const root = yield* etcd3(server.clientUrls, { user: { name: "root", password: rootPassword } })
            const leases = Effect.promise(() => root.leaseClient.leaseLeases()).pipe(
              Effect.map((r) => r.leases.map((l) => l.ID).sort())
            )
            const errors: Array<unknown> = []
            const ttl = yield* TtlOption.make({ heartbeat: "500 millis", ttl: "2 seconds" })

            const foo = yield* EtcdClient.make({
              endpoints: server.clientUrls,
              username: "foo",
              password: Redacted.make(passwords.foo)
            })
            const registered = yield* Registrar.make({ key: "/services/foo/a", value: "http://foo-a:8080", ttl }).pipe(
              Effect.provideService(EtcdClient.EtcdClient, foo)
            )
            expect((yield* registered.state.get)._tag).toBe("Registered")

            const leasesBefore = yield* leases
            const denied = yield* Effect.flip(
              Registrar.make({ key: "/services/bar/a", value: "http://foo-a:8080", ttl }).pipe(
                Effect.provideService(EtcdClient.EtcdClient, foo)
              )
            )
            errors.push(denied)
            expect(denied).toMatchObject({ _tag: "EtcdError", reason: "PermissionDenied" })
            // nothing by halves: the lease granted for it was revoked
            expect(yield* leases).toEqual(leasesBefore)
            const deniedPut = yield* Effect.flip(foo.put("/services/bar/b", "x"))
            errors.push(deniedPut)
            expect(deniedPut).toMatchObject({ _tag: "EtcdError", operation: "put", reason: "PermissionDenied" })

            // the read-only user sees the registration, and may not register
            const reader = yield* EtcdClient.make({
              endpoints: server.clientUrls,
              username: "reader",
              password: Redacted.make(passwords.reader)
            })
            const subscriber = yield* Subscriber.make({ prefix: "/services/", factory: echoFactory }).pipe(
              Effect.provideService(EtcdClient.EtcdClient, reader)
            )
            yield* awaitInstances(
              subscriber,
              new Map([["/services/foo/a", "http://foo-a:8080"]]),
              30,
              "the reader to see the registration"
            )
            const readerDenied = yield* Effect.flip(
              Registrar.make({ key: "/services/foo/r", value: "http://r:8080", ttl }).pipe(
                Effect.provideService(EtcdClient.EtcdClient, reader)
              )
            )
            errors.push(readerDenied)
            expect(readerDenied).toMatchObject({ _tag: "EtcdError", reason: "PermissionDenied" })

            // a subscriber where the user may not read: visible as Failing with PermissionDenied
            const blind = yield* Subscriber.make({ prefix: "/elsewhere/", factory: echoFactory }).pipe(
              Effect.provideService(EtcdClient.EtcdClient, foo)
            )
            const failing = yield* blind.state.changes.pipe(
              Stream.filter((state) => state._tag === "Failing"),
              Stream.runHead,
              Effect.map(Option.getOrThrow),
              within(30, "the subscriber without read permission to report Failing")
            )
            expect(failing._tag === "Failing" && failing.error.reason).toBe("PermissionDenied")
            errors.push(failing._tag === "Failing" ? failing.error : undefined)

            // a wrong password, through the options and through the environment
            const wrong = yield* Effect.flip(
              EtcdClient.make({
                endpoints: server.clientUrls,
                username: "foo",
                password: Redacted.make(passwords.wrong),
                dialTimeout: "2 seconds"
              })
            )
            errors.push(wrong)
            expect(wrong).toMatchObject({ _tag: "EtcdError", reason: "AuthFailed" })
            const fromConfig = yield* Effect.flip(
              Layer.build(EtcdClient.layerConfig()).pipe(
                Effect.scoped,
                Effect.withConfigProvider(
                  ConfigProvider.fromMap(
                    new Map([
                      ["ETCD_ENDPOINTS", server.clientUrls.join(",")],
                      ["ETCD_USERNAME", "foo"],
                      ["ETCD_PASSWORD", passwords.wrong],
                      ["ETCD_DIAL_TIMEOUT", "2 seconds"]
                    ])
                  )
                )
              )
            )
            errors.push(fromConfig)
            expect(fromConfig).toMatchObject({ _tag: "EtcdError", reason: "AuthFailed" })
            // a password without a user name
            const half = yield* Effect.flip(
              EtcdClient.make({ endpoints: server.clientUrls, password: Redacted.make(passwords.foo) })
            )
            errors.push(half)
            expect(half).toMatchObject({ _tag: "InvalidOptions", option: "username" })
            yield* Effect.logWarning("the options of the last client", {
              endpoints: server.clientUrls,
              password: Redacted.make(passwords.foo)
            })

            // deregistering logs too
            yield* registered.deregister
            // the capture saw the library's lines: register, the denied listing, deregister, and ours
            for (const expected of ["message=register", "PermissionDenied", "message=deregister", "the options"]) {
              expect(logs.lines.some((line) => line.includes(expected))).toBe(true)
            }
            for (const password of Object.values(passwords)) {
              expect(logs.lines.filter((line) => line.includes(password))).toEqual([])
              for (const error of errors) expect(printed(error)).not.toContain(password)
            }
            expect(rejections.reasons).toEqual([])
          })
        )
    )
  })

  layer(EtcdServer.layer(), { excludeTestServices: true, timeout: "60 seconds" })((it) => {
    it.scoped(
      "a user whose role may read only its prefix: watchPrefix reads the revision on the prefix, and a subscriber follows",
      () =>
        Effect.gen(function* () {
          const server = yield* EtcdServer.EtcdServer
          const rootPassword = Redacted.make(`root-pw-${run}`)
          const password = Redacted.make(`lim-pw-${run}`)
          yield* EtcdAuth.enable(server, rootPassword)
          yield* EtcdAuth.createRole(server, {
            rootPassword,
            role: "lim-writer",
            permissions: [{ prefix: "/services/lim/", permission: "ReadWrite" }]
          })
          yield* EtcdAuth.createUser(server, { rootPassword, user: "lim", password, roles: ["lim-writer"] })
          const client = yield* EtcdClient.make({ endpoints: server.clientUrls, username: "lim", password })
          // the store revision alone reads outside the prefix: documented as such
          expect(yield* Effect.flip(client.revision)).toMatchObject({ reason: "PermissionDenied" })
          // go-kit's WatchPrefix: a signal at once, then one after a change (it read the revision before)
          const signals = yield* Stream.take(client.watchPrefix("/services/lim"), 2).pipe(
            Stream.runCollect,
            Effect.fork
          )
          const sub = yield* Subscriber.make({ prefix: "/services/lim", factory: echoFactory }).pipe(
            Effect.provideService(EtcdClient.EtcdClient, client)
          )
          yield* client.put("/services/lim/a", "http://a:8080")
          const collected = yield* within(10, "two watchPrefix signals")(Fiber.join(signals))
          expect(collected.length).toBe(2)
          yield* awaitInstances(sub, new Map([["/services/lim/a", "http://a:8080"]]), 10, "the subscriber to see it")
        })
    )
  })
})
