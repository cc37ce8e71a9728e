import * as FetchHttpClient from "@effect/platform/FetchHttpClient"
import * as HttpClient from "@effect/platform/HttpClient"
import * as HttpClientRequest from "@effect/platform/HttpClientRequest"
import * as HttpRouter from "@effect/platform/HttpRouter"
import * as HttpServer from "@effect/platform/HttpServer"
import * as HttpServerResponse from "@effect/platform/HttpServerResponse"
import * as NodeHttpClient from "@effect/platform-node/NodeHttpClient"
import * as NodeHttpServer from "@effect/platform-node/NodeHttpServer"
import { describe, expect, it } from "@effect/vitest"
import * as Chunk from "effect/Chunk"
import * as Clock from "effect/Clock"
import * as Deferred from "effect/Deferred"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Schedule from "effect/Schedule"
import * as Stream from "effect/Stream"
import * as Net from "node:net"
import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http"
import * as HttpEndpoint from "../src/HttpEndpoint.js"

let slowBodyEnded = false
const App = HttpRouter.empty.pipe(
  HttpRouter.get("/hello", HttpServerResponse.text("hello")),
  HttpRouter.get("/api/v1/echo", HttpServerResponse.text("echo")),
  HttpRouter.get("/teapot", HttpServerResponse.text("no", { status: 418 })),
  // a failure with a body larger than one read: left unread, it holds its connection
  HttpRouter.get("/unavailable", HttpServerResponse.text("x".repeat(100_000), { status: 503 })),
  // a failure whose body ends a second and a half after it starts (on the real clock)
  HttpRouter.get(
    "/slow",
    Effect.sync(() => {
      slowBodyEnded = false
      const rest = Effect.async<Uint8Array>((resume) => {
        const timer = setTimeout(() => {
          slowBodyEnded = true
          resume(Effect.succeed(new TextEncoder().encode(" and the rest")))
        }, 1500)
        return Effect.sync(() => clearTimeout(timer))
      })
      return HttpServerResponse.stream(
        Stream.concat(Stream.make(new TextEncoder().encode("a start")), Stream.fromEffect(rest)),
        {
          status: 503
        }
      )
    })
  ),
  // a failure with two cookies
  HttpRouter.get(
    "/refused",
    HttpServerResponse.text("nope", { status: 401 }).pipe(
      HttpServerResponse.unsafeSetCookie("a", "1"),
      HttpServerResponse.unsafeSetCookie("b", "2")
    )
  ),
  HttpServer.serve()
)
// the Node server itself, to count the connections clients hold open
const nodeServer = createServer()
const openConnections = Effect.async<number>((resume) => {
  nodeServer.getConnections((error, count) => resume(error === null ? Effect.succeed(count) : Effect.die(error)))
})
/** Waits (5 s at most, polling on the clock in use) until the server's open connections satisfy `done`. */
const untilOpenConnections = (done: (open: number) => boolean) =>
  Effect.repeat(openConnections, { until: done, schedule: Schedule.spaced("20 millis") }).pipe(
    Effect.timeoutFail({ duration: "5 seconds", onTimeout: () => new Error("the connections stayed open") })
  )
const ServerLive = NodeHttpServer.layer(() => nodeServer, { port: 0, host: "127.0.0.1" })
const TestLive = Layer.mergeAll(Layer.provide(App, ServerLive), ServerLive, NodeHttpClient.layerUndici)

const baseUrl = Effect.map(HttpServer.HttpServer, (server) =>
  server.address._tag === "TcpAddress" ? `http://127.0.0.1:${server.address.port}` : ""
)

/** A node:http server of a test's own, with `handler`, closed (its connections too) with the scope: its base URL. */
const serverOwn = (handler: (request: IncomingMessage, response: ServerResponse) => void) =>
  Effect.map(
    Effect.acquireRelease(
      Effect.async<Server>((resume) => {
        const server = createServer(handler)
        server.listen(0, "127.0.0.1", () => resume(Effect.succeed(server)))
      }),
      (server) =>
        Effect.async<void>((resume) => {
          server.closeAllConnections()
          server.close(() => resume(Effect.void))
        })
    ),
    (server) => {
      const address = server.address()
      return `http://127.0.0.1:${typeof address === "object" && address !== null ? address.port : 0}`
    }
  )

describe("HttpEndpoint.parseInstance", () => {
  it.effect("accepts http(s) URLs and rejects anything else with InvalidInstance", () =>
    Effect.gen(function* () {
      expect(yield* HttpEndpoint.parseInstance("http://10.0.0.1:8080/")).toBe("http://10.0.0.1:8080")
      expect(yield* HttpEndpoint.parseInstance("https://svc.example/api/")).toBe("https://svc.example/api")
      for (const bad of [
        "10.0.0.1:8080",
        "",
        "ftp://10.0.0.1",
        "not a url",
        // what a request would not carry: rejected, not dropped silently
        "http://user:secret@10.0.0.1:8080",
        "http://10.0.0.1:8080/base?tenant=a",
        "http://10.0.0.1:8080/#section"
      ]) {
        const error = yield* Effect.flip(HttpEndpoint.parseInstance(bad))
        expect(error._tag).toBe("InvalidInstance")
        expect(error.instance).toBe(bad)
      }
    })
  )
})

describe("HttpEndpoint.factory", () => {
  it.scoped("filterStatusOk: a failed response without a body (HEAD, 304) fails with the status alone", () =>
    Effect.gen(function* () {
      const base = yield* serverOwn((request, response) => {
        response.writeHead(request.method === "HEAD" ? 503 : 304, { "content-length": "10" })
        response.end()
      })
      // the fetch client gives such a response no body stream at all
      const endpoint = yield* HttpEndpoint.factory({ filterStatusOk: true })(base).pipe(
        Effect.provide(FetchHttpClient.layer)
      )
      for (const [request, status] of [
        [HttpClientRequest.head("/health"), 503],
        [HttpClientRequest.get("/cached"), 304]
      ] as const) {
        const error = yield* Effect.flip(endpoint(request))
        expect(error).toMatchObject({ _tag: "ResponseError", reason: "StatusCode" })
        expect(error._tag === "ResponseError" && error.response.status).toBe(status)
        expect(error.message).not.toContain("could not be read")
        expect(error._tag === "ResponseError" ? yield* error.response.text : undefined).toBe("")
      }
    })
  )

  it.layer(TestLive)((it) => {
    it.scoped("sends requests relative to the instance's base URL and returns the response", () =>
      Effect.gen(function* () {
        const base = yield* baseUrl
        const endpoint = yield* HttpEndpoint.factory()(base)
        const response = yield* endpoint(HttpClientRequest.get("/hello"))
        expect(response.status).toBe(200)
        expect(yield* response.text).toBe("hello")
        const withPath = yield* HttpEndpoint.factory()(`${base}/api/v1/`)
        expect(yield* Effect.flatMap(withPath(HttpClientRequest.get("echo")), (r) => r.text)).toBe("echo")
      })
    )

    it.scoped("non-2xx statuses pass through by default, and fail with a StatusCode error with filterStatusOk", () =>
      Effect.gen(function* () {
        const base = yield* baseUrl
        const lenient = yield* HttpEndpoint.factory()(base)
        expect((yield* lenient(HttpClientRequest.get("/teapot"))).status).toBe(418)
        const strict = yield* HttpEndpoint.factory({ filterStatusOk: true })(base)
        const error = yield* Effect.flip(strict(HttpClientRequest.get("/teapot")))
        expect(error._tag).toBe("ResponseError")
        expect(error.reason).toBe("StatusCode")
      })
    )

    it.scoped(
      "with filterStatusOk, failed responses do not hold their connections, and their body stays readable",
      () =>
        Effect.gen(function* () {
          const strict = yield* HttpEndpoint.factory({ filterStatusOk: true })(yield* baseUrl)
          const before = yield* openConnections
          for (let i = 0; i < 20; i++) {
            const error = yield* Effect.flip(strict(HttpClientRequest.get("/unavailable")))
            expect(error).toMatchObject({ _tag: "ResponseError", reason: "StatusCode" })
            if (i === 0 && error._tag === "ResponseError") {
              // what was read is the error's body, whichever way it is read
              expect((yield* error.response.text).length).toBe(100_000)
              expect((yield* error.response.arrayBuffer).byteLength).toBe(100_000)
              const chunks = yield* Stream.runCollect(error.response.stream)
              expect(Chunk.reduce(chunks, 0, (n, chunk) => n + chunk.length)).toBe(100_000)
            }
          }
          // the bodies were read: the connections went back to the pool (an unread body kept one
          // open per call: 17 of 20)
          yield* untilOpenConnections((open) => open - before <= 2)
        }).pipe(Effect.withClock(Clock.make()))
    )

    it.scoped("with filterStatusOk, a body that does not end within a second is given up on, its request aborted", () =>
      Effect.gen(function* () {
        const strict = yield* HttpEndpoint.factory({ filterStatusOk: true })(yield* baseUrl)
        const before = yield* openConnections
        const error = yield* Effect.flip(strict(HttpClientRequest.get("/slow")))
        expect(error).toMatchObject({ _tag: "ResponseError", reason: "StatusCode" })
        expect(error.message).toContain("its body did not end within 1s")
        // the call did not wait for the body's end (a second and a half on the server)
        expect(slowBodyEnded).toBe(false)
        // what came before is kept, and reading it gives that instead of waiting
        if (error._tag === "ResponseError") expect(yield* error.response.text).toBe("a start")
        // the request was aborted: its connection goes
        yield* untilOpenConnections((open) => open <= before)
        // polls on the real clock (the endpoint's bound is on it already)
      }).pipe(Effect.withClock(Clock.make()))
    )

    it.scoped("with filterStatusOk, the failed response keeps its status, headers and cookies", () =>
      Effect.gen(function* () {
        const strict = yield* HttpEndpoint.factory({ filterStatusOk: true })(yield* baseUrl)
        const error = yield* Effect.flip(strict(HttpClientRequest.get("/refused")))
        expect(error).toMatchObject({ _tag: "ResponseError", reason: "StatusCode" })
        if (error._tag !== "ResponseError") return
        expect(error.response.status).toBe(401)
        expect(Object.keys(error.response.cookies.cookies).sort()).toEqual(["a", "b"])
        expect(yield* error.response.text).toBe("nope")
        expect(yield* error.response.text).toBe("nope")
      })
    )

    it.scoped("with filterStatusOk, a body that starts and never ends gives what came before it was given up on", () =>
      Effect.gen(function* () {
        // a server of its own, whose failure's body sends a chunk and then stalls for good
        const closed = yield* Deferred.make<void>()
        const base = yield* serverOwn((_, response) => {
          response.on("close", () => Deferred.unsafeDone(closed, Effect.void))
          response.writeHead(500, { "content-type": "text/plain" })
          response.write("partial")
        })
        const strict = yield* HttpEndpoint.factory({ filterStatusOk: true })(base)
        const error = yield* Effect.flip(strict(HttpClientRequest.get("/")))
        expect(error).toMatchObject({ _tag: "ResponseError", reason: "StatusCode" })
        expect(error.message).toContain("its body did not end within 1s")
        if (error._tag !== "ResponseError") return
        expect(error.response.status).toBe(500)
        // what was read, whichever way it is read, as often as it is read
        expect(yield* error.response.text).toBe("partial")
        expect(yield* error.response.text).toBe("partial")
        expect(new TextDecoder().decode(yield* error.response.arrayBuffer)).toBe("partial")
        const chunks = yield* Stream.runCollect(error.response.stream)
        expect(Chunk.reduce(chunks, 0, (n, chunk) => n + chunk.length)).toBe("partial".length)
        // the request was aborted: the server sees its response closed
        yield* Deferred.await(closed).pipe(
          Effect.timeoutFail({ duration: "5 seconds", onTimeout: () => new Error("the request was not aborted") })
        )
      }).pipe(Effect.withClock(Clock.make()))
    )

    it.scoped("with filterStatusOk, a body that breaks off is told apart from one that is slow", () =>
      Effect.gen(function* () {
        // a server of its own, whose connection breaks off in the middle of a failure's body
        const base = yield* serverOwn((_, response) => {
          response.writeHead(502, { "content-length": "100" })
          response.write("a start", () => response.destroy())
        })
        const strict = yield* HttpEndpoint.factory({ filterStatusOk: true })(base)
        const error = yield* Effect.flip(strict(HttpClientRequest.get("/")))
        expect(error).toMatchObject({ _tag: "ResponseError", reason: "StatusCode" })
        expect(error.message).toContain("its body could not be read")
        expect(error.message).not.toContain("did not end within")
        // what came before the break is kept
        if (error._tag === "ResponseError") expect(yield* error.response.text).toBe("a start")
      })
    )

    it.scoped("a dead instance fails with a typed transport error", () =>
      Effect.gen(function* () {
        const port = yield* Effect.async<number>((resume) => {
          const server = Net.createServer()
          server.listen(0, "127.0.0.1", () => {
            const address = server.address()
            server.close(() =>
              resume(Effect.succeed(typeof address === "object" && address !== null ? address.port : 0))
            )
          })
        })
        const endpoint = yield* HttpEndpoint.factory()(`http://127.0.0.1:${port}`)
        const error = yield* Effect.flip(endpoint(HttpClientRequest.get("/hello")))
        expect(error._tag).toBe("RequestError")
        expect(error.reason).toBe("Transport")
      })
    )

    it.scoped("the HttpClient's own middlewares see the instance's absolute URL, not the relative one", () =>
      Effect.gen(function* () {
        const base = yield* baseUrl
        const seen: Array<string> = []
        // a middleware of the application's client that parses the URL, as signing or routing does
        const parsing = Effect.map(HttpClient.HttpClient, (client) =>
          HttpClient.tapRequest(client, (request) => Effect.sync(() => seen.push(new URL(request.url).href)))
        )
        const endpoint = yield* HttpEndpoint.factory()(`${base}/api/v1`).pipe(
          Effect.provideServiceEffect(HttpClient.HttpClient, parsing)
        )
        expect(yield* Effect.flatMap(endpoint(HttpClientRequest.get("echo")), (r) => r.text)).toBe("echo")
        expect(seen).toEqual([`${base}/api/v1/echo`])
        // a query alone goes to the base itself, as an empty URL does, not to a path with a slash added
        yield* Effect.ignore(endpoint(HttpClientRequest.get("?x=1")))
        yield* Effect.ignore(endpoint(HttpClientRequest.get("")))
        expect(seen.slice(1).map((url) => new URL(url).pathname)).toEqual(["/api/v1", "/api/v1"])
      })
    )

    it.scoped("a request with an absolute URL fails with RequestError InvalidUrl, and nothing is sent", () =>
      Effect.gen(function* () {
        const base = yield* baseUrl
        const seen: Array<string> = []
        const watched = Effect.map(HttpClient.HttpClient, (client) =>
          HttpClient.tapRequest(client, (request) => Effect.sync(() => seen.push(request.url)))
        )
        for (const filterStatusOk of [false, true]) {
          const endpoint = yield* HttpEndpoint.factory({ filterStatusOk })(`${base}/api/v1`).pipe(
            Effect.provideServiceEffect(HttpClient.HttpClient, watched)
          )
          // another host, and the instance's own URL spelt out: neither becomes a path under the base
          for (const url of [
            "http://other.invalid/x",
            "https://other.invalid",
            `${base}/hello`,
            "HTTP://other.invalid"
          ]) {
            const error = yield* Effect.flip(endpoint(HttpClientRequest.get(url)))
            expect(error).toMatchObject({ _tag: "RequestError", reason: "InvalidUrl" })
            expect(error.request.url).toBe(url)
            expect(error.message).toContain(`relative to the instance ${base}/api/v1`)
          }
          const fromUrl = yield* Effect.flip(endpoint(HttpClientRequest.get(new URL(`${base}/hello?x=1`))))
          expect(fromUrl).toMatchObject({ _tag: "RequestError", reason: "InvalidUrl" })
          // relative ones still go, a colon in the path too (a custom method, `models:predict`)
          expect(yield* Effect.flatMap(endpoint(HttpClientRequest.get("echo")), (r) => r.text)).toBe("echo")
          yield* Effect.ignore(endpoint(HttpClientRequest.get("models:predict")))
        }
        const sent = [`${base}/api/v1/echo`, `${base}/api/v1/models:predict`]
        expect(seen).toEqual([...sent, ...sent])
      })
    )

    it.scoped("an instance that is not an http(s) URL fails the factory with InvalidInstance", () =>
      Effect.gen(function* () {
        const error = yield* Effect.flip(HttpEndpoint.factory()("127.0.0.1:8080"))
        expect(error).toMatchObject({ _tag: "InvalidInstance", instance: "127.0.0.1:8080" })
      })
    )
  })
})
