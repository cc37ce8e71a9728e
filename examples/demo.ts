/**
 * The effect-sd-etcd demo: `npm run demo`.
 *
 * Starts a local etcd (unless ETCD_ENDPOINTS points at one), three greeter HTTP
 * services in child processes that register themselves, and a client that
 * subscribes to them and calls through retry(roundRobin(...)). Then one greeter
 * is killed with SIGKILL, one is stopped with SIGTERM, and a new one joins; the
 * client keeps calling all along. Exits 0 when every call succeeded and nothing
 * is left behind.
 */
import * as HttpClientRequest from "@effect/platform/HttpClientRequest"
import * as NodeHttpClient from "@effect/platform-node/NodeHttpClient"
import * as NodeRuntime from "@effect/platform-node/NodeRuntime"
import * as Console from "effect/Console"
import * as Deferred from "effect/Deferred"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Fiber from "effect/Fiber"
import * as Layer from "effect/Layer"
import * as Logger from "effect/Logger"
import * as LogLevel from "effect/LogLevel"
import * as Option from "effect/Option"
import * as Ref from "effect/Ref"
import * as Schedule from "effect/Schedule"
import * as Stream from "effect/Stream"
import { spawn } from "node:child_process"
import { fileURLToPath } from "node:url"
import { Balancer, EtcdClient, HttpEndpoint, Retry, Subscriber } from "../src/index.js"
import * as EtcdServer from "../src/testing/EtcdServer.js"

const prefix = "/services/greeter/"
const greeterScript = fileURLToPath(new URL("./greeter.ts", import.meta.url))
const start = performance.now()

// ---- output: one aligned line per event ----

const elapsed = () => `${((performance.now() - start) / 1000).toFixed(2).padStart(6)}s`
const line = (what: string, detail: string) => Console.log(`${elapsed()}  ${what.padEnd(10)} ${detail}`)

// ---- etcd: the one in ETCD_ENDPOINTS, or a local one spawned for the demo ----

const etcd = Effect.gen(function* () {
  const endpoints = process.env["ETCD_ENDPOINTS"]
  if (endpoints !== undefined && endpoints.trim() !== "") {
    const urls = endpoints.split(",").map((e) => e.trim())
    yield* line("etcd", `using ${urls.join(", ")} (ETCD_ENDPOINTS)`)
    return urls
  }
  const server = yield* EtcdServer.make()
  yield* line(
    "etcd",
    `spawned at ${server.clientUrls.join(", ")} (pid ${Option.getOrElse(yield* server.pid, () => 0)})`
  )
  return server.clientUrls
})

// ---- greeters: child processes that register themselves ----

interface Greeter {
  readonly name: string
  readonly pid: number
  readonly exited: Deferred.Deferred<number | null>
  readonly signal: (signal: NodeJS.Signals) => Effect.Effect<void>
}

const startGreeter = (name: string, endpoints: ReadonlyArray<string>) =>
  Effect.acquireRelease(
    Effect.async<Greeter, Error>((resume) => {
      const child = spawn(process.execPath, ["--import", "tsx", greeterScript], {
        env: { ...process.env, ETCD_ENDPOINTS: endpoints.join(","), GREETER_NAME: name, GREETER_PREFIX: prefix },
        stdio: ["ignore", "pipe", "inherit"]
      })
      const exited = Deferred.unsafeMake<number | null>(undefined as never)
      child.on("exit", (code) => Deferred.unsafeDone(exited, Exit.succeed(code)))
      let output = ""
      child.stdout.on("data", (data: Buffer) => {
        output += data.toString()
        if (output.includes("ready ")) {
          const url = output
            .slice(output.indexOf("ready ") + 6)
            .split("\n")[0]!
            .trim()
          resume(
            Effect.as(line(name, `started, pid ${child.pid}, serving ${url}`), {
              name,
              pid: child.pid!,
              exited,
              signal: (signal) => Effect.sync(() => child.kill(signal))
            })
          )
        }
      })
      child.on("error", (error) => resume(Effect.fail(error)))
      child.on("exit", (code) => {
        if (!output.includes("ready "))
          resume(Effect.fail(new Error(`${name} exited with ${code} before it was ready`)))
      })
    }),
    // whatever happens, no greeter outlives the demo
    (greeter) =>
      Effect.gen(function* () {
        if (yield* Deferred.isDone(greeter.exited)) return
        yield* greeter.signal("SIGTERM")
        yield* Deferred.await(greeter.exited).pipe(
          Effect.timeout("5 seconds"),
          Effect.catchAll(() => Effect.zipRight(greeter.signal("SIGKILL"), Deferred.await(greeter.exited)))
        )
      })
  )

// ---- the demo ----

const demo = Effect.gen(function* () {
  yield* Console.log(`effect-sd-etcd demo: three greeters, a subscriber on ${prefix}, retry(roundRobin(...))\n`)
  const endpoints = yield* etcd

  const program = Effect.gen(function* () {
    const client = yield* EtcdClient.EtcdClient
    // the HTTP factory, wrapped to count failed attempts (the retry hides them from the caller)
    const failedAttempts = yield* Ref.make(0)
    const http = HttpEndpoint.factory({ filterStatusOk: true })
    const factory = (instance: string) =>
      Effect.map(
        http(instance),
        (endpoint): HttpEndpoint.HttpEndpoint =>
          (request) =>
            Effect.tapError(endpoint(request), () => Ref.update(failedAttempts, (n) => n + 1))
      )
    const subscriber = yield* Subscriber.make({ prefix, factory })

    // print every change the subscriber sees, with the time it saw it
    const seen = yield* Ref.make<ReadonlyMap<string, string>>(new Map())
    yield* Subscriber.follow(subscriber.instances, (instances) =>
      Effect.gen(function* () {
        const before = yield* Ref.getAndSet(seen, instances)
        for (const key of instances.keys()) {
          if (!before.has(key)) yield* line("subscriber", `+ ${key.slice(prefix.length)} (${instances.size} live)`)
        }
        for (const key of before.keys()) {
          if (!instances.has(key)) yield* line("subscriber", `- ${key.slice(prefix.length)} (${instances.size} live)`)
        }
      })
    ).pipe(Effect.forkScoped)
    const until = (predicate: (instances: ReadonlyMap<string, string>) => boolean) =>
      subscriber.instances.changes.pipe(Stream.filter(predicate), Stream.runHead, Effect.timeout("15 seconds"))

    const greeters = new Map<string, Greeter>()
    for (const greeter of yield* Effect.all(
      ["greeter-1", "greeter-2", "greeter-3"].map((name) => startGreeter(name, endpoints)),
      { concurrency: "unbounded" }
    )) {
      greeters.set(greeter.name, greeter)
    }
    yield* until((instances) => instances.size === 3)
    // the client: round robin over the subscriber, 3 attempts within 2 s per call
    const greet = yield* Retry.retry(Balancer.roundRobin(subscriber), { max: 3, timeout: "2 seconds" })
    const stats = yield* Ref.make({ calls: 0, ok: 0, failed: 0, retried: 0 })
    const answeredBy = yield* Ref.make(new Map<string, number>())
    const call = Effect.gen(function* () {
      const t0 = performance.now()
      const n = (yield* Ref.updateAndGet(stats, (s) => ({ ...s, calls: s.calls + 1 }))).calls
      const failedBefore = yield* Ref.get(failedAttempts)
      const result = yield* Effect.either(
        Effect.flatMap(greet(HttpClientRequest.get("/hello")), (response) => response.text)
      )
      const failed = (yield* Ref.get(failedAttempts)) - failedBefore
      const retried = failed === 0 ? "" : `  (after ${failed} failed attempt${failed > 1 ? "s" : ""}: retried)`
      const ms = `${Math.round(performance.now() - t0)} ms`.padStart(6)
      if (result._tag === "Right") {
        const who = result.right.replace("hello from ", "")
        yield* Ref.update(answeredBy, (m) => new Map(m).set(who, (m.get(who) ?? 0) + 1))
        yield* Ref.update(stats, (s) => ({ ...s, ok: s.ok + 1 }))
        yield* line("call", `#${String(n).padStart(3)} answered by ${who.padEnd(10)} ${ms}${retried}`)
      } else {
        yield* Ref.update(stats, (s) => ({ ...s, failed: s.failed + 1 }))
        const error = result.left
        const detail =
          error._tag === "RetryError" ? `${error.attempts} attempts failed: ${String(error.final)}` : error.message
        yield* line("call", `#${String(n).padStart(3)} FAILED ${detail}`)
      }
    })
    // a call every 150 ms, in the background, until the end
    const caller = yield* Effect.forkScoped(Effect.repeat(call, Schedule.spaced("150 millis")))

    yield* Effect.sleep("1 second")

    // SIGKILL: no deregistration; the key goes when its lease expires
    const killed = greeters.get("greeter-1")!
    const tKill = performance.now()
    yield* killed.signal("SIGKILL")
    yield* line("greeter-1", "killed with SIGKILL: its key stays until its 2 s lease expires")
    yield* until((instances) => !instances.has(`${prefix}greeter-1`))
    yield* line(
      "greeter-1",
      `gone from the subscriber ${((performance.now() - tKill) / 1000).toFixed(2)} s after SIGKILL`
    )

    // SIGTERM: the greeter deregisters before it exits
    const stopped = greeters.get("greeter-2")!
    const tTerm = performance.now()
    yield* stopped.signal("SIGTERM")
    yield* line("greeter-2", "sent SIGTERM: it deregisters before it exits")
    yield* until((instances) => !instances.has(`${prefix}greeter-2`))
    yield* line(
      "greeter-2",
      `gone from the subscriber ${((performance.now() - tTerm) / 1000).toFixed(2)} s after SIGTERM`
    )
    const code = yield* Deferred.await(stopped.exited)
    yield* line("greeter-2", `exited with code ${code}`)

    // a new instance joins and takes calls
    const joined = yield* startGreeter("greeter-4", endpoints)
    greeters.set(joined.name, joined)
    yield* until((instances) => instances.has(`${prefix}greeter-4`))
    yield* Ref.get(answeredBy).pipe(
      Effect.repeat({ until: (m) => (m.get("greeter-4") ?? 0) >= 2, schedule: Schedule.spaced("150 millis") })
    )
    yield* Fiber.interrupt(caller)

    // stop the rest and check that etcd is clean
    for (const name of ["greeter-3", "greeter-4"]) {
      const greeter = greeters.get(name)!
      yield* greeter.signal("SIGTERM")
      yield* Deferred.await(greeter.exited)
    }
    yield* until((instances) => instances.size === 0)
    const left = (yield* client.list(prefix)).entries.length
    const s = yield* Ref.get(stats)
    const by = [...(yield* Ref.get(answeredBy)).entries()].map(([who, n]) => `${who} ${n}`).join(", ")
    yield* Console.log("")
    yield* line("summary", `${s.calls} calls, ${s.ok} succeeded, ${s.failed} failed (${by})`)
    yield* line("summary", `${left} keys left under ${prefix}; every greeter process has exited`)
    if (s.failed > 0 || left > 0) {
      return yield* Effect.fail(new Error(`demo failed: ${s.failed} failed calls, ${left} keys left`))
    }
    yield* line("summary", "ok")
  })

  yield* program.pipe(
    Effect.scoped,
    Effect.provide(Layer.merge(EtcdClient.layer({ endpoints }), NodeHttpClient.layerUndici))
  )
})

demo.pipe(Effect.scoped, Logger.withMinimumLogLevel(LogLevel.Warning), NodeRuntime.runMain)
