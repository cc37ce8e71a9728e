/**
 * Shared parts of the reliability suites: safety-net timeouts, measurements,
 * the truth in etcd versus what a subscriber holds, captured logs, and a watch
 * on process-level failures (unhandled rejections).
 *
 * Nothing here sleeps: every wait is on an event (a SubscriptionRef change, a
 * watch event), bounded by a generous timeout that only turns a hang into a
 * failure.
 */
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Logger from "effect/Logger"
import type * as Scope from "effect/Scope"
import * as Stream from "effect/Stream"
import * as Net from "node:net"
import * as EtcdClient from "../../src/EtcdClient.js"
import type * as Registrar from "../../src/Registrar.js"
import type * as Subscriber from "../../src/Subscriber.js"

/** A safety net that turns a hang into a failure; never what a test waits for. */
export const within =
  (seconds: number, what: string) =>
  <A, E, R>(self: Effect.Effect<A, E, R>): Effect.Effect<A, E | Error, R> =>
    Effect.timeoutFail(self, {
      duration: Duration.seconds(seconds),
      onTimeout: () => new Error(`timed out after ${seconds} s: ${what}`)
    })

/** Wall-clock milliseconds (the suites run on the real clock: processes and sockets live in real time). */
export const now = (): number => performance.now()

/** Logs a figure for the report: `[measure] <what>: <ms> ms`. */
export const measure = (what: string, millis: number): Effect.Effect<void> =>
  Effect.log(`[measure] ${what}: ${Math.round(millis)} ms`)

/** Elapsed wall time of an effect, in milliseconds. */
export const timed = <A, E, R>(self: Effect.Effect<A, E, R>): Effect.Effect<readonly [A, number], E, R> =>
  Effect.suspend(() => {
    const start = now()
    return Effect.map(self, (a) => [a, now() - start] as const)
  })

/** The instances a subscriber is echoing: the key → value map of the identity factory. */
export type Instances = ReadonlyMap<string, string>

/** A factory whose endpoint answers with its instance string: what the subscriber holds is visible. */
export const echoFactory = (instance: string) => Effect.succeed((_: void) => Effect.succeed(instance))

/** What etcd holds under `prefix` (a linearizable read through `client`), malformed values left out. */
export const truth = (client: EtcdClient.EtcdClient, prefix: string): Effect.Effect<Instances, unknown> =>
  Effect.map(
    client.list(prefix),
    (listing) => new Map(listing.entries.filter((kv) => !kv.malformed).map((kv) => [kv.key, kv.value] as const))
  )

/** Same keys with the same values. */
export const sameInstances = (a: Instances, b: Instances): boolean =>
  a.size === b.size && [...a].every(([key, value]) => b.get(key) === value)

/** A short, readable difference for failure messages. */
export const describeDifference = (held: Instances, expected: Instances): string => {
  const missing = [...expected.keys()].filter((k) => !held.has(k))
  const extra = [...held.keys()].filter((k) => !expected.has(k))
  const changed = [...held.keys()].filter((k) => expected.has(k) && expected.get(k) !== held.get(k))
  return `missing ${JSON.stringify(missing)}, extra ${JSON.stringify(extra)}, changed ${JSON.stringify(changed)}`
}

/**
 * Waits until the subscriber's instances equal etcd's keys under its prefix:
 * re-checked on every change of the subscriber (the current value first), each
 * time against a fresh read of etcd. Fails after `seconds` with the difference.
 */
export const awaitConverged = <Req, Res, E>(
  subscriber: Subscriber.Subscriber<Req, Res, E>,
  observer: EtcdClient.EtcdClient,
  seconds: number,
  what: string
): Effect.Effect<Instances, unknown> =>
  Effect.gen(function* () {
    let last = `nothing compared yet`
    return yield* subscriber.instances.changes.pipe(
      Stream.mapEffect((held) =>
        Effect.map(truth(observer, subscriber.prefix), (expected) => {
          const same = sameInstances(held, expected)
          if (!same) last = describeDifference(held, expected)
          return same ? held : undefined
        })
      ),
      Stream.filter((held): held is Instances => held !== undefined),
      Stream.runHead,
      Effect.flatten,
      Effect.timeoutFail({
        duration: Duration.seconds(seconds),
        onTimeout: () => new Error(`timed out after ${seconds} s: ${what}; the subscriber holds: ${last}`)
      })
    )
  })

/** Waits until the subscriber holds exactly `expected`. */
export const awaitInstances = <Req, Res, E>(
  subscriber: Subscriber.Subscriber<Req, Res, E>,
  expected: Instances,
  seconds: number,
  what: string
): Effect.Effect<Instances, unknown> =>
  Effect.gen(function* () {
    let last: Instances = new Map()
    return yield* subscriber.instances.changes.pipe(
      Stream.tap((held) =>
        Effect.sync(() => {
          last = held
        })
      ),
      Stream.filter((held) => sameInstances(held, expected)),
      Stream.runHead,
      Effect.flatten,
      Effect.timeoutFail({
        duration: Duration.seconds(seconds),
        onTimeout: () =>
          new Error(
            `timed out after ${seconds} s: ${what}; the subscriber holds: ${describeDifference(last, expected)}`
          )
      })
    )
  })

/** Waits until every registration is `Registered`. */
export const awaitAllRegistered = (
  registrations: ReadonlyArray<Registrar.Registration>,
  seconds: number,
  what: string
): Effect.Effect<void, unknown> =>
  Effect.forEach(
    registrations,
    (registration) =>
      registration.state.changes.pipe(
        Stream.filter((state) => state._tag === "Registered"),
        Stream.runHead,
        Effect.flatten
      ),
    { concurrency: "unbounded", discard: true }
  ).pipe(within(seconds, what))

/**
 * Waits until every registration is `Registered` on the lease its key has in
 * etcd right now (a `Registered` state from before a wipe does not count).
 */
export const awaitRegisteredInEtcd = (
  registrations: ReadonlyArray<Registrar.Registration>,
  observer: EtcdClient.EtcdClient,
  seconds: number,
  what: string
): Effect.Effect<void, unknown> =>
  Effect.forEach(
    registrations,
    (registration) =>
      registration.state.changes.pipe(
        Stream.mapEffect((state) =>
          state._tag === "Registered"
            ? Effect.map(
                observer.get(registration.service.key),
                (kv) =>
                  kv._tag === "Some" && kv.value.value === registration.service.value && kv.value.lease === state.lease
              )
            : Effect.succeed(false)
        ),
        Stream.filter((ok) => ok),
        Stream.runHead
      ),
    { concurrency: "unbounded", discard: true }
  ).pipe(within(seconds, what))

/** A change under a prefix, as an observer's watch saw it, with the wall-clock time it was seen at. */
export interface SeenChange {
  readonly _tag: "Put" | "Delete"
  readonly key: string
  readonly revision: number
  readonly at: number
}

/**
 * Records every change under `prefix` from the current revision on (nothing
 * after this call is missed) through its own watch, until the scope closes.
 */
export const recordChanges = (
  observer: EtcdClient.EtcdClient,
  prefix: string
): Effect.Effect<{ readonly changes: ReadonlyArray<SeenChange> }, unknown, Scope.Scope> =>
  Effect.gen(function* () {
    const from = (yield* observer.revision) + 1
    const changes: Array<SeenChange> = []
    yield* observer.watch(prefix, { fromRevision: from }).pipe(
      Stream.runForEach((event) =>
        Effect.sync(() => {
          if (event._tag === "Put" || event._tag === "Delete") {
            changes.push({ _tag: event._tag, key: event.key, revision: event.revision, at: now() })
          }
        })
      ),
      Effect.forkScoped
    )
    return { changes }
  })

/**
 * Records every state change of the registrations (after their current state)
 * until the scope closes: which left `Registered`, and when.
 */
export const recordStates = (
  registrations: ReadonlyArray<Registrar.Registration>
): Effect.Effect<
  { readonly transitions: ReadonlyArray<{ readonly key: string; readonly tag: string; readonly at: number }> },
  never,
  Scope.Scope
> =>
  Effect.gen(function* () {
    const transitions: Array<{ readonly key: string; readonly tag: string; readonly at: number }> = []
    yield* Effect.forEach(
      registrations,
      (registration) =>
        registration.state.changes.pipe(
          Stream.drop(1),
          Stream.runForEach((state) =>
            Effect.sync(() => transitions.push({ key: registration.service.key, tag: state._tag, at: now() }))
          ),
          Effect.forkScoped
        ),
      { discard: true }
    )
    return { transitions }
  })

/** Log lines captured by {@link captureLogs}. */
export interface CapturedLogs {
  readonly lines: Array<string>
}

/**
 * Routes every log line of `self` (and of the fibers it forks) through a
 * logger that keeps the formatted line (message, cause, annotations, spans) and
 * also prints it.
 */
export const captureLogs = <A, E, R>(self: (logs: CapturedLogs) => Effect.Effect<A, E, R>): Effect.Effect<A, E, R> =>
  Effect.suspend(() => {
    const logs: CapturedLogs = { lines: [] }
    const capturing = Logger.make<unknown, void>((options) => {
      logs.lines.push(Logger.logfmtLogger.log(options))
      Logger.defaultLogger.log(options)
    })
    return self(logs).pipe(Effect.provide(Logger.replace(Logger.defaultLogger, capturing)))
  })

/**
 * Collects the process's unhandled promise rejections while the scope is open
 * (a listener on `process`, removed when the scope closes).
 */
export const unhandledRejections: Effect.Effect<{ readonly reasons: ReadonlyArray<unknown> }, never, Scope.Scope> =
  Effect.map(
    Effect.acquireRelease(
      Effect.sync(() => {
        const reasons: Array<unknown> = []
        const listener = (reason: unknown) => {
          reasons.push(reason)
        }
        process.on("unhandledRejection", listener)
        return { reasons, listener }
      }),
      ({ listener }) => Effect.sync(() => process.off("unhandledRejection", listener))
    ),
    ({ reasons }) => ({ reasons })
  )

/**
 * A TCP proxy on 127.0.0.1 in front of `target` (`http://host:port`), closed
 * with the scope. `sever` destroys every connection through it at once (the
 * client sees its connection dropped and reconnects through the proxy); `hold`
 * buffers what the target sends (requests still go through) until `release`
 * sends it on. `refuse` drops every new connection at once (a client's
 * reconnects fail) until `accept`.
 */
export const tcpProxy = (
  target: string
): Effect.Effect<
  {
    readonly url: string
    readonly sever: Effect.Effect<number>
    readonly hold: Effect.Effect<void>
    readonly release: Effect.Effect<void>
    readonly refuse: Effect.Effect<void>
    readonly accept: Effect.Effect<void>
  },
  never,
  Scope.Scope
> =>
  Effect.gen(function* () {
    const { hostname, port } = new URL(target)
    const sockets = new Set<Net.Socket>()
    // per client connection: its socket and what the target sent it while held
    const clients = new Set<{ readonly socket: Net.Socket; readonly held: Array<Buffer> }>()
    let holding = false
    let refusing = false
    const server = yield* Effect.acquireRelease(
      Effect.async<Net.Server>((resume) => {
        const proxy = Net.createServer((socket) => {
          if (refusing) {
            socket.destroy()
            return
          }
          const upstream = Net.connect(Number(port), hostname)
          const client = { socket, held: [] as Array<Buffer> }
          clients.add(client)
          sockets.add(socket)
          sockets.add(upstream)
          const close = () => {
            socket.destroy()
            upstream.destroy()
            sockets.delete(socket)
            sockets.delete(upstream)
            clients.delete(client)
          }
          socket.on("error", close).on("close", close)
          upstream.on("error", close).on("close", close)
          socket.pipe(upstream)
          upstream.on("data", (data: Buffer) => (holding ? client.held.push(data) : socket.write(data)))
        })
        proxy.listen(0, "127.0.0.1", () => resume(Effect.succeed(proxy)))
      }),
      (proxy) =>
        Effect.async<void>((resume) => {
          for (const socket of sockets) socket.destroy()
          proxy.close(() => resume(Effect.void))
        })
    )
    const address = server.address()
    const proxyPort = typeof address === "object" && address !== null ? address.port : 0
    return {
      url: `http://127.0.0.1:${proxyPort}`,
      sever: Effect.sync(() => {
        const count = sockets.size
        for (const socket of [...sockets]) socket.destroy()
        return count
      }),
      hold: Effect.sync(() => {
        holding = true
      }),
      release: Effect.sync(() => {
        holding = false
        for (const client of clients) for (const data of client.held.splice(0)) client.socket.write(data)
      }),
      refuse: Effect.sync(() => {
        refusing = true
      }),
      accept: Effect.sync(() => {
        refusing = false
      })
    }
  })

/** An observer client of its own: shares nothing with what is under test. */
export const observerOf = (endpoints: ReadonlyArray<string>, options: Partial<EtcdClient.EtcdClientOptions> = {}) =>
  EtcdClient.make({ ...options, endpoints })
