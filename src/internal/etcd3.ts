/**
 * The EtcdClient over the `etcd3` gRPC client.
 *
 * Only etcd3's connection pool and raw RPC clients are used: the watch and the
 * keep-alive are our own streams, so that cancellation, reconnection and
 * revision tracking are ours to get right (etcd3's Watcher hangs on a wiped
 * cluster, its issue #31, and can throw from a stream callback).
 *
 * @internal
 */
import { isUtf8 } from "node:buffer"
import { X509Certificate } from "node:crypto"
import * as Fs from "node:fs/promises"
import * as Tls from "node:tls"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import * as Option from "effect/Option"
import * as Redacted from "effect/Redacted"
import type * as Scope from "effect/Scope"
import {
  BrokenCircuitError,
  circuitBreaker,
  CircuitState,
  ConsecutiveBreaker,
  handleWhen,
  type IDefaultPolicyContext,
  type IPolicy,
  retry,
  type RetryPolicy
} from "cockatiel"
import * as Etcd3 from "etcd3"
import type { ConnectionPool } from "etcd3/lib/connection-pool.js"
import type { EtcdClient, EtcdClientOptions, KeyValue, LeaseId } from "../EtcdClient.js"
import { EtcdError, InvalidOptions } from "../EtcdError.js"
import type { GrantedAndPut, RawWatchEvent, WatchSink } from "./client.js"
import { fromPrimitives, isTransient } from "./client.js"
import { decodeDuration, withinTimerLimit } from "./timerLimit.js"
import {
  decodeRangeResponse,
  decodeWatchResponse,
  Undecodable,
  type WireKeyValue,
  type WireRangeResponse,
  type WireWatchResponse
} from "./wire.js"

const defaultTimeout = Duration.seconds(3)
/** grpc-go never pings more often than this, and etcd servers refuse pings under 5 s (`--grpc-keepalive-min-time`). */
const minKeepAliveInterval = Duration.seconds(10)

// ---- options ----

const duration = (
  option: string,
  input: Duration.DurationInput | undefined
): Effect.Effect<Duration.Duration, InvalidOptions> => {
  if (input === undefined) return Effect.succeed(defaultTimeout)
  return Effect.flatMap(decodeDuration(option, input, { positive: true, infinite: "reject" }), (decoded) =>
    withinTimerLimit(option, input, decoded)
  )
}

/**
 * The port an endpoint URL names, as written, or `undefined` (`URL` drops a
 * scheme's default port: `new URL("http://h:80").port` is "").
 */
const writtenPort = (url: string): string | undefined => {
  const authority = url.replace(/^[a-zA-Z][a-zA-Z0-9+.-]*:\/\//, "").split(/[/?#]/, 1)[0] ?? ""
  const host = authority.slice(authority.lastIndexOf("@") + 1)
  return /^(?:\[[^\]]*\]|[^:]*):(\d+)$/.exec(host)?.[1]
}

const endpoint = (url: string): Effect.Effect<{ readonly host: string; readonly secure: boolean }, InvalidOptions> => {
  if (!/^[a-zA-Z][a-zA-Z0-9+.-]*:\/\//.test(url)) {
    return Effect.fail(
      new InvalidOptions({ option: "endpoints", reason: `${url} has no scheme: write http://${url} or https://${url}` })
    )
  }
  let parsed: URL
  try {
    parsed = new URL(url)
  } catch (cause) {
    return Effect.fail(new InvalidOptions({ option: "endpoints", reason: `${url} is not a URL`, cause }))
  }
  if (parsed.protocol !== "http:" && parsed.protocol !== "https:") {
    return Effect.fail(
      new InvalidOptions({ option: "endpoints", reason: `${url}: unknown scheme ${parsed.protocol} (http or https)` })
    )
  }
  if (parsed.hostname === "") {
    return Effect.fail(new InvalidOptions({ option: "endpoints", reason: `${url} has no host` }))
  }
  // the port as written: URL drops a scheme's default one (`http://h:80` has port ""), and none is
  // guessed (etcd serves clients on 2379, a URL's default would be 80 or 443)
  const port = parsed.port !== "" ? parsed.port : writtenPort(url)
  // a member is a scheme, a host and a port: anything else would be dropped without a word
  const member = `${parsed.protocol}//${parsed.hostname}:${port ?? "2379"}`
  if (parsed.username !== "" || parsed.password !== "") {
    // the URL is not repeated: it holds a password
    return Effect.fail(
      new InvalidOptions({
        option: "endpoints",
        reason: `the endpoint ${parsed.protocol}//${parsed.host} has a user name or password in its URL: use the username and password options`
      })
    )
  }
  if (port === undefined) {
    return Effect.fail(
      new InvalidOptions({
        option: "endpoints",
        reason: `${url} has no port: add it, e.g. ${member} (etcd's default client port)`
      })
    )
  }
  if ((parsed.pathname !== "/" && parsed.pathname !== "") || parsed.search !== "" || parsed.hash !== "") {
    return Effect.fail(
      new InvalidOptions({
        option: "endpoints",
        reason: `${url} has a path, query or fragment: an endpoint is a scheme, a host and a port (${member})`
      })
    )
  }
  return Effect.succeed({ host: member, secure: parsed.protocol === "https:" })
}

const pemFile = (option: string, path: string): Effect.Effect<Buffer, InvalidOptions> =>
  Effect.tryPromise({
    try: () => Fs.readFile(path),
    catch: (cause) =>
      new InvalidOptions({ option, reason: `cannot read ${path}: ${(cause as NodeJS.ErrnoException).code}`, cause })
  }).pipe(
    Effect.filterOrFail(
      (b) => b.includes("-----BEGIN "),
      () => new InvalidOptions({ option, reason: `${path} is not a PEM file` })
    )
  )

/** The PEM certificate blocks of a file's contents. */
const certificateBlocks = (pem: Buffer): ReadonlyArray<string> =>
  pem.toString("utf8").match(/-----BEGIN CERTIFICATE-----[\s\S]*?-----END CERTIFICATE-----/g) ?? []

/**
 * Checks what the TLS files hold, not only that they are PEM: OpenSSL would
 * otherwise reject them when the client is built, as a defect. The CA file
 * must hold certificates (a bundle is fine), the cert a certificate, the key a
 * private key that is the certificate's (an encrypted key is refused: there is
 * no passphrase option).
 */
const checkTls = (
  files: {
    readonly caCert?: string | undefined
    readonly cert?: string | undefined
    readonly key?: string | undefined
  },
  pems: { readonly caCert?: Buffer | undefined; readonly cert?: Buffer | undefined; readonly key?: Buffer | undefined }
): Effect.Effect<void, InvalidOptions> =>
  Effect.suspend(() => {
    // what `f` throws, as InvalidOptions for `option`; undefined when it does not throw
    const refused = (option: "caCert" | "cert" | "key", f: () => unknown, reason: (message: string) => string) => {
      try {
        f()
        return undefined
      } catch (cause) {
        return Effect.fail(new InvalidOptions({ option, reason: reason(errorMessage(cause)), cause }))
      }
    }
    if (pems.caCert !== undefined) {
      const blocks = certificateBlocks(pems.caCert)
      if (blocks.length === 0) {
        return Effect.fail(new InvalidOptions({ option: "caCert", reason: `${files.caCert} holds no certificate` }))
      }
      for (const block of blocks) {
        const error = refused(
          "caCert",
          () => new X509Certificate(block),
          (m) => `${files.caCert} holds an invalid certificate: ${m}`
        )
        if (error !== undefined) return error
      }
    }
    const { cert, key } = pems
    if (cert === undefined || key === undefined) return Effect.void
    return (
      refused(
        "cert",
        () => Tls.createSecureContext({ cert }),
        (m) => `${files.cert} is not a valid certificate: ${m}`
      ) ??
      refused(
        "key",
        () => Tls.createSecureContext({ key }),
        (m) => `${files.key} is not a valid unencrypted private key: ${m}`
      ) ??
      refused(
        "key",
        () => Tls.createSecureContext({ cert, key }),
        (m) => `${files.key} is not the key of the certificate in ${files.cert}: ${m}`
      ) ??
      Effect.void
    )
  })

interface Resolved {
  readonly hosts: ReadonlyArray<string>
  readonly dialTimeout: Duration.Duration
  readonly dialKeepAlive: Duration.Duration
  readonly requestTimeout: Duration.Duration
  readonly credentials: Etcd3.IOptions["credentials"]
  readonly auth: Etcd3.IOptions["auth"]
}

/** Validates every option before any network call. */
export const resolveOptions = (options: EtcdClientOptions): Effect.Effect<Resolved, InvalidOptions> =>
  Effect.gen(function* () {
    if (options.endpoints.length === 0) {
      return yield* new InvalidOptions({ option: "endpoints", reason: "at least one endpoint is required" })
    }
    const endpoints = yield* Effect.forEach(options.endpoints, endpoint)
    const dialTimeout = yield* duration("dialTimeout", options.dialTimeout)
    const dialKeepAlive = yield* duration("dialKeepAlive", options.dialKeepAlive)
    const requestTimeout = yield* duration("headerTimeoutPerRequest", options.headerTimeoutPerRequest)
    if ((options.cert === undefined) !== (options.key === undefined)) {
      return yield* new InvalidOptions({
        option: options.cert === undefined ? "cert" : "key",
        reason: "a client certificate needs both cert and key"
      })
    }
    const secure = endpoints.some((e) => e.secure)
    if (!secure && (options.cert !== undefined || options.caCert !== undefined)) {
      return yield* new InvalidOptions({
        option: "endpoints",
        reason: "TLS files are given but no endpoint is https://"
      })
    }
    if (secure && endpoints.some((e) => !e.secure)) {
      return yield* new InvalidOptions({ option: "endpoints", reason: "mixing http:// and https:// endpoints" })
    }
    let credentials: Etcd3.IOptions["credentials"] = undefined
    if (options.caCert !== undefined || options.cert !== undefined) {
      const rootCertificate = options.caCert === undefined ? undefined : yield* pemFile("caCert", options.caCert)
      const certChain = options.cert === undefined ? undefined : yield* pemFile("cert", options.cert)
      const privateKey = options.key === undefined ? undefined : yield* pemFile("key", options.key)
      yield* checkTls(options, { caCert: rootCertificate, cert: certChain, key: privateKey })
      credentials = {
        // grpc-js takes `null` for "the system's roots"
        rootCertificate: rootCertificate ?? (null as unknown as Buffer),
        ...(certChain === undefined ? {} : { certChain }),
        ...(privateKey === undefined ? {} : { privateKey })
      }
    }
    if ((options.username === undefined) !== (options.password === undefined)) {
      return yield* new InvalidOptions({
        option: options.username === undefined ? "username" : "password",
        reason: "etcd authentication needs both username and password"
      })
    }
    if (options.username === "") {
      return yield* new InvalidOptions({ option: "username", reason: "must not be empty" })
    }
    const auth =
      options.username !== undefined && options.password !== undefined
        ? { username: options.username, password: Redacted.value(options.password) }
        : undefined
    return {
      hosts: endpoints.map((e) => e.host),
      dialTimeout,
      dialKeepAlive,
      requestTimeout,
      credentials,
      auth
    }
  })

// ---- errors ----

const errorName = (cause: unknown): string =>
  typeof cause === "object" && cause !== null ? ((cause as Error).constructor?.name ?? "Error") : "unknown"

const errorMessage = (cause: unknown): string =>
  typeof cause === "object" && cause !== null && "message" in cause ? String((cause as Error).message) : String(cause)

/** Maps an etcd3 / gRPC error to a typed EtcdError. */
const grpcCode = (cause: unknown): number | undefined =>
  typeof cause === "object" && cause !== null && "code" in cause && typeof cause.code === "number"
    ? cause.code
    : undefined

/**
 * A failed TLS handshake, in words a user can act on. grpc-js reports every one
 * as UNAVAILABLE ("No connection established. Last error: ..." with OpenSSL's
 * or Node's message), which would read as a member that is down. It stays
 * `Unavailable` (one member's certificate may be wrong and another's right: a
 * watch must go on to the next), with the hint in its detail; `refused` says
 * that a certificate was refused either way, which the connection check, having
 * tried every member, reports as `AuthFailed`. `undefined` for any other error.
 */
const tlsFailure = (message: string): { readonly refused: boolean; readonly hint: string } | undefined => {
  // the server's alert after it checked the client's certificate (RFC 8446 alerts 42-46, 48, 116)
  if (
    /alert (bad certificate|unsupported certificate|certificate revoked|certificate expired|certificate unknown|unknown ca|certificate required)|SSL alert number (42|43|44|45|46|48|116)\b/i.test(
      message
    )
  ) {
    return {
      refused: true,
      hint: "the server refused this client's TLS certificate, or its lack of one (cert and key must be a certificate signed by a CA the server trusts)"
    }
  }
  // Node's verification of the server's certificate
  if (
    /unable to verify the first certificate|self[- ]signed certificate|unable to get (local )?issuer certificate|certificate has expired|certificate is not yet valid|does not match certificate's altnames|certificate signature failure/i.test(
      message
    )
  ) {
    return {
      refused: true,
      hint: "the server's TLS certificate was not accepted (check caCert, and that the certificate names the endpoint's host)"
    }
  }
  if (/before secure TLS connection was established|wrong version number|packet length too long/i.test(message)) {
    return {
      refused: false,
      hint: "the server did not answer the TLS handshake (an https:// endpoint for an etcd that serves plain http?)"
    }
  }
  return undefined
}

/**
 * gRPC's message without its noise: the timestamps and empty "Resolution
 * note" grpc-js appends, and OpenSSL's error code, source file and line.
 */
const cleanMessage = (message: string): string =>
  message
    .replace(
      /[0-9A-F]+:error:[0-9A-F]+:SSL routines:[^:]*:([^:]+):\S*?:\d+:(SSL alert number \d+)?/g,
      (_, what, alert) => (alert === undefined ? what : `${what} (${alert})`)
    )
    .replace(/\s*\(\d{4}-\d\d-\d\dT[\d:.]+Z\)/g, "")
    .replace(/\s*Resolution note:\s*$/, "")
    .trim()

/**
 * gRPC's INTERNAL (13) for a stream the server reset without a status: grpc-js
 * says "Received RST_STREAM with code 0 (Call ended without gRPC status)" when
 * etcd is stopped under an open watch. The member went away, as with
 * UNAVAILABLE: a transient failure (the watch resumes), not `Other` (which
 * made the subscriber list again).
 */
const rstStream = (code: number | undefined, cause: unknown, message: string): boolean =>
  (code === 13 || cause instanceof Etcd3.GRPCInternalError) && message.includes("Received RST_STREAM")

export const toEtcdError = (operation: string, cause: unknown): EtcdError => {
  const name = errorName(cause)
  const message = errorMessage(cause)
  const code = grpcCode(cause)
  const tls = tlsFailure(message)
  if (tls !== undefined) {
    return new EtcdError({ operation, reason: "Unavailable", detail: `${tls.hint}: ${cleanMessage(message)}`, cause })
  }
  const reason: EtcdError["reason"] =
    message.includes("requested lease not found") ||
    message.includes("permission denied") ||
    message.includes("authentication failed") ||
    message.includes("request is too large")
      ? reasonOf(cause, name, message)
      : code === 14 || code === 1 || rstStream(code, cause, message)
        ? "Unavailable"
        : code === 4
          ? "Timeout"
          : code === 7
            ? "PermissionDenied"
            : code === 16
              ? "AuthFailed"
              : reasonOf(cause, name, message)
  return new EtcdError({ operation, reason, detail: cleanMessage(message), cause })
}

const reasonOf = (cause: unknown, name: string, message: string): EtcdError["reason"] =>
  cause instanceof Etcd3.EtcdLeaseInvalidError || message.includes("requested lease not found")
    ? "LeaseNotFound"
    : cause instanceof Etcd3.EtcdPermissionDeniedError || message.includes("permission denied")
      ? "PermissionDenied"
      : cause instanceof Etcd3.EtcdAuthenticationFailedError ||
          cause instanceof Etcd3.EtcdInvalidAuthTokenError ||
          cause instanceof Etcd3.GRPCUnauthenticatedError ||
          message.includes("authentication failed") ||
          message.includes("user name is empty") ||
          message.includes("invalid auth token")
        ? "AuthFailed"
        : message.includes("request is too large") || message.includes("larger than max")
          ? "TooLarge"
          : message.includes("mvcc: required revision has been compacted")
            ? "Compacted"
            : cause instanceof Etcd3.GRPCDeadlineExceededError ||
                // gRPC's "Deadline exceeded", and etcd's "context deadline exceeded" (code 2, UNKNOWN):
                // a member that could not reach the leader in time, during an election for one
                /deadline exceeded/i.test(message) ||
                message.includes("request timed out")
              ? "Timeout"
              : cause instanceof Etcd3.GRPCUnavailableError ||
                  cause instanceof Etcd3.GRPCCancelledError ||
                  cause instanceof Etcd3.EtcdWatchStreamEnded ||
                  message.includes("No connection established") ||
                  message.includes("ECONNREFUSED") ||
                  message.includes("no leader") ||
                  message.includes("leader changed") ||
                  message.includes("not capable") ||
                  message.includes("too many requests") ||
                  message.includes("Broken circuit") ||
                  name === "BrokenCircuitError" ||
                  name === "ClientClosedError"
                ? "Unavailable"
                : "Other"

// ---- keys ----

/** The end of the key range of every key starting with `prefix` (etcd's `WithPrefix`). */
export const prefixEnd = (prefix: Buffer): Buffer => {
  const end = Buffer.from(prefix)
  for (let i = end.length - 1; i >= 0; i--) {
    if (end[i]! < 0xff) {
      end[i] = end[i]! + 1
      return end.subarray(0, i + 1)
    }
  }
  // every byte is 0xff (or the prefix is empty): to the end of the keyspace
  return Buffer.from([0])
}

const rangeOf = (prefix: string): { key: Buffer; range_end: Buffer } => {
  const key = Buffer.from(prefix, "utf8")
  return key.length === 0 ? { key: Buffer.from([0]), range_end: Buffer.from([0]) } : { key, range_end: prefixEnd(key) }
}

/**
 * A watch batch is part of a burst when it comes within {@link burstMillis} of
 * the last one and the last one held {@link burstSize} changes or more. A batch
 * of a burst gathers changes for as long as they keep coming fast: it is handed
 * over once none has come for {@link burstQuietMillis}, once it has gathered
 * for {@link burstMaxMillis}, or as soon as it holds fewer than
 * {@link burstRate} changes per millisecond of gathering (first checked after
 * `burstQuietMillis`, then when the batch would be due if no change came).
 * Every batch costs the subscriber a fixed part (a publish, its followers'
 * wake; before the subscriber's rows were persistent, also O(instances)), so a
 * churn is best handed over in a few large batches: 500 changes in about 80 ms made
 * 10 to 20 batches instead of 34 to 40 with the earlier fixed 1 ms wait, and
 * the subscriber's CPU at 10,000 instances fell from 1.90-2.04 to 1.58-1.85
 * times raw's in four alternating pairs of runs (issue 7). The rate test is
 * what keeps a steady trickle out of it: without it, a client's back-to-back
 * puts (about 0.6 ms apart on loopback) never left a burst once in one, and
 * were seen up to 10 ms late (p90 9 to 23 ms); with 2 per ms instead of 3,
 * puts 0.4-0.5 ms apart stayed in bursts (bench/NOTES.md). Changes that
 * come a few at a time never wait.
 *
 * A change that comes {@link loneMillis} or more after a batch of fewer than
 * `burstSize` changes (a lone change: a registration, a deregistration) is
 * handed over in the callback that delivered it, not at the end of the turn of
 * the event loop: 20 µs from the watch response instead of 50-80 µs (a probe,
 * issue 7). After a larger batch it waits for the turn as before, so that a
 * churn is not cut into more batches (with the large batch's test left out,
 * churn windows went from 12-16 batches to 30-35).
 */
const burstMillis = 2
const burstSize = 4
const burstQuietMillis = 2
const burstMaxMillis = 10
const burstRate = 3
const loneMillis = 1

const leaseOf = (lease: string | undefined): LeaseId | undefined =>
  lease === undefined || lease === "0" || lease === "" ? undefined : lease

/**
 * Whether `decoded`, the UTF-8 decoding of `bytes`, comes from bytes that are
 * not UTF-8 (etcd keys and values are bytes: another client may write any).
 * Those decode with U+FFFD, which is checked first: most keys have none.
 */
const notUtf8 = (bytes: Buffer, decoded: string): boolean => decoded.includes("\uFFFD") && !isUtf8(bytes)

/** The length of the well-formed UTF-8 sequence at `i`, or 0 when none starts there (Unicode's table 3-7). */
const utf8SequenceAt = (bytes: Buffer, i: number): number => {
  const first = bytes[i]!
  const next = (j: number, lo: number, hi: number) => {
    const byte = bytes[i + j]
    return byte !== undefined && byte >= lo && byte <= hi
  }
  if (first < 0x80) return 1
  if (first >= 0xc2 && first <= 0xdf) return next(1, 0x80, 0xbf) ? 2 : 0
  if (first >= 0xe0 && first <= 0xef) {
    const ok = next(1, first === 0xe0 ? 0xa0 : 0x80, first === 0xed ? 0x9f : 0xbf) && next(2, 0x80, 0xbf)
    return ok ? 3 : 0
  }
  if (first >= 0xf0 && first <= 0xf4) {
    const ok =
      next(1, first === 0xf0 ? 0x90 : 0x80, first === 0xf4 ? 0x8f : 0xbf) && next(2, 0x80, 0xbf) && next(3, 0x80, 0xbf)
    return ok ? 4 : 0
  }
  return 0
}

/**
 * A key that is not UTF-8, as a string of its own: its well-formed sequences
 * decoded, and each other byte (0x80 to 0xFF) as the lone surrogate U+DC80 to
 * U+DCFF, which no UTF-8 decodes to (Python's "surrogateescape"). Decoded with
 * U+FFFD for the bad bytes, `/p/k\xff` and `/p/k\xfe` were one key, and the
 * same as a well-formed `/p/k\uFFFD`: the subscriber held duplicates, and the
 * delete of one removed another. Such a key is `malformed` (see `toKeyValue`).
 */
const escapeKey = (bytes: Buffer): string => {
  let out = ""
  let from = 0
  let i = 0
  while (i < bytes.length) {
    const n = utf8SequenceAt(bytes, i)
    if (n > 0) {
      i += n
      continue
    }
    out += bytes.toString("utf8", from, i) + String.fromCharCode(0xdc00 + bytes[i]!)
    from = ++i
  }
  return out + bytes.toString("utf8", from)
}

/** A key as a string; one that is not UTF-8 is escaped (see {@link escapeKey}). */
const keyOf = (bytes: Buffer): string => {
  const decoded = bytes.toString("utf8")
  return notUtf8(bytes, decoded) ? escapeKey(bytes) : decoded
}

/** `malformed` when the key or the value is not UTF-8: the entry is no instance. */
const toKeyValue = (kv: WireKeyValue): KeyValue => {
  const key = kv.key.toString("utf8")
  const badKey = notUtf8(kv.key, key)
  return {
    key: badKey ? escapeKey(kv.key) : key,
    value: kv.value.toString("utf8"),
    malformed: badKey || !isUtf8(kv.value),
    createRevision: kv.createRevision,
    modRevision: kv.modRevision,
    lease: leaseOf(kv.lease)
  }
}

/** A watched put; `malformed` as in {@link toKeyValue}. */
const toPut = (kv: WireKeyValue): RawWatchEvent => {
  const key = kv.key.toString("utf8")
  const badKey = notUtf8(kv.key, key)
  return {
    _tag: "Put",
    key: badKey ? escapeKey(kv.key) : key,
    value: kv.value.toString("utf8"),
    malformed: badKey || !isUtf8(kv.value),
    revision: kv.modRevision,
    lease: leaseOf(kv.lease)
  }
}

// ---- the client ----

/**
 * Closes a stream we no longer want. Half-closing first makes etcd3 see the
 * stream as not writable, so the CANCELLED error that follows is not counted
 * against the member by its circuit breaker.
 */
const abort = (stream: { end: () => void; cancel: () => void }): void => {
  stream.end()
  stream.cancel()
}

/** What a keep-alive needs of the raw gRPC Lease client etcd3's pool hands out. */
interface KeepAliveCall {
  readonly write: (request: Etcd3.ILeaseKeepAliveRequest) => boolean
  readonly end: () => void
  readonly cancel: () => void
  readonly on: (event: string, listener: (...args: Array<never>) => void) => unknown
}
interface LeaseService {
  readonly leaseKeepAlive: (metadata: unknown, options: { readonly deadline: number }) => KeepAliveCall
}

/**
 * etcd3's connection pool. etcd3 keeps it protected, but a keep-alive needs its
 * `withConnection` to fail over the way a unary call does (see `keepAliveOnce`),
 * and a watch its own metadata (see `openWatchStream`).
 */
const poolOf = (
  etcd: Etcd3.Etcd3
): Pick<ConnectionPool, "withConnection" | "markFailed" | "exec"> & { readonly shuffledHosts: () => Hosts } =>
  (etcd as unknown as { readonly pool: ConnectionPool & { readonly shuffledHosts: () => Hosts } }).pool

/**
 * The method we give etcd3's KV service client: its `range` with our decoding
 * of the response (see wire.ts), called through the pool's `exec` as etcd3's
 * own `kv.range` is, so that it fails over, retries and re-authenticates the
 * same way. A symbol of this module: another copy of the library in the
 * process (sharing one etcd3) gives the class a method of its own.
 */
const rangeWireMethod: unique symbol = Symbol("effect-sd-etcd/rangeWire")

/**
 * A response that did not decode (see wire.ts). Not one of etcd3's errors: the
 * pool neither retries it on another member nor counts it against the member.
 */
class UndecodableResponse extends Error {
  override readonly name = "UndecodableResponse"
}
interface KvService {
  readonly range: { readonly path: string; readonly requestSerialize: (request: Etcd3.IRangeRequest) => Buffer }
  readonly makeUnaryRequest: (
    path: string,
    serialize: (request: Etcd3.IRangeRequest) => Buffer,
    deserialize: (message: Buffer) => WireRangeResponse | Undecodable,
    request: Etcd3.IRangeRequest,
    metadata: unknown,
    options: object,
    callback: (error: Error | null, response?: WireRangeResponse | Undecodable) => void
  ) => unknown
}
/** Gives `client`'s class (every member's KV client is of one class) the method, once. */
const installRangeWire = (client: unknown): void => {
  const proto = Object.getPrototypeOf(client) as object
  if (Object.prototype.hasOwnProperty.call(proto, rangeWireMethod)) return
  Object.defineProperty(proto, rangeWireMethod, {
    value: function (
      this: KvService,
      request: Etcd3.IRangeRequest,
      metadata: unknown,
      options: object,
      callback: (error: Error | null, response?: WireRangeResponse) => void
    ) {
      return this.makeUnaryRequest(
        this.range.path,
        this.range.requestSerialize,
        decodeRangeResponse,
        request,
        metadata,
        options,
        (error, response) =>
          response instanceof Undecodable
            ? callback(new UndecodableResponse(response.message))
            : callback(error, response)
      )
    }
  })
}

/** etcd's Range through etcd3's pool, its response decoded by us (see {@link rangeWireMethod}). */
const rangeOnWire = (etcd: Etcd3.Etcd3) => {
  const pool = poolOf(etcd)
  let installed = false
  return async (request: Etcd3.IRangeRequest): Promise<WireRangeResponse> => {
    if (!installed) {
      // the pool hands out a member's client without calling it: the class gets the method
      await pool.withConnection("KV", ({ client }) => {
        installRangeWire(client)
        return Promise.resolve()
      })
      installed = true
    }
    // the pool's exec calls the named method of the client it picks
    return (await pool.exec("KV", rangeWireMethod as unknown as "range", request)) as unknown as WireRangeResponse
  }
}

type WatchStream = Etcd3.IDuplexStream<Etcd3.IWatchRequest, WireWatchResponse | Undecodable>
/** etcd3's Watch service client: a gRPC client whose `watch` method carries its definition (path, serializer). */
interface WatchService {
  readonly watch: { readonly path: string; readonly requestSerialize: (request: Etcd3.IWatchRequest) => Buffer }
  readonly makeBidiStreamRequest: (
    path: string,
    serialize: (request: Etcd3.IWatchRequest) => Buffer,
    deserialize: (message: Buffer) => WireWatchResponse | Undecodable,
    metadata: unknown,
    options: object
  ) => WatchStream
}

/**
 * Opens a watch stream as etcd3's `watchClient.watch()` does, with the gRPC
 * metadata `hasleader: true` (etcd's clientv3 `WithRequireLeader`): a member
 * cut off from the leader (the minority side of a partition, or the last one
 * up) refuses it, and cancels it once it has had no leader for a few election
 * timeouts, with "no leader" (Unavailable). Without it, such a member keeps the
 * watch open and answers progress requests, and a subscriber would follow a
 * member that hears of no change while saying it is live.
 */
const openWatchStream = (etcd: Etcd3.Etcd3): Promise<WatchStream> => {
  const pool = poolOf(etcd)
  return pool.withConnection("Watch", ({ resource, client, metadata }) => {
    const withLeader = metadata.clone()
    withLeader.set("hasleader", "true")
    // as etcd3's `watch` method does, with our own decoding of the responses (see wire.ts);
    // a stream has no deadline (defaultCallOptions gives streams none)
    const service = client as unknown as WatchService
    const stream = service.makeBidiStreamRequest(
      service.watch.path,
      service.watch.requestSerialize,
      decodeWatchResponse,
      withLeader,
      {}
    )
    stream.on("error", (error: Error) => {
      if ((stream as unknown as { readonly writable: boolean }).writable) pool.markFailed(resource, error)
    })
    return stream
  })
}

/** The pool's endless generator of its hosts in shuffled order (what a unary call fails over along). */
type Hosts = NonNullable<Parameters<ConnectionPool["withConnection"]>[2]>

/** What a revoke sent straight to a member needs of etcd3's Lease service client. */
interface LeaseClient {
  readonly leaseRevoke: (
    request: Etcd3.ILeaseRevokeRequest,
    metadata: unknown,
    options: { readonly deadline: number },
    callback: (error: Error | null, response?: Etcd3.ILeaseRevokeResponse) => void
  ) => unknown
}
/** ... and of the pool's host of that client. */
interface LeaseHost {
  readonly faultHandling: { readonly execute: <T>(fn: () => Promise<T>) => Promise<T> }
  readonly getServiceClient: (name: "Lease") => LeaseClient
  readonly resetAllServices: () => void
}

/**
 * A revoke sent to a member's Lease client at once, in the caller's turn, as
 * the first attempt of etcd3's pool would be (the member is the first of a
 * shuffle of the pool's hosts, the call goes through its circuit breaker) but
 * without the pool's steps before it (its retry policy, the wait for the
 * metadata, the call options): about 80 µs less before the request leaves,
 * with the caches cold (an uncommitted probe of 150 deregistrations 20 ms
 * apart: gRPC's call 494-519 µs after `deregister`, against 571-601 through
 * the pool; issue 7). For a client without etcd auth
 * only, whose metadata is empty (a token may have expired and need the pool's
 * re-authentication), and once the pool has handed out that metadata, which
 * it does without a request. `undefined` when it cannot be sent that way.
 *
 * Past that first attempt it is etcd3's own call: a member failure (the
 * member down or hung, its breaker open) goes on through the pool along the
 * same shuffle (so the member just tried comes last), failing over as the
 * pool does, with as many attempts in all (a first attempt that was sent
 * counts as one of them); and when a breaker's refusal ends it after a real
 * failure, the real failure is what it fails with.
 */
const directRevoke = (
  etcd: Etcd3.Etcd3,
  requestMillis: number,
  failover: RetryPolicy,
  hosts: number
): ((lease: LeaseId) => Promise<Etcd3.ILeaseRevokeResponse> | undefined) => {
  const pool = poolOf(etcd)
  // after a first attempt that was sent and failed: the rest of the pool's failover (which sends
  // `hosts` + 1 times at most), so that a call sends no more often than etcd3's own, nor takes longer
  const restOfFailover = retry(handleWhen(isMemberFailure), { maxAttempts: hosts - 1 })
  let metadata: { readonly clone: () => unknown } | undefined = undefined
  // etcd3's own grpc-js Metadata, empty: one of another copy of grpc-js would be taken for options
  pool
    .withConnection("Lease", ({ metadata: handed }) => {
      metadata = handed
      return Promise.resolve()
    })
    .catch(() => undefined)
  return (lease) => {
    if (metadata === undefined) return undefined
    const empty = metadata
    // the failure of the last attempt sent, which a breaker's later refusal does not hide
    let lastFailure: Error | undefined = undefined
    const request = (client: LeaseClient, metadata: unknown) =>
      new Promise<Etcd3.ILeaseRevokeResponse>((resolve, reject) => {
        client.leaseRevoke({ ID: lease }, metadata, { deadline: Date.now() + requestMillis }, (error, response) => {
          if (error === null) return resolve(response!)
          lastFailure = Etcd3.castGrpcError(error)
          reject(lastFailure)
        })
      })
    const order = pool.shuffledHosts()
    const host = order.next().value as unknown as LeaseHost
    const client = host.getServiceClient("Lease")
    let sent = false
    return host.faultHandling
      .execute(() => {
        sent = true
        return request(client, empty.clone())
      })
      .catch((error: unknown) => {
        if (sent && !(error instanceof Error && isMemberFailure(error))) throw error
        if (error instanceof Error && Etcd3.isRecoverableError(error)) host.resetAllServices()
        return (sent ? restOfFailover : failover).execute(() =>
          pool.withConnection(
            "Lease",
            ({ client, metadata }) => request(client as unknown as LeaseClient, metadata),
            order
          )
        )
      })
      .catch((error: unknown) => {
        throw error instanceof BrokenCircuitError && lastFailure !== undefined ? lastFailure : error
      })
  }
}

/** How many lease TTLs a client keeps for its keep-alives at most (see `keepAliveOnce`). */
const maxRememberedLeases = 4096

/**
 * Whether an error says something about the member (retry elsewhere, count it
 * against the member's circuit breaker). A request over gRPC's message size
 * limit comes back as RESOURCE_EXHAUSTED, which etcd3 takes for recoverable: it
 * is the request's fault, and retrying it only trips every member's breaker.
 */
/**
 * A request this client withdrew (interrupted, or the slower of two hedged
 * keep-alives): not a failure of the member, which its circuit breaker must
 * not count, and not an answer, which it must not count as a success either
 * (cockatiel records neither for an error its filter does not handle).
 */
class Withdrawn extends Error {
  constructor() {
    super("withdrawn by the client")
  }
}

const isMemberFailure = (error: Error): boolean =>
  Etcd3.isRecoverableError(error) && !errorMessage(error).includes("larger than max")

/**
 * A member's circuit breaker: after two failures in a row, the member is
 * skipped for a second, then one call tests it. A call that comes while the
 * test runs is refused at once (`BrokenCircuitError`: the pool tries the next
 * member) instead of waiting for the test, as cockatiel's breaker has it.
 * etcd3 re-authenticates a call that a member refused for its token (a
 * restarted member has forgotten its simple tokens) by calling itself from
 * inside the call the breaker runs; when that call was the test, the inner
 * call waited for the test, which waited for it: with etcd auth, every call to
 * a member that had restarted hung until its timeout, for good (issue 7's
 * review). Now the inner call is refused, the test ends with that refusal
 * (which closes the breaker: it is no failure of the member's), and the next
 * call authenticates again. Refusing rather than letting calls through also
 * keeps watches off a member that hangs while it is tested (a stream opens at
 * once, and would stay there until its keep-alive found the hang: a review
 * measured 50% of the watches opened on a hung member placed first when let
 * through, 17% waiting for the test, 8% refused).
 */
const memberBreaker = (): IPolicy => {
  const breaker = circuitBreaker(handleWhen(isMemberFailure), {
    halfOpenAfter: 1000,
    breaker: new ConsecutiveBreaker(2)
  })
  return {
    // a type-level marker of cockatiel's, never read
    _altReturn: undefined as never,
    onSuccess: breaker.onSuccess,
    onFailure: breaker.onFailure,
    execute: <T>(fn: (context: IDefaultPolicyContext) => PromiseLike<T> | T, signal?: AbortSignal): Promise<T> =>
      breaker.state === CircuitState.HalfOpen ? Promise.reject(new BrokenCircuitError()) : breaker.execute(fn, signal)
  }
}

/** The native client and its resolved options, for the parts of the library that need them. */
export interface Native {
  readonly etcd: Etcd3.Etcd3
  readonly resolved: Resolved
  /** The pool's failover: its `onRetry` tells each member's failure before the next is tried. */
  readonly failover: RetryPolicy
}

/** Builds the native client (closed with the scope) after validating the options. */
export const makeNative = (options: EtcdClientOptions): Effect.Effect<Native, InvalidOptions, Scope.Scope> =>
  Effect.gen(function* () {
    const resolved = yield* resolveOptions(options)
    const requestMillis = Duration.toMillis(resolved.requestTimeout)
    const keepAliveMillis = Duration.toMillis(resolved.dialKeepAlive)
    // fail over to another member, at once
    const failover = retry(handleWhen(isMemberFailure), { maxAttempts: Math.max(1, resolved.hosts.length) })
    const etcd = yield* Effect.acquireRelease(
      Effect.sync(
        () =>
          new Etcd3.Etcd3({
            hosts: [...resolved.hosts],
            ...(resolved.credentials === undefined ? {} : { credentials: resolved.credentials }),
            ...(resolved.auth === undefined
              ? {}
              : {
                  auth: {
                    ...resolved.auth,
                    callOptions: () => ({ deadline: Date.now() + requestMillis })
                  }
                }),
            dialTimeout: Duration.toMillis(resolved.dialTimeout),
            // a fresh deadline for every attempt of every unary call; streams have none
            defaultCallOptions: (context) => (context.isStream ? {} : { deadline: Date.now() + requestMillis }),
            grpcOptions: {
              "grpc.keepalive_time_ms": Math.max(keepAliveMillis, Duration.toMillis(minKeepAliveInterval)),
              "grpc.keepalive_timeout_ms": keepAliveMillis,
              "grpc.keepalive_permit_without_calls": 1,
              "grpc.max_receive_message_length": -1,
              "grpc.initial_reconnect_backoff_ms": 100,
              "grpc.max_reconnect_backoff_ms": 2000
            },
            faultHandling: {
              // a member that keeps failing is skipped for a second, then tried again
              host: memberBreaker,
              global: failover
            }
          })
      ),
      (etcd) => Effect.sync(() => etcd.close())
    )
    return { etcd, resolved, failover }
  })

export const make = (options: EtcdClientOptions): Effect.Effect<EtcdClient, InvalidOptions | EtcdError, Scope.Scope> =>
  Effect.gen(function* () {
    const { etcd, failover, resolved } = yield* makeNative(options)
    const requestTimeout = resolved.requestTimeout
    const requestMillis = Duration.toMillis(requestTimeout)
    const revokeDirect =
      resolved.auth === undefined ? directRevoke(etcd, requestMillis, failover, resolved.hosts.length) : undefined
    const keepAliveMillis = Duration.toMillis(resolved.dialKeepAlive)
    // the pool tries each member once per call; bound the whole call as a safety net
    const callTimeout = Duration.sum(Duration.times(requestTimeout, resolved.hosts.length), Duration.seconds(1))

    // One timer per call, no fiber race: `Effect.timeoutFail` forks the call and a sleeper and
    // joins them, which cost 0.3-0.4 ms per request on a loaded machine (the benchmark, issue 7).
    const callTimeoutMillis = Duration.toMillis(callTimeout)
    // A request refused by the members' circuit breakers (each opens after two failures in a row, for
    // a second) says only "Execution prevented because the circuit breaker is open": it then says
    // why, with the last failure that was not such a refusal.
    let lastFailure: { readonly what: string; readonly at: number } | undefined = undefined
    const failure = (operation: string, cause: unknown): EtcdError => {
      const error = toEtcdError(operation, cause)
      if (errorName(cause) !== "BrokenCircuitError" && !errorMessage(cause).includes("circuit breaker is open")) {
        // a call this client cancelled itself (an interrupted request, a closed watch) says nothing of etcd
        if (isTransient(error) && grpcCode(cause) !== 1 && !errorMessage(cause).includes("Cancelled on client")) {
          lastFailure = { what: `${error.operation}: ${error.detail ?? error.reason}`, at: Date.now() }
        }
        return error
      }
      const last =
        lastFailure === undefined
          ? "not known"
          : `${((Date.now() - lastFailure.at) / 1000).toFixed(1)} s ago, ${lastFailure.what}`
      return new EtcdError({
        operation,
        reason: "Unavailable",
        detail: `not sent: every member failed just before and is tried again within a second (the last failure: ${last})`,
        cause
      })
    }

    /**
     * Sends a request at once (`f` is called now) and answers the effect that
     * waits for its answer, within the call timeout from when it starts
     * waiting. The request goes before the timer is set: a timer's start costs
     * tens of microseconds with the caches cold, on the way of every request
     * (issue 7). The effect is run once; interrupted, it stops waiting (etcd3
     * goes on with the request).
     */
    const sent = <A>(operation: string, f: () => Promise<A>): Effect.Effect<A, EtcdError> => {
      let outcome: Effect.Effect<A, EtcdError> | undefined = undefined
      let waiting: ((outcome: Effect.Effect<A, EtcdError>) => void) | undefined = undefined
      let timer: ReturnType<typeof setTimeout> | undefined = undefined
      const settle = (effect: Effect.Effect<A, EtcdError>) => {
        if (outcome !== undefined) return
        outcome = effect
        if (timer !== undefined) clearTimeout(timer)
        waiting?.(effect)
      }
      try {
        f().then(
          (a) => settle(Effect.succeed(a)),
          (cause: unknown) => settle(Effect.fail(failure(operation, cause)))
        )
      } catch (cause) {
        settle(Effect.fail(failure(operation, cause)))
      }
      return Effect.async<A, EtcdError>((resume) => {
        if (outcome !== undefined) return resume(outcome)
        waiting = resume
        timer = setTimeout(
          () =>
            settle(Effect.fail(new EtcdError({ operation, reason: "Timeout", detail: `no answer in ${callTimeout}` }))),
          callTimeoutMillis
        )
        return Effect.sync(() => {
          waiting = undefined
          settle(Effect.interrupt)
        })
      })
    }

    /** A request sent when the effect runs, answered within the call timeout. */
    const call = <A>(operation: string, f: () => Promise<A>): Effect.Effect<A, EtcdError> =>
      Effect.suspend(() => sent(operation, f))

    // the cluster must answer within dialTimeout (etcd3 ignores its own dialTimeout, its issue #137).
    // Each member tried gets its share of it: a member that accepts the connection and never
    // answers (paused, partitioned) would otherwise use it all, and the next one never be tried.
    // etcd3 spreads these options into every attempt's, so the getter gives each its own deadline.
    const attemptMillis = Duration.toMillis(resolved.dialTimeout) / resolved.hosts.length
    // a certificate refused by a member that was tried before the last one: the error of the last
    // (a member down, or hung) would hide it
    let refusal: string | undefined = undefined
    const listening = failover.onRetry((reason) => {
      if (refusal !== undefined || !("error" in reason)) return
      const detail = errorMessage(reason.error)
      if (tlsFailure(detail)?.refused === true) refusal = toEtcdError("connect", reason.error).detail
    })
    yield* Effect.tryPromise({
      try: () =>
        etcd.maintenance.status({
          get deadline() {
            return Date.now() + attemptMillis
          }
        }),
      catch: (cause) => toEtcdError("connect", cause)
    }).pipe(
      Effect.timeoutFail({
        duration: resolved.dialTimeout,
        onTimeout: () =>
          new EtcdError({
            operation: "connect",
            reason: "Unavailable",
            detail: `no endpoint of ${options.endpoints.join(", ")} answered within ${Duration.format(resolved.dialTimeout)}`
          })
      }),
      Effect.ensuring(Effect.sync(() => listening.dispose())),
      Effect.mapError((e): EtcdError => {
        // every member was tried: a certificate refused, by the server or by caCert, is the
        // credentials' fault, not a member's
        const refused = e.detail !== undefined && tlsFailure(e.detail)?.refused === true ? e.detail : refusal
        if (refused !== undefined && (e.reason === "Unavailable" || e.reason === "Timeout")) {
          return new EtcdError({ operation: "connect", reason: "AuthFailed", detail: refused, cause: e.cause })
        }
        if (e.reason === "Timeout") {
          return new EtcdError({
            operation: "connect",
            reason: "Unavailable",
            detail: `no endpoint of ${options.endpoints.join(", ")} answered within ${Duration.format(resolved.dialTimeout)}`,
            cause: e.cause
          })
        }
        if (e.reason !== "Unavailable" || e.detail === undefined) return e
        // a plain-http etcd answers a TLS client hello with bytes TLS cannot read ("wrong version
        // number", hinted at by toEtcdError) or, under load, by resetting the connection
        if (
          resolved.credentials !== undefined &&
          e.detail.includes("ECONNRESET") &&
          !e.detail.includes("did not answer the TLS handshake")
        ) {
          return new EtcdError({
            operation: "connect",
            reason: "Unavailable",
            detail: `the server did not answer the TLS handshake, it reset the connection (an https:// endpoint for an etcd that serves plain http?): ${e.detail}`,
            cause: e.cause
          })
        }
        // grpc-js's words for a connection closed before HTTP/2 began, which is what an etcd that
        // requires TLS does to a plain-text client (a refused one says ECONNREFUSED)
        if (e.detail.includes("Last error: Failed to connect") && resolved.credentials === undefined) {
          return new EtcdError({
            operation: "connect",
            reason: "Unavailable",
            detail: `the server closed the connection before HTTP/2 began (an http:// endpoint for an etcd that requires TLS?): ${e.detail}`,
            cause: e.cause
          })
        }
        return e
      })
    )

    // The TTL (seconds) of the leases this client granted, for their keep-alives (see keepAliveOnce);
    // forgotten when revoked or found gone, and the oldest pruned past a bound (leases left to expire)
    const leaseTtls = new Map<LeaseId, number>()
    const remember = (lease: LeaseId, ttlSeconds: number) => {
      if (leaseTtls.size >= maxRememberedLeases) {
        let n = 0
        for (const old of leaseTtls.keys()) {
          if (n++ >= maxRememberedLeases / 4) break
          leaseTtls.delete(old)
        }
      }
      leaseTtls.set(lease, ttlSeconds)
    }
    const forget = (lease: LeaseId) => {
      leaseTtls.delete(lease)
    }

    const grant = (ttlSeconds: number) =>
      Effect.suspend(() =>
        Number.isInteger(ttlSeconds) && ttlSeconds > 0
          ? call("grant", () => etcd.leaseClient.leaseGrant({ TTL: ttlSeconds })).pipe(
              Effect.map((r) => {
                remember(r.ID, ttlSeconds)
                return r.ID
              })
            )
          : Effect.fail(
              new EtcdError({ operation: "grant", reason: "Other", detail: `TTL must be a positive integer` })
            )
      )

    /**
     * One keep-alive attempt on one member, with its own deadline. It runs inside
     * the pool's `withConnection` and settles only when the member answers, so the
     * member's circuit breaker counts a hung member as a failure (a stream that
     * merely opened would count as a success, and every keep-alive would go back
     * to the hung member).
     */
    const keepAliveAttempt = (lease: LeaseId, hosts: Hosts, millis: number): Effect.Effect<number, EtcdError> =>
      Effect.async<number, EtcdError>((resume) => {
        let call: KeepAliveCall | undefined
        let done = false
        poolOf(etcd)
          .withConnection(
            "Lease",
            ({ client, metadata }) =>
              new Promise<Etcd3.ILeaseKeepAliveResponse | undefined>((resolve, reject) => {
                if (done) return reject(new Withdrawn())
                const s = (client as unknown as LeaseService).leaseKeepAlive(metadata, {
                  deadline: Date.now() + millis
                })
                call = s
                s.on("data", (res: Etcd3.ILeaseKeepAliveResponse) => {
                  resolve(res)
                  s.end()
                })
                // closed by us (interrupted, or a hedge that lost): neither the member's fault nor
                // an answer, so nothing for its breaker either way (a success would hide a hung member)
                s.on("error", (cause: Error) => (done ? reject(new Withdrawn()) : reject(Etcd3.castGrpcError(cause))))
                s.on("end", () => reject(new Etcd3.GRPCUnavailableError("keep-alive stream ended")))
                s.write({ ID: lease })
              }),
            hosts
          )
          .then(
            (res) => {
              if (done || res === undefined) return
              done = true
              const ttl = Number(res.TTL)
              resume(
                ttl > 0
                  ? Effect.succeed(ttl)
                  : Effect.fail(
                      new EtcdError({ operation: "keepAlive", reason: "LeaseNotFound", detail: `lease ${lease}` })
                    )
              )
            },
            (cause: unknown) => {
              if (done) return
              done = true
              resume(Effect.fail(failure("keepAlive", cause)))
            }
          )
        return Effect.sync(() => {
          if (done) return
          done = true
          if (call !== undefined) abort(call)
        })
      }).pipe(
        // a safety net: the call's own deadline ends a normal attempt first
        Effect.timeoutFail({
          duration: Duration.millis(millis + 500),
          onTimeout: () =>
            new EtcdError({
              operation: "keepAlive",
              reason: "Timeout",
              detail: `no answer in ${Duration.format(Duration.millis(millis))}`
            })
        })
      )

    /**
     * A keep-alive that fails over to another member like a unary call: one
     * attempt per member at most, along one shuffled order of the members (each
     * attempt starting a new order could try a hung member again, a whole
     * request timeout each time, and let a short TTL expire).
     *
     * For a lease this client granted whose quarter TTL is shorter than the
     * request timeout, a second keep-alive is sent to another member when the
     * first has had no answer for a quarter of the TTL (a hedge), and the first
     * answer wins: with a hung member tried first, waiting out the whole request
     * timeout (3 s by default) let 3 s and 5 s leases expire between two
     * heartbeats. On a cluster that is merely slow, the first attempt's answer
     * still comes within its own deadline. The slower attempt is not cancelled
     * but left to end by itself (within its deadline), unheard: its member's
     * circuit breaker must count how it ends. Cancelled, a hung member's
     * attempt counted as no failure, or, while its breaker was testing it, as
     * a success: the breaker let every request go back to the hung member, and
     * a watch there never reconnected elsewhere.
     */
    const keepAliveOnce = (lease: LeaseId): Effect.Effect<number, EtcdError> =>
      Effect.suspend(() => {
        const pool = poolOf(etcd)
        // the members an attempt has gone to, which the later hedges go to last
        const tried = new Set<unknown>()
        const untriedFirst = (): Hosts => {
          const order = pool.shuffledHosts()
          return (function* () {
            // a bounded search: every member may have been tried
            for (let skipped = 0; ;) {
              const host = order.next().value
              if (tried.has(host) && skipped++ < resolved.hosts.length) continue
              tried.add(host)
              yield host
            }
          })() as Hosts
        }
        const retried = (hosts: Hosts) =>
          keepAliveAttempt(lease, hosts, requestMillis).pipe(
            Effect.retry({ times: resolved.hosts.length - 1, while: (error) => isTransient(error) })
          )
        const ttlSeconds = leaseTtls.get(lease)
        const hedgeMillis = ttlSeconds === undefined ? requestMillis : ttlSeconds * 250
        if (resolved.hosts.length < 2 || hedgeMillis >= requestMillis)
          return forgetIfGone(lease, retried(untriedFirst()))
        // an attempt that the race stops waiting for, but that runs on to its own end
        // an answer that settles it, the lease's TTL or its absence (LeaseNotFound: no need to hear the others)
        const settled = (attempt: Effect.Effect<number, EtcdError>) =>
          Effect.catchIf(
            Effect.map(attempt, Either.right),
            (error) => error.reason === "LeaseNotFound",
            (error) => Effect.succeed(Either.left(error))
          )
        const unheard = (n: number) => {
          const attempt = Effect.suspend(() =>
            Effect.disconnect(Effect.uninterruptible(settled(retried(untriedFirst()))))
          )
          return n === 0 ? attempt : Effect.delay(attempt, Duration.millis(n * hedgeMillis))
        }
        // one attempt at once, then one more every quarter of the TTL while none has answered, each to a
        // member not tried yet (two hung members of five took two): the first answer counts, and a
        // failure counts only once every attempt has failed (another member's breaker, open, fails
        // an attempt at once while the first may still answer)
        const [first, ...hedges] = Array.from({ length: resolved.hosts.length }, (_, n) => unheard(n))
        return forgetIfGone(lease, Effect.flatten(Effect.raceAll([first!, ...hedges])))
      })

    /** A keep-alive whose lease is gone forgets its TTL. */
    const forgetIfGone = <A>(lease: LeaseId, keepAlive: Effect.Effect<A, EtcdError>): Effect.Effect<A, EtcdError> =>
      Effect.tapErrorTag(keepAlive, "EtcdError", (error) =>
        error.reason === "LeaseNotFound" ? Effect.sync(() => forget(lease)) : Effect.void
      )

    const revoked = (lease: LeaseId, request: Effect.Effect<unknown, EtcdError>) =>
      request.pipe(
        Effect.tapErrorTag("EtcdError", (error) =>
          error.reason === "LeaseNotFound" ? Effect.sync(() => forget(lease)) : Effect.void
        ),
        Effect.zipLeft(Effect.sync(() => forget(lease))),
        Effect.asVoid
      )
    const revoke = (lease: LeaseId) =>
      revoked(
        lease,
        call("revoke", () => etcd.leaseClient.leaseRevoke({ ID: lease }))
      )
    // sent at once: a deregistration's revoke leaves before the effects that wait for it are built
    const revokeNow = (lease: LeaseId) => {
      const answer = sent("revoke", () => revokeDirect?.(lease) ?? etcd.leaseClient.leaseRevoke({ ID: lease }))
      // the rest is built when it runs: nothing more between the request and the caller's next step
      return Effect.suspend(() => revoked(lease, answer))
    }

    const put = (key: string, value: string, options?: { readonly lease?: LeaseId | undefined }) =>
      // a lease id is the decimal string etcd gave (0: no lease, as in etcd); etcd3 would turn
      // anything else into lease 0 too, and the key would never expire
      options?.lease !== undefined && !/^(0|[1-9][0-9]*)$/.test(options.lease)
        ? Effect.fail(
            new EtcdError({ operation: "put", reason: "LeaseNotFound", detail: `not a lease id: ${options.lease}` })
          )
        : call("put", () =>
            etcd.kv.put({
              key: Buffer.from(key, "utf8"),
              value: Buffer.from(value, "utf8"),
              ...(options?.lease === undefined ? {} : { lease: options.lease })
            })
          ).pipe(Effect.map((r) => Number(r.header.revision)))

    /**
     * A grant and a put on the new lease, the put sent from the grant's
     * callback: a first registration waits for no fiber between its two
     * requests (a wake-up of the run loop: 50-65 µs with caches thrashed, on
     * these machines; issue 7). Each request has the call timeout. Whatever fails or
     * is interrupted once the lease is granted, the lease is revoked before
     * the effect ends (a lease granted after an interruption, or a put that
     * lands after one, is revoked when its answer comes).
     */
    const grantAndPut = (ttlSeconds: number, key: string, value: string): Effect.Effect<GrantedAndPut, EtcdError> =>
      Number.isInteger(ttlSeconds) && ttlSeconds > 0
        ? Effect.async<GrantedAndPut, EtcdError>((resume) => {
            let done = false
            let lease: LeaseId | undefined = undefined
            let timer: ReturnType<typeof setTimeout> | undefined = undefined
            const revokeLater = (id: LeaseId) => {
              etcd.leaseClient.leaseRevoke({ ID: id }).catch(() => undefined)
            }
            const settle = (effect: Effect.Effect<GrantedAndPut, EtcdError>) => {
              if (done) return
              done = true
              clearTimeout(timer)
              resume(effect)
            }
            // fails with `error`, revoking the lease first if there is one
            const failWith = (error: EtcdError) =>
              settle(
                lease === undefined
                  ? Effect.fail(error)
                  : Effect.zipRight(Effect.ignore(revoke(lease)), Effect.fail(error))
              )
            const arm = (operation: string) => {
              clearTimeout(timer)
              timer = setTimeout(
                () => failWith(new EtcdError({ operation, reason: "Timeout", detail: `no answer in ${callTimeout}` })),
                callTimeoutMillis
              )
            }
            const putOn = (id: LeaseId) => {
              lease = id
              remember(id, ttlSeconds)
              arm("put")
              etcd.kv.put({ key: Buffer.from(key, "utf8"), value: Buffer.from(value, "utf8"), lease: id }).then(
                (r) => {
                  if (done) revokeLater(id)
                  else settle(Effect.succeed({ lease: id, revision: Number(r.header.revision) }))
                },
                (cause: unknown) => failWith(failure("put", cause))
              )
            }
            arm("grant")
            try {
              etcd.leaseClient.leaseGrant({ TTL: ttlSeconds }).then(
                (r) => {
                  if (done) return revokeLater(r.ID)
                  try {
                    putOn(r.ID)
                  } catch (cause) {
                    failWith(failure("put", cause))
                  }
                },
                (cause: unknown) => failWith(failure("grant", cause))
              )
            } catch (cause) {
              failWith(failure("grant", cause))
            }
            return Effect.suspend(() => {
              if (done) return Effect.void
              done = true
              clearTimeout(timer)
              return lease === undefined ? Effect.void : Effect.ignore(revoke(lease))
            })
          })
        : Effect.fail(new EtcdError({ operation: "grant", reason: "Other", detail: `TTL must be a positive integer` }))

    const range = rangeOnWire(etcd)
    const get = (key: string) =>
      call("get", () => range({ key: Buffer.from(key, "utf8") })).pipe(
        Effect.map((r) => (r.kvs.length === 0 ? Option.none() : Option.some(toKeyValue(r.kvs[0]!))))
      )

    const del = (key: string) =>
      call("delete", () => etcd.kv.deleteRange({ key: Buffer.from(key, "utf8") })).pipe(
        Effect.map((r) => ({ deleted: Number(r.deleted), revision: Number(r.header.revision) }))
      )

    const list = (prefix: string) =>
      call("list", () => range(rangeOf(prefix))).pipe(
        Effect.map((r) => ({
          revision: r.revision,
          entries: r.kvs.map(toKeyValue),
          cluster: r.clusterId
        }))
      )

    const compact = (revision: number) =>
      Effect.asVoid(call("compact", () => etcd.kv.compact({ revision, physical: true })))

    const revision = call("status", () => range({ key: Buffer.from([0]), count_only: true, limit: 1 })).pipe(
      Effect.map((r) => r.revision)
    )
    // the same, read on a prefix the caller may read (a role limited to its prefix may not read "\0")
    const revisionOf = (prefix: string) =>
      call("status", () => range({ ...rangeOf(prefix), count_only: true, limit: 1 })).pipe(
        Effect.map((r) => r.revision)
      )

    const watchOnce = (prefix: string, fromRevision: number, sink: WatchSink): Effect.Effect<() => void> =>
      Effect.sync(() => {
        let stream: WatchStream | undefined
        let closed = false
        /**
         * A member that accepts the connection but does not answer (paused,
         * partitioned) is found out by one timer: the watch must be created
         * within `requestTimeout`; after `dialKeepAlive` without a message it
         * asks for a progress report, which must come within `requestTimeout`.
         */
        let phase: "creating" | "idle" | "probing" = "creating"
        // what arrived in this turn of the event loop (or, in a burst, this millisecond), handed over as one batch
        let pending: Array<RawWatchEvent> = []
        let flushing = false
        // when the last batch was handed over (performance.now() ms), and its size
        let flushedAt = -Infinity
        let flushedSize = 0
        // in a burst: when the batch began to gather, and when its last change came
        let gatheringSince = 0
        let lastCame = 0
        // hands the batch of a burst over once it is due, else checks again when it will be (if no
        // change comes meanwhile: a change only makes it due later); one timer per check, not per ms
        const settleBurst = () => {
          const now = performance.now()
          const due = Math.min(
            lastCame + burstQuietMillis,
            gatheringSince + burstMaxMillis,
            gatheringSince + pending.length / burstRate
          )
          if (now >= due) flush()
          else setTimeout(settleBurst, Math.max(1, Math.ceil(due - now)))
        }
        const flush = () => {
          flushing = false
          flushedAt = performance.now()
          flushedSize = pending.length
          if (closed || pending.length === 0) return
          const batch = pending
          pending = []
          sink.events(batch)
        }
        const fail = (error: EtcdError, options?: { readonly hung: boolean }) => {
          if (closed) return
          closed = true
          clearTimeout(timer)
          if (pending.length > 0) {
            sink.events(pending)
            pending = []
          }
          if (stream !== undefined) {
            // a hung member: cancelling a writable stream makes etcd3 count it against
            // the member's circuit breaker, so that reconnecting goes to another member
            if (options?.hung === true) stream.cancel()
            else abort(stream)
          }
          sink.fail(error)
        }
        // when the last message came: a busy watch does not re-arm its timer per message
        let lastHeard = 0
        const onTimer = () => {
          if (closed) return
          if (phase === "idle" && stream !== undefined) {
            const silent = Date.now() - lastHeard
            if (silent < keepAliveMillis) {
              timer = setTimeout(onTimer, keepAliveMillis - silent)
              return
            }
            phase = "probing"
            stream.write({ progress_request: {} })
            timer = setTimeout(onTimer, requestMillis)
            return
          }
          fail(
            new EtcdError({
              operation: "watch",
              reason: "Timeout",
              detail:
                phase === "creating"
                  ? `watch not created within ${Duration.format(requestTimeout)}`
                  : `no answer to a progress request within ${Duration.format(requestTimeout)}`
            }),
            { hung: true }
          )
        }
        let timer = setTimeout(onTimer, requestMillis)
        /** Any message: the member is alive. */
        const heard = () => {
          lastHeard = Date.now()
          if (phase === "idle") return
          phase = "idle"
          clearTimeout(timer)
          timer = setTimeout(onTimer, keepAliveMillis)
        }
        openWatchStream(etcd).then(
          (s) => {
            stream = s
            if (closed) {
              abort(s)
              return
            }
            s.on("data", (res: WireWatchResponse | Undecodable) => {
              if (closed) return
              // its changes are lost: the watch fails for good (not transient), and a subscriber lists again
              if (res instanceof Undecodable) {
                fail(new EtcdError({ operation: "watch", reason: "Other", detail: res.message }))
                return
              }
              if (res.canceled) {
                const compacted = res.compactRevision > 0
                const reason = compacted
                  ? "Compacted"
                  : res.cancelReason.includes("permission denied")
                    ? "PermissionDenied"
                    : res.cancelReason.includes("compacted")
                      ? "Compacted"
                      : "Canceled"
                fail(
                  new EtcdError({
                    operation: "watch",
                    reason,
                    detail: compacted
                      ? `revision ${fromRevision} is compacted (compact revision ${res.compactRevision})`
                      : res.cancelReason || "watch canceled by etcd"
                  })
                )
                return
              }
              if (res.created || phase !== "creating") heard()
              if (res.created) {
                pending.push({
                  _tag: "Created",
                  revision: res.revision,
                  cluster: res.clusterId ?? ""
                })
              }
              for (const event of res.events) {
                const kv = event.kv
                pending.push(
                  event.type === "Put" ? toPut(kv) : { _tag: "Delete", key: keyOf(kv.key), revision: kv.modRevision }
                )
              }
              // one batch per turn of the event loop: under churn a turn brings ~10 responses,
              // and waking the consumer's fiber once per response cost more than decoding them.
              // In a burst (see burstMillis) the batch gathers changes while they keep coming
              // fast: every batch costs the subscriber a publish and its followers a wake, so fewer,
              // larger batches (issue 7)
              if (pending.length === 0) return
              const now = performance.now()
              lastCame = now
              if (!flushing) {
                if (now - flushedAt >= loneMillis && flushedSize < burstSize) {
                  flush()
                } else {
                  flushing = true
                  if (now - flushedAt < burstMillis && flushedSize >= burstSize) {
                    gatheringSince = now
                    setTimeout(settleBurst, burstQuietMillis)
                  } else {
                    setImmediate(flush)
                  }
                }
              }
            })
            s.on("error", (cause: unknown) => fail(failure("watch", cause)))
            s.on("end", () =>
              fail(new EtcdError({ operation: "watch", reason: "Unavailable", detail: "watch stream ended" }))
            )
            s.write({
              create_request: {
                ...rangeOf(prefix),
                start_revision: fromRevision
              }
            })
          },
          (cause: unknown) => fail(failure("watch", cause))
        )
        return () => {
          closed = true
          clearTimeout(timer)
          if (stream !== undefined) abort(stream)
        }
      })

    return yield* fromPrimitives({
      grant,
      keepAliveOnce,
      revoke,
      revokeNow,
      put,
      get,
      delete: del,
      list,
      watchOnce,
      revisionOf,
      compact,
      revision,
      grantAndPut
    })
  })
