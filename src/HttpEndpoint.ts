/**
 * An endpoint factory for HTTP instances, on @effect/platform's `HttpClient`:
 * the instance string `http://10.0.0.1:8080` becomes an endpoint that sends
 * requests relative to that base URL.
 *
 * @since 0.1.0
 */
import * as HttpClient from "@effect/platform/HttpClient"
import * as HttpClientError from "@effect/platform/HttpClientError"
import * as HttpClientRequest from "@effect/platform/HttpClientRequest"
import * as HttpClientResponse from "@effect/platform/HttpClientResponse"
import * as Clock from "effect/Clock"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Schema from "effect/Schema"
import * as Stream from "effect/Stream"
import type { Endpoint, Factory } from "./Endpoint.js"
import { traced } from "./internal/tracing.js"

/**
 * An instance string that is not an http(s) base URL. The subscriber logs it
 * and skips the instance.
 *
 * @since 0.1.0
 * @category errors
 */
export class InvalidInstance extends Schema.TaggedError<InvalidInstance>()("InvalidInstance", {
  instance: Schema.String,
  reason: Schema.String
}) {
  /** @since 0.1.0 */
  override get message(): string {
    return `invalid instance ${JSON.stringify(this.instance)}: ${this.reason}`
  }
}

/**
 * An HTTP endpoint: an `HttpClientRequest` with a URL relative to the instance
 * (`/hello`, `hello?x=1`) in, the `HttpClientResponse` out. Transport failures
 * (and, with `filterStatusOk`, non-2xx statuses) are `HttpClientError`s; an
 * absolute URL (`http://other/x`, a scheme and a host) is a `RequestError`
 * (reason `InvalidUrl`), and nothing is sent.
 *
 * @since 0.1.0
 * @category models
 */
export type HttpEndpoint = Endpoint<
  HttpClientRequest.HttpClientRequest,
  HttpClientResponse.HttpClientResponse,
  HttpClientError.HttpClientError
>

/**
 * @since 0.1.0
 * @category models
 */
export interface Options {
  /**
   * Fail with a `ResponseError` (reason `StatusCode`) on a non-2xx status. Its
   * body is read first (within a second; a body that does not end by then is
   * given up on and the request aborted), so that the connection is released,
   * and the error's `response` gives what was read (of a body given up on or
   * broken off, the part that came), as text, JSON, bytes or a stream. Default
   * false.
   */
  readonly filterStatusOk?: boolean | undefined
}

/** How long a failed response's body may take to arrive, with `filterStatusOk` (real time). */
const errorBodyTimeout = Duration.seconds(1)

/** The real clock: the bound is on a socket, also in a test that runs on `TestClock`. */
const realClock = Clock.make()

/** The ways to read a response's body. */
const bodyReads: ReadonlySet<string> = new Set(["text", "json", "arrayBuffer", "stream", "formData", "urlParamsBody"])

/** The chunks of a body, joined. */
const concat = (chunks: ReadonlyArray<Uint8Array>): Uint8Array<ArrayBuffer> => {
  const bytes = new Uint8Array(chunks.reduce((size, chunk) => size + chunk.length, 0))
  let offset = 0
  for (const chunk of chunks) {
    bytes.set(chunk, offset)
    offset += chunk.length
  }
  return bytes
}

/**
 * A failed response, its body read: an unread body holds its socket open, one
 * more for every failed attempt of a retried call. Read within
 * {@link errorBodyTimeout} (a body that does not end by then is given up on,
 * which aborts the request and frees the socket too). The response returned is
 * the one that came, except for its body reads, which give what was read (each
 * from a web `Response` of its own: such a body can be read once): all of it,
 * or the part that came before the body was given up on or broke off, which
 * `problem` then tells.
 */
const settle = (
  response: HttpClientResponse.HttpClientResponse
): Effect.Effect<{ readonly response: HttpClientResponse.HttpClientResponse; readonly problem?: string }> => {
  // read chunk by chunk, so that what came before a timeout or a break is kept
  const chunks: Array<Uint8Array> = []
  const reading = Stream.runForEachChunk(response.stream, (chunk) =>
    Effect.sync(() => {
      for (const bytes of chunk) chunks.push(bytes)
    })
  ).pipe(
    // a response without a body (HEAD, 204, 304 under the fetch client) has nothing to read
    Effect.catchIf(
      (error) => error._tag === "ResponseError" && error.reason === "EmptyBody",
      () => Effect.void
    )
  )
  return Effect.map(Effect.either(Effect.withClock(Effect.timeout(reading, errorBodyTimeout), realClock)), (read) => {
    const bytes = concat(chunks)
    // the headers go along for the body reads that look at them (formData); a web Response
    // refuses some that an HTTP parser let through: then it goes without them
    let headers: Record<string, string> = response.headers
    try {
      new Response(null, { headers })
    } catch {
      headers = {}
    }
    const fresh = () => HttpClientResponse.fromWeb(response.request, new Response(bytes, { headers }))
    const own = new Proxy(response, {
      get: (target, property, receiver) =>
        typeof property === "string" && bodyReads.has(property)
          ? Reflect.get(fresh(), property)
          : Reflect.get(target, property, receiver)
    })
    if (read._tag === "Right") return { response: own }
    return {
      response: own,
      problem:
        read.left._tag === "TimeoutException"
          ? `its body did not end within ${Duration.format(errorBodyTimeout)}`
          : `its body could not be read: ${read.left.message}`
    }
  })
}

/**
 * A URL with a scheme and an authority (`http://host`, `HTTPS://host`): a
 * scheme alone is not enough, as a relative path may hold a colon in its first
 * segment (a custom method, `models:predict`).
 */
const absoluteUrl = /^[A-Za-z][A-Za-z0-9+.-]*:\/\//

/**
 * Parses an instance string into a base URL (no trailing slash). Only `http:`
 * and `https:` URLs with a host, and without a user name, password, query or
 * fragment (which requests would not carry), are accepted.
 *
 * @since 0.1.0
 * @category parsing
 */
export const parseInstance = (instance: string): Effect.Effect<string, InvalidInstance> =>
  Effect.suspend(() => {
    let url: URL
    try {
      url = new URL(instance)
    } catch {
      return Effect.fail(new InvalidInstance({ instance, reason: "not a URL (expected e.g. http://10.0.0.1:8080)" }))
    }
    if (url.protocol !== "http:" && url.protocol !== "https:") {
      return Effect.fail(new InvalidInstance({ instance, reason: `scheme ${url.protocol} is not http: or https:` }))
    }
    if (url.hostname === "") {
      return Effect.fail(new InvalidInstance({ instance, reason: "no host" }))
    }
    // the base URL is a scheme, a host, a port and a path: anything else would be dropped silently
    if (url.username !== "" || url.password !== "") {
      return Effect.fail(
        new InvalidInstance({
          instance,
          reason: "a user name or password in the URL would not be sent: authenticate in the HttpClient"
        })
      )
    }
    if (url.search !== "" || url.hash !== "") {
      return Effect.fail(
        new InvalidInstance({ instance, reason: "a query or fragment in the URL would not be sent with requests" })
      )
    }
    const base = `${url.origin}${url.pathname}`.replace(/\/+$/, "")
    return Effect.succeed(base)
  })

/**
 * The factory: makes an endpoint per instance from the `HttpClient` in the
 * context. Request URLs are resolved against the instance's base URL before
 * the client's own middlewares run: they see the absolute URL (a path prefix
 * belongs in the instance, not in a middleware's `prependUrl`). A request
 * whose URL is absolute already fails with a `RequestError` (reason
 * `InvalidUrl`) before them: the instance decides where requests go.
 *
 * @example
 * ```ts
 * Subscriber.make({ prefix: "/services/greeter/", factory: HttpEndpoint.factory() })
 * ```
 *
 * @since 0.1.0
 * @category constructors
 */
export const factory =
  (
    options: Options = {}
  ): Factory<
    HttpClientRequest.HttpClientRequest,
    HttpClientResponse.HttpClientResponse,
    HttpClientError.HttpClientError,
    InvalidInstance,
    HttpClient.HttpClient
  > =>
  (instance: string) =>
    Effect.gen(function* () {
      const base = yield* parseInstance(instance)
      const http = yield* HttpClient.HttpClient
      // applied before the client's own request steps: its middlewares (logging, signing,
      // tracing) see the instance's absolute URL, not the caller's relative one. A path prefix
      // belongs in the instance: a middleware's prependUrl would go in front of the host. An
      // absolute URL would become a path under the base: it is refused, not sent there
      const prefixed = HttpClient.mapRequestInputEffect(http, (request) =>
        absoluteUrl.test(request.url)
          ? Effect.fail(
              new HttpClientError.RequestError({
                request,
                reason: "InvalidUrl",
                description: `the URL is absolute: a request's URL is relative to the instance ${base}`
              })
            )
          : Effect.succeed(
              HttpClientRequest.prependUrl(
                request,
                request.url === "" || request.url.startsWith("/") || request.url.startsWith("?") ? base : `${base}/`
              )
            )
      )
      const endpoint: HttpEndpoint =
        options.filterStatusOk === true
          ? (request) =>
              Effect.flatMap(prefixed.execute(request), (response) =>
                response.status >= 200 && response.status < 300
                  ? Effect.succeed(response)
                  : Effect.flatMap(settle(response), (settled) =>
                      Effect.fail(
                        new HttpClientError.ResponseError({
                          request: response.request,
                          response: settled.response,
                          reason: "StatusCode",
                          description:
                            settled.problem === undefined
                              ? "non 2xx status code"
                              : `non 2xx status code (${settled.problem})`
                        })
                      )
                    )
              )
          : (request) => prefixed.execute(request)
      return endpoint
    }).pipe(traced("HttpEndpoint.factory"))
