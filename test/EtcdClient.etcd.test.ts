import { describe, expect, it, layer } from "@effect/vitest"
import * as Clock from "effect/Clock"
import * as ConfigProvider from "effect/ConfigProvider"
import * as Context from "effect/Context"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Fiber from "effect/Fiber"
import * as Layer from "effect/Layer"
import * as Option from "effect/Option"
import * as Redacted from "effect/Redacted"
import * as Schedule from "effect/Schedule"
import * as Stream from "effect/Stream"
import * as Fs from "node:fs/promises"
import * as Net from "node:net"
import * as Os from "node:os"
import * as Path from "node:path"
import * as Tls from "node:tls"
import * as EtcdClient from "../src/EtcdClient.js"
import { grantAndPut } from "../src/internal/client.js"
import * as EtcdAuth from "../src/testing/EtcdAuth.js"
import * as EtcdServer from "../src/testing/EtcdServer.js"
import * as EtcdTls from "../src/testing/EtcdTls.js"
import { contract } from "./contract/EtcdClientContract.js"
import { tcpProxy, within } from "./reliability/support.js"
import { closedPort, etcd3 } from "./testing-helpers.js"

contract("EtcdClient contract: real etcd", EtcdServer.layerClient.pipe(Layer.provide(EtcdServer.layer())), {
  advance: () => Effect.void,
  live: true
})

/** Elapsed wall time of an effect, in milliseconds. */
const timed = <A, E, R>(self: Effect.Effect<A, E, R>) =>
  Effect.gen(function* () {
    const start = performance.now()
    const result = yield* self
    return [result, performance.now() - start] as const
  })

/** A temporary directory, removed with the scope. */
const tempDir = Effect.acquireRelease(
  Effect.promise(() => Fs.mkdtemp(Path.join(Os.tmpdir(), "sd-etcd-tls-"))),
  (d) => Effect.promise(() => Fs.rm(d, { recursive: true, force: true }))
)

/** Why building a client with `options` (2 s to connect) fails. */
const connectError = (options: EtcdClient.EtcdClientOptions) =>
  Effect.flip(EtcdClient.make({ dialTimeout: "2 seconds", ...options }))

/** A loopback port whose server does `onConnection` with each connection (closed with the scope). */
const tcpServer = (onConnection: (socket: Net.Socket) => void) =>
  Effect.map(
    Effect.acquireRelease(
      Effect.async<Net.Server>((resume) => {
        const s = Net.createServer(onConnection)
        s.listen(0, "127.0.0.1", () => resume(Effect.succeed(s)))
      }),
      (s) => Effect.sync(() => s.close())
    ),
    (server) => {
      const address = server.address()
      return typeof address === "object" && address !== null ? address.port : 0
    }
  )

/** A loopback port that accepts TCP connections and never answers. */
const blackhole = tcpServer(() => {})

describe("EtcdClient options", () => {
  it.effect("an endpoint without scheme is an InvalidOptions error, before any network call", () =>
    Effect.gen(function* () {
      const error = yield* Effect.flip(Effect.scoped(EtcdClient.make({ endpoints: ["localhost:2379"] })))
      expect(error._tag).toBe("InvalidOptions")
      expect(error.message).toContain("no scheme")
    })
  )

  it.effect("an endpoint with an unknown scheme, an empty endpoint list and a zero timeout are InvalidOptions", () =>
    Effect.gen(function* () {
      const unknown = yield* Effect.flip(Effect.scoped(EtcdClient.make({ endpoints: ["ftp://127.0.0.1:2379"] })))
      expect(unknown).toMatchObject({ _tag: "InvalidOptions", option: "endpoints" })
      const none = yield* Effect.flip(Effect.scoped(EtcdClient.make({ endpoints: [] })))
      expect(none).toMatchObject({ _tag: "InvalidOptions", option: "endpoints" })
      const zero = yield* Effect.flip(
        Effect.scoped(EtcdClient.make({ endpoints: ["http://127.0.0.1:2379"], headerTimeoutPerRequest: 0 }))
      )
      expect(zero).toMatchObject({ _tag: "InvalidOptions", option: "headerTimeoutPerRequest" })
      const negative = yield* Effect.flip(
        Effect.scoped(EtcdClient.make({ endpoints: ["http://127.0.0.1:2379"], dialTimeout: -5 }))
      )
      expect(negative).toMatchObject({ _tag: "InvalidOptions", option: "dialTimeout" })
    })
  )

  it.effect("an endpoint with a path, a query or credentials is InvalidOptions, and the password is not repeated", () =>
    Effect.gen(function* () {
      const make = (endpoint: string) => Effect.flip(Effect.scoped(EtcdClient.make({ endpoints: [endpoint] })))
      for (const endpoint of ["http://127.0.0.1:2379/v3", "http://127.0.0.1:2379?x=1", "http://127.0.0.1:2379/#a"]) {
        const error = yield* make(endpoint)
        expect(error).toMatchObject({ _tag: "InvalidOptions", option: "endpoints" })
        expect(error.message).toContain("path, query or fragment")
      }
      const credentials = yield* make("http://root:s3cret@127.0.0.1:2379")
      expect(credentials).toMatchObject({ _tag: "InvalidOptions", option: "endpoints" })
      expect(credentials.message).toContain("username and password options")
      expect(JSON.stringify(credentials)).not.toContain("s3cret")
    })
  )

  it.effect("a timeout longer than a timer can wait (about 24.8 days) is InvalidOptions", () =>
    Effect.gen(function* () {
      const error = yield* Effect.flip(
        Effect.scoped(EtcdClient.make({ endpoints: ["http://127.0.0.1:2379"], headerTimeoutPerRequest: "30 days" }))
      )
      expect(error).toMatchObject({ _tag: "InvalidOptions", option: "headerTimeoutPerRequest" })
      expect(error.message).toContain("at most")
    })
  )

  it.live("an unreachable endpoint fails with Unavailable within dialTimeout plus a small margin", () =>
    Effect.gen(function* () {
      const port = yield* closedPort
      const [error, elapsed] = yield* timed(
        Effect.flip(
          Effect.scoped(EtcdClient.make({ endpoints: [`http://127.0.0.1:${port}`], dialTimeout: "1 second" }))
        )
      )
      expect(error).toMatchObject({ _tag: "EtcdError", operation: "connect", reason: "Unavailable" })
      expect(elapsed).toBeLessThan(1500)
    })
  )

  it.live("a blackholed endpoint (accepts TCP, never answers) fails within dialTimeout", () =>
    Effect.gen(function* () {
      const port = yield* blackhole
      const [error, elapsed] = yield* timed(
        Effect.flip(
          Effect.scoped(EtcdClient.make({ endpoints: [`http://127.0.0.1:${port}`], dialTimeout: "1 second" }))
        )
      )
      expect(error).toMatchObject({ _tag: "EtcdError", operation: "connect", reason: "Unavailable" })
      expect(elapsed).toBeLessThan(1500)
    }).pipe(Effect.scoped)
  )

  it.effect("a missing or non-PEM certificate file is an InvalidOptions error that names the option", () =>
    Effect.gen(function* () {
      const dir = yield* tempDir
      const garbage = Path.join(dir, "garbage.pem")
      yield* Effect.promise(() => Fs.writeFile(garbage, "not a certificate"))
      const missing = yield* Effect.flip(
        Effect.scoped(EtcdClient.make({ endpoints: ["https://127.0.0.1:2379"], caCert: Path.join(dir, "nope.pem") }))
      )
      expect(missing).toMatchObject({ _tag: "InvalidOptions", option: "caCert" })
      expect(missing.message).toContain("ENOENT")
      const notPem = yield* Effect.flip(
        Effect.scoped(EtcdClient.make({ endpoints: ["https://127.0.0.1:2379"], caCert: garbage }))
      )
      expect(notPem).toMatchObject({ _tag: "InvalidOptions", option: "caCert" })
      const half = yield* Effect.flip(
        Effect.scoped(EtcdClient.make({ endpoints: ["https://127.0.0.1:2379"], cert: garbage }))
      )
      expect(half).toMatchObject({ _tag: "InvalidOptions", option: "key" })
    }).pipe(Effect.scoped)
  )

  it.live("layerConfig reads ETCD_ENDPOINTS and fails on a value without scheme", () =>
    Effect.gen(function* () {
      const error = yield* Effect.flip(
        Layer.build(EtcdClient.layerConfig()).pipe(
          Effect.scoped,
          Effect.withConfigProvider(
            ConfigProvider.fromMap(new Map([["ETCD_ENDPOINTS", "127.0.0.1:2379, http://127.0.0.1:2380"]]))
          )
        )
      )
      expect(error).toMatchObject({ _tag: "InvalidOptions", option: "endpoints" })
    })
  )
})

describe("EtcdClient over TLS (client-certificate auth)", () => {
  it.effect("TLS files that are PEM but not what they should be are InvalidOptions, not a defect", () =>
    Effect.gen(function* () {
      const dir = yield* tempDir
      const files = yield* EtcdTls.generate(dir)
      const garbage = Path.join(dir, "garbage.pem")
      yield* Effect.promise(() =>
        Fs.writeFile(garbage, "-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n")
      )
      const make = (options: { readonly caCert?: string; readonly cert?: string; readonly key?: string }) =>
        Effect.flip(Effect.scoped(EtcdClient.make({ endpoints: ["https://127.0.0.1:2379"], ...options })))
      // each is refused before any network call: there is no server at that port
      expect(yield* make({ ...files.client, caCert: files.client.key })).toMatchObject({
        _tag: "InvalidOptions",
        option: "caCert",
        reason: `${files.client.key} holds no certificate`
      })
      expect(yield* make({ ...files.client, caCert: garbage })).toMatchObject({
        _tag: "InvalidOptions",
        option: "caCert"
      })
      expect(yield* make({ ...files.client, cert: garbage })).toMatchObject({ _tag: "InvalidOptions", option: "cert" })
      expect(yield* make({ ...files.client, key: files.client.cert })).toMatchObject({
        _tag: "InvalidOptions",
        option: "key"
      })
      // the CA's key is a valid key, but not the client certificate's
      const mismatch = yield* make({ ...files.client, key: files.caKey })
      expect(mismatch).toMatchObject({ _tag: "InvalidOptions", option: "key" })
      expect(mismatch.message).toContain("is not the key of the certificate")
    }).pipe(Effect.scoped)
  )

  it.layer(EtcdServer.layer({ tls: true }), { timeout: "60 seconds" })((it) => {
    it.scoped("with the kit's CA and client certificate, put and get work", () =>
      Effect.gen(function* () {
        const server = yield* EtcdServer.EtcdServer
        expect(server.clientUrls[0]).toMatch(/^https:\/\//)
        const client = yield* EtcdClient.make(server.clientOptions)
        yield* client.put("/tls/a", "1")
        expect(Option.map(yield* client.get("/tls/a"), (kv) => kv.value)).toEqual(Option.some("1"))
      })
    )

    it.scoped("without the client certificate the server refuses the connection: AuthFailed, saying so", () =>
      Effect.gen(function* () {
        const server = yield* EtcdServer.EtcdServer
        const error = yield* connectError({ endpoints: server.clientUrls, caCert: server.tls!.caCert })
        expect(error).toMatchObject({ _tag: "EtcdError", operation: "connect", reason: "AuthFailed" })
        expect(error.message).toContain("the server refused this client's TLS certificate")
        // OpenSSL's alert, without its error code, source file and line, nor grpc-js's timestamp
        expect(error.message).toContain("alert bad certificate")
        expect(error.message).not.toMatch(/ssl\/record|\d{4}-\d\d-\d\dT|Resolution note/)
      })
    )

    it.scoped("a certificate refused while another member is down is still AuthFailed, whichever is tried last", () =>
      Effect.gen(function* () {
        const server = yield* EtcdServer.EtcdServer
        const down = `https://127.0.0.1:${yield* closedPort}`
        // the pool tries the members in a random order: some builds end on the member that is down
        for (let i = 0; i < 6; i++) {
          const error = yield* connectError({ endpoints: [...server.clientUrls, down], caCert: server.tls!.caCert })
          expect(error).toMatchObject({ _tag: "EtcdError", operation: "connect", reason: "AuthFailed" })
          expect(error.message).toContain("the server refused this client's TLS certificate")
        }
      })
    )

    it.scoped("a CA that did not sign the server's certificate: AuthFailed, pointing at caCert", () =>
      Effect.gen(function* () {
        const server = yield* EtcdServer.EtcdServer
        const dir = yield* tempDir
        // another kit: a CA of its own, and a client certificate that CA signed
        const other = yield* EtcdTls.generate(dir)
        const error = yield* connectError({ endpoints: server.clientUrls, ...other.client })
        expect(error).toMatchObject({ _tag: "EtcdError", operation: "connect", reason: "AuthFailed" })
        expect(error.message).toContain("the server's TLS certificate was not accepted (check caCert")
      })
    )

    it.scoped("a member whose certificate caCert does not verify is one member down: watches go on to the others", () =>
      Effect.gen(function* () {
        const server = yield* EtcdServer.EtcdServer
        // a TLS server with a certificate of another CA, as a member whose certificate is wrong
        const other = yield* EtcdTls.generate(yield* tempDir)
        const key = yield* Effect.promise(() => Fs.readFile(other.server.key))
        const cert = yield* Effect.promise(() => Fs.readFile(other.server.cert))
        const wrong = yield* Effect.acquireRelease(
          Effect.async<Tls.Server>((resume) => {
            const s = Tls.createServer({ key, cert }, (socket) => socket.destroy())
            s.listen(0, "127.0.0.1", () => resume(Effect.succeed(s)))
          }),
          (s) =>
            Effect.async<void>((resume) => {
              s.close(() => resume(Effect.void))
            })
        )
        const address = wrong.address()
        const wrongUrl = `https://127.0.0.1:${typeof address === "object" && address !== null ? address.port : 0}`
        const client = yield* EtcdClient.make({ ...server.clientOptions, endpoints: [wrongUrl, ...server.clientUrls] })
        const writer = yield* EtcdClient.make(server.clientOptions)
        // the pool picks a member at random: several watches, so that some start on the wrong one
        for (let i = 0; i < 6; i++) {
          const prefix = `/tls-wrong-member/${i}/`
          const from = (yield* writer.revision) + 1
          const seen = yield* client.watch(prefix, { fromRevision: from }).pipe(
            Stream.filter((event) => event._tag === "Put"),
            Stream.runHead,
            Effect.fork
          )
          yield* writer.put(`${prefix}k`, "v")
          const event = yield* Fiber.join(seen).pipe(within(15, "the watch to see the put"))
          expect(Option.getOrUndefined(event)).toMatchObject({ _tag: "Put", key: `${prefix}k` })
        }
        // reconnecting waits on the real clock
      }).pipe(Effect.withClock(Clock.make()))
    )

    it.scoped("an http:// endpoint fails with Unavailable and says the server may require TLS", () =>
      Effect.gen(function* () {
        const server = yield* EtcdServer.EtcdServer
        const error = yield* connectError({
          endpoints: server.clientUrls.map((url) => url.replace(/^https:/, "http:"))
        })
        expect(error).toMatchObject({ _tag: "EtcdError", operation: "connect", reason: "Unavailable" })
        expect(error.message).toContain("an http:// endpoint for an etcd that requires TLS?")
      })
    )
  })
})

describe("EtcdClient over TLS, against an etcd that serves plain http", () => {
  it.layer(EtcdServer.layer(), { timeout: "60 seconds" })((it) => {
    it.scoped("an https:// endpoint fails with Unavailable and says the server did not answer TLS", () =>
      Effect.gen(function* () {
        const server = yield* EtcdServer.EtcdServer
        const dir = yield* tempDir
        const files = yield* EtcdTls.generate(dir)
        const error = yield* connectError({
          endpoints: server.clientUrls.map((url) => url.replace(/^http:/, "https:")),
          caCert: files.caCert
        })
        expect(error).toMatchObject({ _tag: "EtcdError", operation: "connect", reason: "Unavailable" })
        expect(error.message).toContain("the server did not answer the TLS handshake")
      })
    )

    it.scoped("an https:// endpoint whose server resets the connection also says the server did not answer TLS", () =>
      Effect.gen(function* () {
        // how a plain-http etcd answers a TLS client hello, at times, under load
        const port = yield* tcpServer((socket) => socket.resetAndDestroy())
        const files = yield* EtcdTls.generate(yield* tempDir)
        const error = yield* connectError({ endpoints: [`https://127.0.0.1:${port}`], caCert: files.caCert })
        expect(error).toMatchObject({ _tag: "EtcdError", operation: "connect", reason: "Unavailable" })
        expect(error.message).toContain("the server did not answer the TLS handshake")
      })
    )

    it.scoped("layerConfig: ETCD_CERT, ETCD_KEY, ETCD_CACERT and the durations set to nothing count as unset", () =>
      Effect.gen(function* () {
        const server = yield* EtcdServer.EtcdServer
        // as a deployment template leaves them: set, but empty (or blank)
        const variables = {
          ETCD_ENDPOINTS: server.clientUrl,
          ETCD_CERT: "",
          ETCD_KEY: " ",
          ETCD_CACERT: "",
          ETCD_DIAL_TIMEOUT: "",
          ETCD_DIAL_KEEPALIVE: " ",
          ETCD_REQUEST_TIMEOUT: ""
        }
        const provider = ConfigProvider.fromMap(new Map(Object.entries(variables)))
        const options = yield* Effect.withConfigProvider(EtcdClient.config, provider)
        expect(options).toEqual({ endpoints: [server.clientUrl] })
        // the http:// endpoint is not taken for a TLS one, and the client works
        const context = yield* Layer.build(EtcdClient.layerConfig()).pipe(Effect.withConfigProvider(provider))
        expect(yield* Context.get(context, EtcdClient.EtcdClient).revision).toBeGreaterThan(0)
        // a duration that is set to something is still read as one
        const bad = yield* Effect.flip(
          Effect.withConfigProvider(
            EtcdClient.config,
            ConfigProvider.fromMap(new Map([...Object.entries(variables), ["ETCD_DIAL_TIMEOUT", "3s"]]))
          )
        )
        expect(String(bad)).toContain('Invalid data at ETCD_DIAL_TIMEOUT: "Expected a duration but received "3s""')
        // a negative one (Duration decodes it to zero) is said with the variable and what it was set to
        const negative = yield* Effect.flip(
          Effect.withConfigProvider(
            EtcdClient.config,
            ConfigProvider.fromMap(new Map([...Object.entries(variables), ["ETCD_REQUEST_TIMEOUT", "-1 seconds"]]))
          )
        )
        expect(String(negative)).toContain(
          'Invalid data at ETCD_REQUEST_TIMEOUT: "Expected a positive duration but received "-1 seconds""'
        )
        const zero = yield* Effect.flip(
          Effect.withConfigProvider(
            EtcdClient.config,
            ConfigProvider.fromMap(new Map([...Object.entries(variables), ["ETCD_DIAL_TIMEOUT", "0 seconds"]]))
          )
        )
        expect(String(zero)).toContain(
          'Invalid data at ETCD_DIAL_TIMEOUT: "Expected a positive duration but received "0 seconds""'
        )
      })
    )
  })
})

describe("EtcdClient with etcd auth", () => {
  const rootPassword = Redacted.make("root-secret")
  it.layer(EtcdServer.layer(), { timeout: "60 seconds" })((it) => {
    it.scoped("a wrong password fails with AuthFailed; the right one works", () =>
      Effect.gen(function* () {
        const server = yield* EtcdServer.EtcdServer
        yield* EtcdAuth.enable(server, rootPassword)
        const error = yield* Effect.flip(
          EtcdClient.make({
            endpoints: server.clientUrls,
            username: "root",
            password: Redacted.make("wrong"),
            dialTimeout: "2 seconds"
          })
        )
        expect(error).toMatchObject({ _tag: "EtcdError", reason: "AuthFailed" })
        expect(error.message).not.toContain("wrong")
        const client = yield* EtcdClient.make({
          endpoints: server.clientUrls,
          username: "root",
          password: rootPassword
        })
        yield* client.put("/auth/a", "1")
        expect((yield* client.list("/auth/")).entries.map((kv) => kv.value)).toEqual(["1"])
      })
    )
  })

  // a restarted etcd has forgotten the client's token; the member's breaker, open while it was
  // down, tests it with a call that is refused for its token and re-authenticates from inside
  // that test: the re-authenticated call waited for the test, which waited for it (4 s timeouts, for good)
  it.scopedLive(
    "a member that restarted serves the client again: its token is renewed, nothing waits on itself",
    () =>
      Effect.gen(function* () {
        const server = yield* EtcdServer.make()
        yield* EtcdAuth.enable(server, rootPassword)
        const client = yield* EtcdClient.make({
          endpoints: server.clientUrls,
          username: "root",
          password: rootPassword
        })
        yield* client.put("/restart/a", "1")
        yield* server.stop
        // two failures open the member's breaker
        yield* Effect.flip(client.list("/restart/"))
        yield* Effect.flip(client.list("/restart/"))
        yield* server.start
        // the first call after the restart may find the breaker still open (skipped for a second)
        const listed = yield* client
          .list("/restart/")
          .pipe(
            Effect.retry({ schedule: Schedule.spaced("300 millis"), times: 5 }),
            within(8, "a listing after the restart")
          )
        expect(listed.entries.map((kv) => [kv.key, kv.value])).toEqual([["/restart/a", "1"]])
        expect(Option.isSome(yield* client.get("/restart/a"))).toBe(true)
      }),
    60_000
  )
})

describe("EtcdClient timeouts", () => {
  it.layer(EtcdServer.layer(), { timeout: "60 seconds" })((it) => {
    it.scoped("a member that accepts connections and never answers does not keep the client from the others", () =>
      Effect.gen(function* () {
        const server = yield* EtcdServer.EtcdServer
        const port = yield* blackhole
        // etcd3 tries the members in a random order: eight builds try the hung one first
        // about four times (all eight put it first or last with probability 1/128)
        for (let i = 0; i < 8; i++) {
          yield* Effect.scoped(
            EtcdClient.make({
              // a trailing slash is not a path
              endpoints: [`http://127.0.0.1:${port}/`, server.clientUrls[0]!],
              dialTimeout: "1 second"
            })
          )
        }
      })
    )

    it.scoped("a request to a paused member fails with Timeout after headerTimeoutPerRequest", () =>
      Effect.gen(function* () {
        const server = yield* EtcdServer.EtcdServer
        const client = yield* EtcdClient.make({ ...server.clientOptions, headerTimeoutPerRequest: "500 millis" })
        yield* client.put("/timeout/a", "1")
        yield* Effect.acquireRelease(server.pause, () => server.resume)
        const [error, elapsed] = yield* timed(Effect.flip(client.get("/timeout/a")))
        expect(error).toMatchObject({ _tag: "EtcdError", reason: "Timeout" })
        expect(elapsed).toBeLessThan(Duration.toMillis("3 seconds"))
      })
    )
  })
})

/** Runs `self` every 20 ms until its result passes `until` (what etcd holds has no event to wait on). */
const poll = <A, E, R>(self: Effect.Effect<A, E, R>, until: (a: A) => boolean): Effect.Effect<A, E, R> =>
  Effect.flatMap(self, (a) =>
    until(a) ? Effect.succeed(a) : Effect.zipRight(Effect.sleep("20 millis"), poll(self, until))
  )

describe("EtcdClient grant and put (a first registration)", () => {
  layer(EtcdServer.layer(), { excludeTestServices: true, timeout: "60 seconds" })((it) => {
    it.scoped(
      "interrupted while the grant's answer is on its way: the lease etcd granted is revoked once it comes",
      () =>
        Effect.gen(function* () {
          const server = yield* EtcdServer.EtcdServer
          const raw = yield* etcd3(server.clientUrls)
          const leases = Effect.map(
            Effect.promise(() => raw.leaseClient.leaseLeases()),
            (r) => new Set(r.leases.map((l) => String(l.ID)))
          )
          const proxy = yield* tcpProxy(server.clientUrls[0]!)
          const client = yield* EtcdClient.make({ endpoints: [proxy.url] })
          const before = yield* leases
          yield* proxy.hold
          const fiber = yield* Effect.fork(grantAndPut(client, 30, [{ key: "/grant-and-put/a", value: "1" }]))
          // etcd has granted the lease: its answer is held in the proxy
          const granted = yield* poll(
            Effect.map(leases, (now) => [...now].filter((id) => !before.has(id))),
            (ids) => ids.length === 1
          ).pipe(within(5, "the grant to reach etcd"))
          yield* Fiber.interrupt(fiber)
          yield* proxy.release
          // a 30 s lease kept would still be there: it goes as soon as its answer reaches the client
          yield* poll(leases, (now) => !now.has(granted[0]!)).pipe(within(5, "the granted lease to be revoked"))
          expect(Option.isNone(yield* client.get("/grant-and-put/a"))).toBe(true)
          expect(yield* leases).toEqual(before)
        })
    )
  })
})
