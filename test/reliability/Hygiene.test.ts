/**
 * Hygiene: a child process that uses the library (client, registrar,
 * subscriber, a balanced call) and closes its scope exits by itself, promptly,
 * with code 0: no fiber, timer or socket is left to keep it alive. Also when
 * etcd is gone by the time it closes (deregistering cannot reach it).
 */
import { describe, expect, layer } from "@effect/vitest"
import * as Deferred from "effect/Deferred"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Option from "effect/Option"
import * as ChildProcess from "node:child_process"
import { randomUUID } from "node:crypto"
import * as Path from "node:path"
import { fileURLToPath } from "node:url"
import * as EtcdClient from "../../src/EtcdClient.js"
import { EtcdServer } from "../../src/testing/index.js"
import { measure, now, within } from "./support.js"

const here = Path.dirname(fileURLToPath(import.meta.url))
const fixture = Path.join(here, "..", "fixtures", "reliability-hygiene.ts")
const run = randomUUID().slice(0, 8)

interface Line {
  readonly ready?: boolean
  readonly answer?: string
  readonly closed?: boolean
  readonly success?: boolean
  readonly failure?: string
  readonly active?: ReadonlyArray<string>
}

/** Spawns the fixture; the scope SIGKILLs it (by its pid) if it is still alive. */
const spawnChild = (endpoint: string, prefix: string) =>
  Effect.acquireRelease(
    Effect.gen(function* () {
      const ready = yield* Deferred.make<Line>()
      const closed = yield* Deferred.make<Line>()
      const exit = yield* Deferred.make<{ readonly code: number | null; readonly signal: NodeJS.Signals | null }>()
      const child = ChildProcess.spawn(process.execPath, ["--import", "tsx", fixture, endpoint, prefix], {
        stdio: ["pipe", "pipe", "pipe"]
      })
      let stdout = ""
      let stderr = ""
      child.stdout.on("data", (chunk: Buffer) => {
        stdout += chunk.toString("utf8")
        for (const text of stdout.split("\n").filter((l) => l.startsWith("{"))) {
          const line = JSON.parse(text) as Line
          if (line.ready === true) Deferred.unsafeDone(ready, Exit.succeed(line))
          if (line.closed === true) Deferred.unsafeDone(closed, Exit.succeed(line))
        }
      })
      child.stderr.on("data", (chunk: Buffer) => {
        stderr += chunk.toString("utf8")
      })
      child.on("exit", (code, signal) => Deferred.unsafeDone(exit, Exit.succeed({ code, signal })))
      if (child.pid === undefined) return yield* Effect.dieMessage("the child did not start")
      return {
        pid: child.pid,
        ready,
        closed,
        exit,
        requestClose: () => child.stdin.end("close\n"),
        output: () => `stdout:\n${stdout}\nstderr:\n${stderr}`
      }
    }),
    (child) =>
      Effect.gen(function* () {
        if (yield* Deferred.isDone(child.exit)) return
        process.kill(child.pid, "SIGKILL")
        yield* Deferred.await(child.exit)
      })
  )

describe("Reliability: hygiene", () => {
  layer(EtcdServer.layer(), { excludeTestServices: true, timeout: "90 seconds" })((it) => {
    it.scoped("a process that closes its scopes exits by itself, promptly, with code 0", () =>
      Effect.gen(function* () {
        const server = yield* EtcdServer.EtcdServer
        const observer = yield* EtcdClient.make(server.clientOptions)
        const prefix = `/reliability-${run}/hygiene-up/`
        const child = yield* spawnChild(server.clientUrl, prefix)
        const ready = yield* Deferred.await(child.ready).pipe(
          within(60, "the child to be ready"),
          Effect.tapError(() => Effect.logError(child.output()))
        )
        expect(ready.answer).toBe("http://self:8080 answers ping")
        expect(Option.isSome(yield* observer.get(`${prefix}self`))).toBe(true)
        const requestedAt = now()
        child.requestClose()
        const closed = yield* Deferred.await(child.closed).pipe(within(30, "the child to close its scope"))
        const closedAt = now()
        const exit = yield* Deferred.await(child.exit).pipe(
          within(10, `the child to exit by itself (still active after close: ${JSON.stringify(closed.active)})`),
          Effect.tapError(() => Effect.logError(child.output()))
        )
        const exitedAt = now()
        expect(closed.success).toBe(true)
        expect(exit).toEqual({ code: 0, signal: null })
        expect(exitedAt - closedAt).toBeLessThan(3000)
        // it deregistered on the way out
        expect((yield* observer.list(prefix)).entries).toEqual([])
        yield* measure("hygiene: close requested -> scope closed", closedAt - requestedAt)
        yield* measure("hygiene: scope closed -> process exited", exitedAt - closedAt)
        yield* Effect.log(`[measure] hygiene: active right after close: ${JSON.stringify(closed.active)}`)
      })
    )

    for (const outage of ["stopped", "paused"] as const) {
      it.scoped(`a process that closes its scopes while etcd is ${outage} exits by itself too`, () =>
        Effect.gen(function* () {
          const server = yield* EtcdServer.EtcdServer
          const prefix = `/reliability-${run}/hygiene-${outage}/`
          const child = yield* spawnChild(server.clientUrl, prefix)
          yield* Deferred.await(child.ready).pipe(
            within(60, "the child to be ready"),
            Effect.tapError(() => Effect.logError(child.output()))
          )
          yield* outage === "stopped" ? server.stop : server.pause
          const requestedAt = now()
          child.requestClose()
          const closed = yield* Deferred.await(child.closed).pipe(within(30, "the child to close its scope"))
          const closedAt = now()
          const exit = yield* Deferred.await(child.exit).pipe(
            within(10, `the child to exit by itself (still active after close: ${JSON.stringify(closed.active)})`),
            Effect.tapError(() => Effect.logError(child.output()))
          )
          const exitedAt = now()
          expect(exit).toEqual({ code: 0, signal: null })
          expect(exitedAt - closedAt).toBeLessThan(3000)
          yield* outage === "stopped" ? server.start : server.resume
          yield* measure(`hygiene, etcd ${outage}: close requested -> scope closed`, closedAt - requestedAt)
          yield* measure(`hygiene, etcd ${outage}: scope closed -> process exited`, exitedAt - closedAt)
        })
      )
    }
  })
})
