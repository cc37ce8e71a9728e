/**
 * Bad input against a real etcd spawned by the test kit: every case gives a
 * typed error or a logged skip, writes nothing by halves (no key, no lease left
 * behind, the store revision unchanged where nothing may be written), crashes
 * nothing, and leaves no unhandled promise rejection.
 */
import { describe, expect, layer } from "@effect/vitest"
import * as ConfigProvider from "effect/ConfigProvider"
import * as Context from "effect/Context"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Option from "effect/Option"
import * as Redacted from "effect/Redacted"
import * as Stream from "effect/Stream"
import * as Fs from "node:fs/promises"
import * as Os from "node:os"
import * as Path from "node:path"
import { randomUUID } from "node:crypto"
import * as Balancer from "../../src/Balancer.js"
import * as EtcdClient from "../../src/EtcdClient.js"
import * as Registrar from "../../src/Registrar.js"
import * as Retry from "../../src/Retry.js"
import * as Subscriber from "../../src/Subscriber.js"
import { EtcdServer } from "../../src/testing/index.js"
import * as TtlOption from "../../src/TtlOption.js"
import { etcd3 } from "../testing-helpers.js"
import { awaitInstances, captureLogs, echoFactory, measure, timed, unhandledRejections, within } from "./support.js"

const run = randomUUID().slice(0, 8)

/**
 * Runs a case with a watch on unhandled rejections: none may fire while it runs
 * or on the turn of the event loop after it.
 */
const guarded = <A, E, R>(self: Effect.Effect<A, E, R>) =>
  Effect.gen(function* () {
    const rejections = yield* unhandledRejections
    const result = yield* self
    yield* Effect.promise(() => new Promise<void>((resolve) => setImmediate(resolve)))
    expect(rejections.reasons).toEqual([])
    return result
  })

/** A fresh client of the running server (its own connection and its own lease groups). */
const connect = Effect.flatMap(EtcdServer.EtcdServer, (server) => EtcdClient.make(server.clientOptions))

/** What may not change when nothing is written: the store revision and the set of leases. */
const snapshot = Effect.gen(function* () {
  const server = yield* EtcdServer.EtcdServer
  const raw = yield* etcd3(server.clientUrls)
  const client = yield* connect
  const revision = yield* client.revision
  const leases = yield* Effect.promise(() => raw.leaseClient.leaseLeases())
  return { revision, leases: leases.leases.map((l) => l.ID).sort() }
})

const ttl = TtlOption.make({ heartbeat: "500 millis", ttl: "2 seconds" })

describe("Reliability: bad input", () => {
  layer(EtcdServer.layer(), { excludeTestServices: true, timeout: "60 seconds" })((it) => {
    it.scoped("an empty key is NoKey, before anything reaches etcd", () =>
      guarded(
        Effect.gen(function* () {
          const client = yield* connect
          const before = yield* snapshot
          const viaRegistrar = yield* Effect.flip(
            Registrar.make({ key: "", value: "http://a:8080", ttl: yield* ttl }).pipe(
              Effect.provideService(EtcdClient.EtcdClient, client)
            )
          )
          expect(viaRegistrar._tag).toBe("NoKey")
          expect(viaRegistrar.message).toBe("no key provided")
          const viaClient = yield* Effect.flip(client.register({ key: "", value: "http://a:8080" }))
          expect(viaClient._tag).toBe("NoKey")
          expect(yield* snapshot).toEqual(before)
        })
      )
    )

    it.scoped("an empty value is NoValue, before anything reaches etcd", () =>
      guarded(
        Effect.gen(function* () {
          const client = yield* connect
          const before = yield* snapshot
          const key = `/reliability-${run}/empty-value/a`
          const viaRegistrar = yield* Effect.flip(
            Registrar.make({ key, value: "", ttl: yield* ttl }).pipe(
              Effect.provideService(EtcdClient.EtcdClient, client)
            )
          )
          expect(viaRegistrar._tag).toBe("NoValue")
          expect(viaRegistrar.message).toBe("no value provided")
          const viaClient = yield* Effect.flip(client.register({ key, value: "", ttl: yield* ttl }))
          expect(viaClient._tag).toBe("NoValue")
          expect(yield* snapshot).toEqual(before)
        })
      )
    )

    it.scoped("a 2 MiB value is EtcdError TooLarge; no key and no lease are left behind", () =>
      guarded(
        Effect.gen(function* () {
          const client = yield* connect
          const key = `/reliability-${run}/too-large/a`
          const value = "x".repeat(2 * 1024 * 1024)
          const before = yield* snapshot
          const viaRegistrar = yield* Effect.flip(
            Registrar.make({ key, value, ttl: yield* ttl }).pipe(Effect.provideService(EtcdClient.EtcdClient, client))
          )
          expect(viaRegistrar).toMatchObject({ _tag: "EtcdError", reason: "TooLarge" })
          // the request was at fault, not the member: the client goes on working at once
          yield* client.put(`${key}-small`, "small")
          const viaClient = yield* Effect.flip(client.register({ key, value, ttl: yield* ttl }))
          expect(viaClient).toMatchObject({ _tag: "EtcdError", reason: "TooLarge" })
          const plain = yield* Effect.flip(client.put(key, value))
          expect(plain).toMatchObject({ _tag: "EtcdError", operation: "put", reason: "TooLarge" })
          // the leases granted for the registrations were revoked when the put failed
          const after = yield* snapshot
          expect(Option.isNone(yield* client.get(key))).toBe(true)
          expect(after.leases).toEqual(before.leases)
          // and the client still works
          yield* client.put(key, "small")
          expect(Option.map(yield* client.get(key), (kv) => kv.value)).toEqual(Option.some("small"))
        })
      )
    )

    it.scoped(
      "a value that is not UTF-8, written by another client: KeyValue.malformed, and the subscriber logs and skips it",
      () =>
        guarded(
          captureLogs((logs) =>
            Effect.gen(function* () {
              const server = yield* EtcdServer.EtcdServer
              const client = yield* connect
              const raw = yield* etcd3(server.clientUrls)
              const prefix = `/reliability-${run}/not-utf8/`
              const bytes = Buffer.from([0xff, 0xfe, 0x00, 0xc3])
              yield* client.put(`${prefix}good-1`, "http://good-1:8080")
              // one subscriber before the bad value arrives (through the watch), one after (through the list)
              const early = yield* Subscriber.make({ prefix, factory: echoFactory }).pipe(
                Effect.provideService(EtcdClient.EtcdClient, client)
              )
              yield* Effect.promise(() => raw.put(`${prefix}bad`).value(bytes).exec())
              yield* client.put(`${prefix}good-2`, "http://good-2:8080")
              const expected = new Map([
                [`${prefix}good-1`, "http://good-1:8080"],
                [`${prefix}good-2`, "http://good-2:8080"]
              ])
              yield* awaitInstances(early, expected, 30, "the early subscriber to hold the good instances only")
              const late = yield* Subscriber.make({ prefix, factory: echoFactory }).pipe(
                Effect.provideService(EtcdClient.EtcdClient, client)
              )
              yield* awaitInstances(late, expected, 30, "the late subscriber to hold the good instances only")
              expect((yield* late.endpointSet.get).keys).toEqual([...expected.keys()])

              const kv = Option.getOrThrow(yield* client.get(`${prefix}bad`))
              expect(kv.malformed).toBe(true)
              expect(Option.getOrThrow(yield* client.get(`${prefix}good-1`)).malformed).toBe(false)
              const listed = yield* client.list(prefix)
              expect(listed.entries.filter((e) => e.malformed).map((e) => e.key)).toEqual([`${prefix}bad`])
              const skipped = logs.lines.filter(
                (line) => line.includes("level=WARN") && line.includes(`${prefix}bad`) && line.includes("UTF-8")
              )
              // logged by each subscriber
              expect(skipped.length).toBeGreaterThanOrEqual(2)
            })
          )
        )
    )

    it.scoped("an endpoint without scheme or with an unknown scheme is InvalidOptions, before any network call", () =>
      guarded(
        Effect.gen(function* () {
          const server = yield* EtcdServer.EtcdServer
          const hostPort = server.clientUrl.replace(/^http:\/\//, "")
          for (const endpoint of [hostPort, "localhost:2379", `ftp://${hostPort}`, `unix://${hostPort}`, "http://"]) {
            const [error, took] = yield* timed(Effect.flip(Effect.scoped(EtcdClient.make({ endpoints: [endpoint] }))))
            expect(error).toMatchObject({ _tag: "InvalidOptions", option: "endpoints" })
            expect(took).toBeLessThan(1000)
          }
          const none = yield* Effect.flip(Effect.scoped(EtcdClient.make({ endpoints: [] })))
          expect(none).toMatchObject({ _tag: "InvalidOptions", option: "endpoints" })
          // one bad endpoint among good ones is still an error: it can never work
          const mixed = yield* Effect.flip(Effect.scoped(EtcdClient.make({ endpoints: [server.clientUrl, hostPort] })))
          expect(mixed).toMatchObject({ _tag: "InvalidOptions", option: "endpoints" })
        })
      )
    )

    it.scoped("an endpoint without a port is InvalidOptions that says so, before any network call", () =>
      guarded(
        Effect.gen(function* () {
          const server = yield* EtcdServer.EtcdServer
          const host = new URL(server.clientUrl).hostname
          for (const endpoint of [`http://${host}`, `http://${host}/`, `http://${host}:`, "https://[::1]"]) {
            const [error, took] = yield* timed(Effect.flip(Effect.scoped(EtcdClient.make({ endpoints: [endpoint] }))))
            expect(error).toMatchObject({ _tag: "InvalidOptions", option: "endpoints" })
            expect(error.message).toContain(`${endpoint} has no port`)
            expect(took).toBeLessThan(1000)
          }
          // through the environment too, and one port-less endpoint among good ones is still an error
          const fromConfig = yield* Effect.flip(
            Layer.build(EtcdClient.layerConfig()).pipe(
              Effect.scoped,
              Effect.withConfigProvider(
                ConfigProvider.fromMap(new Map([["ETCD_ENDPOINTS", `${server.clientUrl},http://${host}`]]))
              )
            )
          )
          expect(fromConfig).toMatchObject({ _tag: "InvalidOptions", option: "endpoints" })
          expect(fromConfig.message).toBe(
            `invalid option endpoints: http://${host} has no port: add it, e.g. http://${host}:2379 (etcd's default client port)`
          )
          // with its port, the same host works
          const client = yield* EtcdClient.make({ endpoints: [server.clientUrl] })
          expect(yield* client.revision).toBeGreaterThan(0)
        })
      )
    )

    it.scoped(
      "etcd gone: a request its circuit breakers refuse says so with the failure before, not only cockatiel's words",
      () =>
        guarded(
          Effect.gen(function* () {
            const server = yield* EtcdServer.make()
            const client = yield* EtcdClient.make(server.clientOptions)
            yield* server.stop
            const messages: Array<string> = []
            for (let i = 0; i < 4; i++) {
              const error = yield* Effect.flip(client.put(`/bad-input-${run}/breaker`, "v"))
              expect(error).toMatchObject({ _tag: "EtcdError", reason: "Unavailable" })
              messages.push(error.message)
            }
            // the first failures are the refusals themselves; then the breaker refuses, naming the last one
            expect(messages[0]).toContain("ECONNREFUSED")
            const refused = messages.filter((m) => m.includes("tried again within a second"))
            expect(refused.length).toBeGreaterThan(0)
            for (const message of refused) expect(message).toContain("ECONNREFUSED")
            for (const message of messages) expect(message).not.toContain("Execution prevented")
          })
        )
    )

    it.scoped("an endpoint whose port is its scheme's default (:80, :443) is dialled on that port, not 2379", () =>
      guarded(
        Effect.gen(function* () {
          // nothing listens there: the refusal names the address dialled
          for (const [endpoint, address] of [
            ["http://127.0.0.1:80", "127.0.0.1:80"],
            ["https://127.0.0.1:443", "127.0.0.1:443"]
          ] as const) {
            const error = yield* Effect.flip(
              Effect.scoped(EtcdClient.make({ endpoints: [endpoint], dialTimeout: "1 second" }))
            )
            expect(error).toMatchObject({ _tag: "EtcdError", reason: "Unavailable" })
            expect(error.message).toContain(`ECONNREFUSED ${address}`)
          }
        })
      )
    )

    it.scoped("empty ETCD_USERNAME / ETCD_PASSWORD mean unset; a user name without password is still an error", () =>
      guarded(
        Effect.gen(function* () {
          const server = yield* EtcdServer.EtcdServer
          const fromEnv = (variables: Record<string, string>) =>
            Layer.build(EtcdClient.layerConfig()).pipe(
              Effect.map((context) => Context.get(context, EtcdClient.EtcdClient)),
              Effect.withConfigProvider(
                ConfigProvider.fromMap(new Map(Object.entries({ ETCD_ENDPOINTS: server.clientUrl, ...variables })))
              )
            )
          const unset: ReadonlyArray<Record<string, string>> = [
            { ETCD_USERNAME: "", ETCD_PASSWORD: "" },
            { ETCD_USERNAME: "" },
            { ETCD_PASSWORD: "" },
            { ETCD_USERNAME: "  ", ETCD_PASSWORD: "\t" }
          ]
          for (const variables of unset) {
            const revision = yield* Effect.scoped(Effect.flatMap(fromEnv(variables), (client) => client.revision))
            expect(revision).toBeGreaterThan(0)
          }
          const options = yield* Effect.withConfigProvider(
            EtcdClient.config,
            ConfigProvider.fromMap(
              new Map([
                ["ETCD_ENDPOINTS", server.clientUrl],
                ["ETCD_USERNAME", ""]
              ])
            )
          )
          expect(options.username).toBeUndefined()
          expect(options.password).toBeUndefined()
          // when the other one is set, an empty value is taken as given
          const withUser = yield* Effect.withConfigProvider(
            EtcdClient.config,
            ConfigProvider.fromMap(
              new Map([
                ["ETCD_ENDPOINTS", server.clientUrl],
                ["ETCD_USERNAME", "alice"],
                ["ETCD_PASSWORD", ""]
              ])
            )
          )
          expect(withUser.username).toBe("alice")
          expect(withUser.password === undefined ? undefined : Redacted.value(withUser.password)).toBe("")
          const noPassword = yield* Effect.flip(Effect.scoped(fromEnv({ ETCD_USERNAME: "alice" })))
          expect(noPassword).toMatchObject({ _tag: "InvalidOptions", option: "password" })
          const noUser = yield* Effect.flip(Effect.scoped(fromEnv({ ETCD_USERNAME: "", ETCD_PASSWORD: "secret" })))
          expect(noUser).toMatchObject({ _tag: "InvalidOptions", option: "username" })
        })
      )
    )

    it.scoped("an unresolvable host is a typed EtcdError within dialTimeout", () =>
      guarded(
        Effect.gen(function* () {
          const dialTimeout = 1000
          const [error, took] = yield* timed(
            Effect.flip(
              Effect.scoped(
                EtcdClient.make({
                  endpoints: ["http://no-such-host.invalid:2379"],
                  dialTimeout: Duration.millis(dialTimeout)
                })
              )
            )
          )
          expect(error).toMatchObject({ _tag: "EtcdError", operation: "connect", reason: "Unavailable" })
          expect(took).toBeLessThan(dialTimeout + 1000)
          yield* measure("bad input: unresolvable host -> typed error (dialTimeout 1 s)", took)
        })
      )
    )

    it.scoped("TLS files that are missing or not PEM are InvalidOptions naming the option", () =>
      guarded(
        Effect.gen(function* () {
          const dir = yield* Effect.acquireRelease(
            Effect.promise(() => Fs.mkdtemp(Path.join(Os.tmpdir(), "reliability-tls-"))),
            (d) => Effect.promise(() => Fs.rm(d, { recursive: true, force: true }))
          )
          const garbage = Path.join(dir, "garbage.pem")
          yield* Effect.promise(() => Fs.writeFile(garbage, "not a certificate"))
          const missing = Path.join(dir, "missing.pem")
          const endpoints = ["https://127.0.0.1:2379"]
          const cases = [
            [{ caCert: missing }, "caCert"],
            [{ caCert: garbage }, "caCert"],
            [{ cert: missing, key: garbage }, "cert"],
            [{ cert: garbage, key: garbage }, "cert"],
            [{ cert: missing }, "key"],
            [{ key: missing }, "cert"],
            [{ caCert: dir }, "caCert"]
          ] as const
          for (const [files, option] of cases) {
            const error = yield* Effect.flip(Effect.scoped(EtcdClient.make({ endpoints, ...files })))
            expect(error).toMatchObject({ _tag: "InvalidOptions", option })
          }
          // TLS files for plain http endpoints can never be used
          const plain = yield* Effect.flip(
            Effect.scoped(EtcdClient.make({ endpoints: ["http://127.0.0.1:2379"], caCert: garbage }))
          )
          expect(plain).toMatchObject({ _tag: "InvalidOptions" })
        })
      )
    )

    it.scoped("invalid TTL options are InvalidOptions, never clamped; a hand-built one is checked again", () =>
      guarded(
        Effect.gen(function* () {
          const cases = [
            [{ heartbeat: "100 millis", ttl: "10 seconds" }, "heartbeat"],
            [{ heartbeat: "1 second", ttl: "1 second" }, "ttl"],
            [{ heartbeat: "3 seconds", ttl: "5 seconds" }, "ttl"],
            [{ heartbeat: Number.NaN, ttl: "10 seconds" }, "heartbeat"],
            [{ heartbeat: "1 second", ttl: Duration.infinity }, "ttl"],
            [{ heartbeat: "banana" as Duration.DurationInput, ttl: "10 seconds" }, "heartbeat"]
          ] as const
          for (const [options, option] of cases) {
            const error = yield* Effect.flip(TtlOption.make(options))
            expect(error).toMatchObject({ _tag: "InvalidOptions", option })
          }
          const client = yield* connect
          const before = yield* snapshot
          // a record built by hand that breaks the rules
          const forged: TtlOption.TtlOption = {
            _tag: "TtlOption",
            heartbeat: Duration.millis(10),
            ttl: Duration.millis(20),
            ttlSeconds: 0
          }
          const error = yield* Effect.flip(
            Registrar.make({ key: `/reliability-${run}/forged-ttl/a`, value: "v", ttl: forged }).pipe(
              Effect.provideService(EtcdClient.EtcdClient, client)
            )
          )
          expect(error).toMatchObject({ _tag: "InvalidOptions", option: "heartbeat" })
          expect(yield* snapshot).toEqual(before)
        })
      )
    )

    it.scoped("zero and negative durations are InvalidOptions: client, TTL, subscriber, retry", () =>
      guarded(
        Effect.gen(function* () {
          const server = yield* EtcdServer.EtcdServer
          const values: ReadonlyArray<Duration.DurationInput> = [0, -1, "0 millis", Duration.zero]
          for (const value of values) {
            for (const option of ["dialTimeout", "dialKeepAlive", "headerTimeoutPerRequest"] as const) {
              const error = yield* Effect.flip(
                Effect.scoped(EtcdClient.make({ endpoints: server.clientUrls, [option]: value }))
              )
              expect(error).toMatchObject({ _tag: "InvalidOptions", option })
            }
            const heartbeat = yield* Effect.flip(TtlOption.make({ heartbeat: value, ttl: "10 seconds" }))
            expect(heartbeat).toMatchObject({ _tag: "InvalidOptions", option: "heartbeat" })
            const ttlError = yield* Effect.flip(TtlOption.make({ heartbeat: "1 second", ttl: value }))
            expect(ttlError).toMatchObject({ _tag: "InvalidOptions" })
            const retry = yield* Effect.flip(
              Retry.retry(Balancer.roundRobin(Effect.succeed([(_: void) => Effect.succeed("ok")])), {
                max: 3,
                timeout: value
              })
            )
            expect(retry).toMatchObject({ _tag: "InvalidOptions", option: "timeout" })
          }
          // a negative duration is reported as given, not as the zero that Duration decodes it to
          const negative = yield* Effect.flip(
            Effect.scoped(EtcdClient.make({ endpoints: server.clientUrls, dialTimeout: "-5 seconds" }))
          )
          expect(negative.message).toBe("invalid option dialTimeout: must be positive, got -5 seconds")
          const negativeTtl = yield* Effect.flip(TtlOption.make({ heartbeat: "1 second", ttl: "-5 seconds" }))
          expect(negativeTtl.message).toBe("invalid option ttl: must be positive, got -5 seconds")
          // the same bad input reads the same in every option
          for (const [input, reason] of [
            [Number.NaN, "not a duration: NaN"],
            [-5, "must be positive, got -5"],
            [[-5, 0], "must be positive, got [-5, 0]"]
          ] as const) {
            const reasons = [
              yield* Effect.flip(Effect.scoped(EtcdClient.make({ endpoints: server.clientUrls, dialTimeout: input }))),
              yield* Effect.flip(TtlOption.make({ heartbeat: input, ttl: "100 days" })),
              yield* Effect.flip(
                Retry.retry(Balancer.roundRobin(Effect.succeed([(_: void) => Effect.succeed("ok")])), {
                  max: 1,
                  timeout: input
                })
              ),
              yield* Effect.flip(
                Effect.scoped(
                  Subscriber.make({
                    prefix: `/reliability-${run}/same/`,
                    factory: echoFactory,
                    factoryTimeout: input
                  }).pipe(Effect.provide(EtcdClient.layerMemory))
                )
              )
            ].map((error) => (error._tag === "InvalidOptions" ? error.reason : error._tag))
            expect(reasons).toEqual([reason, reason, reason, reason])
          }
          const client = yield* connect
          for (const value of [-1, -1000]) {
            const error = yield* Effect.flip(
              Subscriber.make({
                prefix: `/reliability-${run}/negative/`,
                factory: echoFactory,
                invalidateOnError: value
              }).pipe(Effect.provideService(EtcdClient.EtcdClient, client))
            )
            expect(error).toMatchObject({ _tag: "InvalidOptions", option: "invalidateOnError" })
          }
        })
      )
    )

    it.scoped("retry with 0 attempts (or any non-positive or fractional count) is InvalidOptions", () =>
      guarded(
        Effect.gen(function* () {
          const balancer = Balancer.roundRobin(Effect.succeed([(_: void) => Effect.succeed("ok")]))
          for (const max of [0, -1, 1.5, Number.NaN, Number.POSITIVE_INFINITY]) {
            const error = yield* Effect.flip(Retry.retry(balancer, { max, timeout: "1 second" }))
            expect(error).toMatchObject({ _tag: "InvalidOptions", option: "max" })
          }
          const one = yield* Retry.retry(balancer, { max: 1, timeout: "1 second" })
          expect(yield* one(undefined)).toBe("ok")
        })
      )
    )

    it.scoped(
      "a factory that throws, dies or fails for one instance: that instance is logged and skipped, the others are served",
      () =>
        guarded(
          captureLogs((logs) =>
            Effect.gen(function* () {
              const client = yield* connect
              const prefix = `/reliability-${run}/factory/`
              yield* client.put(`${prefix}a`, "http://good-a:8080")
              yield* client.put(`${prefix}b`, "throws")
              yield* client.put(`${prefix}c`, "dies")
              yield* client.put(`${prefix}d`, "fails")
              const factory = (instance: string) => {
                // a plain `throw` from the factory function itself, not from inside an Effect
                if (instance === "throws") throw new Error("factory threw for throws")
                if (instance === "dies") return Effect.die(new Error("factory died for dies"))
                if (instance === "fails") return Effect.fail(new Error("factory failed for fails"))
                return echoFactory(instance)
              }
              const subscriber = yield* Subscriber.make({ prefix, factory }).pipe(
                Effect.provideService(EtcdClient.EtcdClient, client),
                within(30, "Subscriber.make to return")
              )
              // the instances are all known; only the good one has an endpoint
              expect([...(yield* subscriber.instances.get).keys()]).toEqual(
                ["a", "b", "c", "d"].map((k) => `${prefix}${k}`)
              )
              const set = yield* subscriber.endpointSet.get
              expect(set.keys).toEqual([`${prefix}a`])
              expect(yield* set.endpoints[0]!(undefined)).toBe("http://good-a:8080")
              // changes keep flowing after the bad ones
              yield* client.put(`${prefix}e`, "http://good-e:8080")
              yield* subscriber.endpointSet.changes.pipe(
                Stream.filter((s) => s.keys.length === 2),
                Stream.runHead,
                within(30, "the subscriber to add a good instance after the bad ones")
              )
              expect((yield* subscriber.state.get)._tag).toBe("Live")
              for (const key of ["b", "c", "d"]) {
                expect(
                  logs.lines.some(
                    (line) =>
                      line.includes("level=WARN") && line.includes(`${prefix}${key}`) && line.includes("factory")
                  )
                ).toBe(true)
              }
              expect(logs.lines.filter((line) => line.includes("failed unexpectedly"))).toEqual([])
            })
          )
        )
    )
  })
})
