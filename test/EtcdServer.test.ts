import { describe, expect, it } from "@effect/vitest"
import * as ConfigProvider from "effect/ConfigProvider"
import * as Deferred from "effect/Deferred"
import * as Effect from "effect/Effect"
import * as Fiber from "effect/Fiber"
import * as Option from "effect/Option"
import * as Redacted from "effect/Redacted"
import { EtcdPermissionDeniedError } from "etcd3"
import * as Exit from "effect/Exit"
import * as Schedule from "effect/Schedule"
import * as ChildProcess from "node:child_process"
import * as Fs from "node:fs"
import * as Https from "node:https"
import * as Path from "node:path"
import { fileURLToPath } from "node:url"
import { EtcdAuth, EtcdServer } from "../src/testing/index.js"
import { freePorts } from "../src/testing/internal/os.js"
import {
  call,
  entries,
  etcd3,
  get,
  parentDirectory,
  processesMentioning,
  processExists,
  put
} from "./testing-helpers.js"

const pidOf = (server: EtcdServer.EtcdServer) =>
  Effect.flatMap(
    server.pid,
    Effect.orDieWith(() => "no pid")
  )

/** Everything a finished server leaves to check: its last pid and its dirs. */
const leftovers = (pid: number, server: EtcdServer.EtcdServer) =>
  Effect.gen(function* () {
    expect(processExists(pid)).toBe(false)
    expect(Fs.existsSync(server.dataDir)).toBe(false)
    expect(Fs.existsSync(server.directory)).toBe(false)
    expect(yield* processesMentioning(server.directory)).toEqual([])
  })

describe("EtcdServer", () => {
  it.layer(EtcdServer.layer())("a running server", (it) => {
    it.scoped("serves puts and gets on its 127.0.0.1 client URL", () =>
      Effect.gen(function* () {
        const server = yield* EtcdServer.EtcdServer
        expect(server.clientUrls).toEqual([server.clientUrl])
        expect(server.clientUrl).toMatch(/^http:\/\/127\.0\.0\.1:\d+$/)
        expect(server.peerUrl).toMatch(/^http:\/\/127\.0\.0\.1:\d+$/)
        expect(server.clientOptions).toEqual({ endpoints: [server.clientUrl] })
        expect(yield* server.state).toBe("Running")
        expect(processExists(yield* pidOf(server))).toBe(true)
        const client = yield* etcd3(server.clientUrls)
        yield* put(client, "/kit/hello", "world")
        expect(yield* get(client, "/kit/hello")).toBe("world")
      })
    )

    it.scoped("stop then start serves the same data on the same URL", () =>
      Effect.gen(function* () {
        const server = yield* EtcdServer.EtcdServer
        const client = yield* etcd3(server.clientUrls)
        yield* put(client, "/kit/kept", "across a restart")
        const before = yield* pidOf(server)
        yield* server.stop
        expect(processExists(before)).toBe(false)
        expect(yield* server.state).toBe("Stopped")
        expect(yield* server.pid).toEqual(Option.none())
        expect(yield* server.isHealthy).toBe(false)
        yield* server.start
        const after = yield* pidOf(server)
        expect(after).not.toBe(before)
        expect(yield* server.isHealthy).toBe(true)
        const fresh = yield* etcd3(server.clientUrls)
        expect(yield* get(fresh, "/kit/kept")).toBe("across a restart")
      })
    )

    it.scoped("kill (SIGKILL) then start keeps the data too", () =>
      Effect.gen(function* () {
        const server = yield* EtcdServer.EtcdServer
        const client = yield* etcd3(server.clientUrls)
        yield* put(client, "/kit/survivor", "yes")
        const before = yield* pidOf(server)
        yield* server.kill
        expect(processExists(before)).toBe(false)
        expect(yield* server.state).toBe("Stopped")
        yield* server.restart
        expect(yield* server.state).toBe("Running")
        const fresh = yield* etcd3(server.clientUrls)
        expect(yield* get(fresh, "/kit/survivor")).toBe("yes")
      })
    )

    it.effect("a paused server does not answer until it is resumed", () =>
      Effect.gen(function* () {
        const server = yield* EtcdServer.EtcdServer
        const pid = yield* pidOf(server)
        yield* server.pause
        expect(yield* server.state).toBe("Paused")
        expect(processExists(pid)).toBe(true)
        expect(yield* server.isHealthy).toBe(false)
        yield* server.resume
        expect(yield* server.state).toBe("Running")
        expect(yield* server.isHealthy).toBe(true)
        expect(yield* pidOf(server)).toBe(pid)
      })
    )

    it.effect("start on a paused server resumes it and waits until it is healthy", () =>
      Effect.gen(function* () {
        const server = yield* EtcdServer.EtcdServer
        const pid = yield* pidOf(server)
        yield* server.pause
        yield* server.start
        expect(yield* server.state).toBe("Running")
        expect(yield* server.isHealthy).toBe(true)
        expect(yield* pidOf(server)).toBe(pid)
      })
    )

    it.scoped("wipe empties the store and takes the revision back to 1, on the same ports", () =>
      Effect.gen(function* () {
        const server = yield* EtcdServer.EtcdServer
        const client = yield* etcd3(server.clientUrls)
        for (let i = 0; i < 5; i++) yield* put(client, `/kit/wiped/${i}`, "x")
        expect((yield* server.status).revision).toBeGreaterThan(5)
        const url = server.clientUrl
        yield* server.wipe
        expect(server.clientUrl).toBe(url)
        expect((yield* server.status).revision).toBe(1)
        const fresh = yield* etcd3(server.clientUrls)
        expect(yield* get(fresh, "/kit/wiped/0")).toBeNull()
      })
    )
  })

  describe("leaves no process and no temp dir behind", () => {
    it.effect("when its scope closes normally", () =>
      Effect.gen(function* () {
        const { pid, server } = yield* Effect.scoped(
          Effect.gen(function* () {
            const server = yield* EtcdServer.make()
            expect(Fs.existsSync(server.dataDir)).toBe(true)
            return { pid: yield* pidOf(server), server }
          })
        )
        yield* leftovers(pid, server)
      })
    )

    it.effect("when the effect in its scope fails, even with the server paused", () =>
      Effect.gen(function* () {
        const seen = yield* Deferred.make<{ readonly pid: number; readonly server: EtcdServer.EtcdServer }>()
        const error = yield* Effect.scoped(
          Effect.gen(function* () {
            const server = yield* EtcdServer.make()
            yield* server.pause
            yield* Deferred.succeed(seen, { pid: yield* pidOf(server), server })
            return yield* Effect.fail("boom" as const)
          })
        ).pipe(Effect.flip)
        expect(error).toBe("boom")
        const { pid, server } = yield* Deferred.await(seen)
        yield* leftovers(pid, server)
      })
    )

    it.effect("when the fiber using it is interrupted", () =>
      Effect.gen(function* () {
        const seen = yield* Deferred.make<{ readonly pid: number; readonly server: EtcdServer.EtcdServer }>()
        const fiber = yield* Effect.scoped(
          Effect.gen(function* () {
            const server = yield* EtcdServer.make()
            yield* Deferred.succeed(seen, { pid: yield* pidOf(server), server })
            return yield* Effect.never
          })
        ).pipe(Effect.fork)
        const { pid, server } = yield* Deferred.await(seen)
        yield* Fiber.interrupt(fiber)
        yield* leftovers(pid, server)
      })
    )

    it.scoped("when it does not become healthy in time (a typed Timeout)", () =>
      Effect.gen(function* () {
        const parent = yield* parentDirectory
        const error = yield* EtcdServer.make({ directory: parent, startTimeout: "1 millis" }).pipe(
          Effect.scoped,
          Effect.flip
        )
        expect(error._tag).toBe("EtcdTestError")
        expect(error._tag === "EtcdTestError" && error.reason).toBe("Timeout")
        expect(yield* entries(parent)).toEqual([])
        expect(yield* processesMentioning(parent)).toEqual([])
      })
    )
  })

  describe("when the process that started it dies without closing its scope", () => {
    const fixture = fileURLToPath(new URL("./fixtures/etcd-owner.ts", import.meta.url))

    /**
     * Runs the fixture (it starts an etcd under `parent`, paused if asked), SIGKILLs it, and waits
     * until no process names `parent` any more (10 s at most). The scope kills whatever the test
     * started and is left: the fixture, then its etcd.
     */
    const killOwner = (parent: string, paused: boolean) =>
      Effect.gen(function* () {
        const started = yield* Deferred.make<number>()
        const exited = yield* Deferred.make<void>()
        const child = yield* Effect.acquireRelease(
          Effect.sync(() => {
            const child = ChildProcess.spawn(
              process.execPath,
              ["--import", "tsx", fixture, parent, paused ? "paused" : "running"],
              { stdio: ["ignore", "pipe", "inherit"] }
            )
            let stdout = ""
            child.stdout.on("data", (chunk: Buffer) => {
              stdout += chunk.toString("utf8")
              const line = stdout.split("\n").find((l) => l.startsWith("{"))
              if (line !== undefined)
                Deferred.unsafeDone(started, Exit.succeed((JSON.parse(line) as { pid: number }).pid))
            })
            child.on("exit", () => Deferred.unsafeDone(exited, Exit.void))
            return child
          }),
          (child) =>
            Effect.gen(function* () {
              if (!(yield* Deferred.isDone(exited)) && child.pid !== undefined) {
                process.kill(child.pid, "SIGKILL")
                yield* Deferred.await(exited)
              }
              for (const pid of yield* processesMentioning(parent)) process.kill(pid, "SIGKILL")
            })
        )
        const pid = yield* Deferred.await(started).pipe(Effect.timeout("30 seconds"))
        // never a default pid here: process.kill(-1) would signal every process
        const owner = child.pid
        if (owner === undefined) return yield* Effect.dieMessage("the fixture did not start")
        // the fixture's own command line names the directory too
        expect((yield* processesMentioning(parent)).filter((p) => p !== owner)).toEqual([pid])
        process.kill(owner, "SIGKILL")
        yield* Deferred.await(exited)
        // etcd is not our child: there is no exit event to wait for, so look until it is gone
        yield* processesMentioning(parent).pipe(
          Effect.repeat({ until: (pids) => pids.length === 0, schedule: Schedule.spaced("20 millis") }),
          Effect.timeoutOption("10 seconds")
        )
      })

    for (const paused of [false, true]) {
      it.scopedLive(`SIGKILL to that process stops its etcd${paused ? ", paused too" : ""}`, () =>
        Effect.gen(function* () {
          const parent = yield* parentDirectory
          yield* killOwner(parent, paused)
          expect(yield* processesMentioning(parent)).toEqual([])
        })
      )
    }

    it.scopedLive("its temp dir is removed by the next server started in the same place, and only that dir", () =>
      Effect.gen(function* () {
        const parent = yield* parentDirectory
        yield* killOwner(parent, false)
        const [left, ...more] = yield* entries(parent)
        expect(more).toEqual([])
        expect(left).toMatch(/^effect-sd-etcd-/)
        // a dir that is not the kit's (no owner file) stays, and so does a live server's
        const unowned = Path.join(parent, "effect-sd-etcd-unowned")
        Fs.mkdirSync(unowned)
        const first = yield* EtcdServer.make({ directory: parent })
        expect(Fs.existsSync(Path.join(parent, left ?? ""))).toBe(false)
        // a dir owned by this (live) process that no etcd uses stays too
        const idle = Path.join(parent, "effect-sd-etcd-idle")
        Fs.mkdirSync(idle)
        Fs.copyFileSync(Path.join(first.directory, ".owner"), Path.join(idle, ".owner"))
        const second = yield* EtcdServer.make({ directory: parent })
        expect([...(yield* entries(parent))].sort()).toEqual(
          [
            Path.basename(first.directory),
            Path.basename(second.directory),
            "effect-sd-etcd-idle",
            "effect-sd-etcd-unowned"
          ].sort()
        )
      })
    )
  })

  describe("without an etcd binary", () => {
    it.scoped("ETCD_BIN=/nonexistent fails with EtcdBinaryNotFound, naming ETCD_BIN and etcd-server", () =>
      Effect.gen(function* () {
        const parent = yield* parentDirectory
        const error = yield* EtcdServer.make({ directory: parent }).pipe(
          Effect.scoped,
          Effect.flip,
          Effect.withConfigProvider(ConfigProvider.fromMap(new Map([["ETCD_BIN", "/nonexistent"]])))
        )
        expect(error._tag).toBe("EtcdBinaryNotFound")
        expect(error.message).toContain("ETCD_BIN")
        expect(error.message).toContain("/nonexistent")
        expect(error.message).toContain("apt-get install etcd-server")
        expect(yield* entries(parent)).toEqual([])
      })
    )

    it.effect("no etcd on PATH fails with EtcdBinaryNotFound", () =>
      Effect.gen(function* () {
        const error = yield* EtcdServer.make().pipe(
          Effect.scoped,
          Effect.flip,
          Effect.withConfigProvider(ConfigProvider.fromMap(new Map([["PATH", "/nonexistent"]])))
        )
        expect(error._tag).toBe("EtcdBinaryNotFound")
        expect(error._tag === "EtcdBinaryNotFound" && error.source).toBe("PATH")
        expect(error.message).toContain("etcd-server")
      })
    )
  })

  it.scoped("passes extra flags to etcd (a tiny --max-request-bytes refuses a big put)", () =>
    Effect.gen(function* () {
      const server = yield* EtcdServer.make({ extraArgs: ["--max-request-bytes", "1024"] })
      const client = yield* etcd3(server.clientUrls)
      yield* put(client, "/kit/small", "x")
      const error = yield* put(client, "/kit/big", "x".repeat(4096)).pipe(Effect.flip)
      expect(String(error)).toMatch(/too large/i)
    })
  )

  it.scopedLive(
    "a start whose client port another etcd has taken fails with PortInUse, not a foreign etcd's health",
    () =>
      Effect.gen(function* () {
        const server = yield* EtcdServer.make()
        const port = new URL(server.clientUrl).port
        yield* server.stop
        // another etcd (a parallel test's, say) takes the stopped server's client port
        const dir = yield* Effect.acquireRelease(
          Effect.sync(() => Fs.mkdtempSync(Path.join(server.directory, "..", "foreign-"))),
          (d) => Effect.sync(() => Fs.rmSync(d, { recursive: true, force: true }))
        )
        // a free peer port (port + 1 was at times another test's etcd's: the foreign etcd then exited)
        const [peerPort] = yield* freePorts(1)
        const peer = `http://127.0.0.1:${peerPort}`
        const foreign = yield* Effect.acquireRelease(
          Effect.sync(() =>
            ChildProcess.spawn(
              process.env["ETCD_BIN"] || "etcd",
              [
                ...[
                  "--data-dir",
                  dir,
                  "--logger",
                  "zap",
                  "--log-level",
                  "error",
                  "--log-outputs",
                  Path.join(dir, "log")
                ],
                ...[
                  "--listen-client-urls",
                  `http://127.0.0.1:${port}`,
                  "--advertise-client-urls",
                  `http://127.0.0.1:${port}`
                ],
                ...[
                  "--listen-peer-urls",
                  peer,
                  "--initial-advertise-peer-urls",
                  peer,
                  "--initial-cluster",
                  `default=${peer}`
                ]
              ],
              { stdio: "ignore" }
            )
          ),
          (child) =>
            Effect.async<void>((resume) => {
              if (child.exitCode !== null || child.signalCode !== null) return resume(Effect.void)
              child.once("exit", () => resume(Effect.void))
              child.kill("SIGKILL")
            })
        )
        yield* Effect.tryPromise(
          () => fetch(`http://127.0.0.1:${port}/health`).then((r) => r.json()) as Promise<{ health?: string }>
        ).pipe(
          Effect.filterOrFail((body: { health?: string }) => body.health === "true"),
          Effect.retry({
            schedule: Schedule.spaced("50 millis").pipe(Schedule.upTo("10 seconds")),
            // a foreign etcd that could not start is said so, not waited on
            while: () => foreign.exitCode === null && foreign.signalCode === null
          }),
          Effect.catchAll(() =>
            Effect.dieMessage(`the foreign etcd on port ${port} never became healthy (exit code ${foreign.exitCode})`)
          )
        )
        const error = yield* Effect.flip(server.start)
        expect(error).toMatchObject({ _tag: "EtcdTestError", reason: "PortInUse" })
        // found either way: the other etcd answered first, or this one exited, unable to bind
        expect(error.message).toMatch(
          new RegExp(`another process answers on its client port ${port}|address already in use`)
        )
        expect(yield* server.state).toBe("Stopped")
      })
  )

  it.scopedLive("a binary that runs etcd as its child (a wrapper script without exec): pause and stop reach etcd", () =>
    Effect.gen(function* () {
      const dir = yield* parentDirectory
      const wrapper = Path.join(dir, "etcd-wrapper.sh")
      Fs.writeFileSync(wrapper, `#!/bin/sh\n"${process.env["ETCD_BIN"] || "etcd"}" "$@"\n`, { mode: 0o755 })
      const server = yield* EtcdServer.make({ binary: wrapper })
      const client = yield* etcd3(server.clientUrls)
      yield* put(client, "/kit/wrapped", "yes")
      yield* server.pause
      expect(yield* server.isHealthy).toBe(false)
      yield* server.resume
      expect(yield* get(client, "/kit/wrapped")).toBe("yes")
      const pid = yield* pidOf(server)
      yield* server.stop
      expect(processExists(pid)).toBe(false)
      // nothing of it is left: no process names its data dir, nothing answers on its port
      expect(yield* processesMentioning(server.dataDir)).toEqual([])
      expect(yield* server.isHealthy).toBe(false)
    })
  )

  it.scoped("a directory option that cannot hold a temp dir fails with a typed error naming it", () =>
    Effect.gen(function* () {
      const error = yield* Effect.flip(EtcdServer.make({ directory: "/nonexistent/etcd-kit-parent" }))
      expect(error).toMatchObject({ _tag: "EtcdTestError", operation: "mkdtemp", reason: "Failed" })
      expect(error.message).toContain("/nonexistent/etcd-kit-parent")
      expect(error.message).toContain("ENOENT")
    })
  )

  it.scoped("a flag etcd does not know fails the start with etcd's own complaint, not an empty log", () =>
    Effect.gen(function* () {
      const error = yield* Effect.flip(EtcdServer.make({ extraArgs: ["--no-such-flag"] }))
      expect(error).toMatchObject({ _tag: "EtcdTestError", reason: "Exited" })
      // printed on stderr before etcd's logger writes anything
      expect(error.message).toContain("flag provided but not defined: -no-such-flag")
    })
  )

  it.layer(EtcdServer.layer({ tls: true }))("in TLS mode", (it) => {
    it.scoped("serves https to a client with the CA and the client certificate", () =>
      Effect.gen(function* () {
        const server = yield* EtcdServer.EtcdServer
        expect(server.clientUrl).toMatch(/^https:\/\/127\.0\.0\.1:\d+$/)
        const tls = yield* Effect.fromNullable(server.tls)
        expect(server.clientOptions).toEqual({ endpoints: [server.clientUrl], ...tls })
        for (const file of [tls.caCert, tls.cert, tls.key]) expect(Fs.existsSync(file)).toBe(true)
        const client = yield* etcd3(server.clientUrls, { tls })
        yield* put(client, "/kit/tls", "secure")
        expect(yield* get(client, "/kit/tls")).toBe("secure")
      })
    )

    it.effect("refuses a client without a certificate", () =>
      Effect.gen(function* () {
        const server = yield* EtcdServer.EtcdServer
        const tls = yield* Effect.fromNullable(server.tls)
        const ca = Fs.readFileSync(tls.caCert)
        const outcome = yield* Effect.async<string>((resume) => {
          const request = Https.get(`${server.clientUrl}/health`, { ca, agent: false }, (response) => {
            response.resume()
            resume(Effect.succeed(`answered ${response.statusCode}`))
          })
          request.on("error", (error) => resume(Effect.succeed(`refused: ${error.message}`)))
        })
        expect(outcome).toMatch(/^refused/)
      })
    )
  })

  it.layer(EtcdServer.layer())("with auth", (it) => {
    const rootPassword = Redacted.make("root-secret")
    const appPassword = Redacted.make("app-secret")

    it.scoped("root enables auth; a user may write in its prefix and is denied outside it", () =>
      Effect.gen(function* () {
        const server = yield* EtcdServer.EtcdServer
        yield* EtcdAuth.enable(server, rootPassword)
        // a second enable says why it fails, not only etcd's "user name is empty"
        const again = yield* Effect.flip(EtcdAuth.enable(server, rootPassword))
        expect(again.message).toContain("authentication is enabled already")
        yield* EtcdAuth.createRole(server, {
          rootPassword,
          role: "app",
          permissions: [
            { prefix: "/app/", permission: "ReadWrite" },
            { prefix: "/shared/", permission: "Read" }
          ]
        })
        yield* EtcdAuth.createUser(server, { rootPassword, user: "app", password: appPassword, roles: ["app"] })

        const root = yield* etcd3(server.clientUrls, { user: { name: "root", password: rootPassword } })
        yield* put(root, "/shared/config", "v1")

        const app = yield* etcd3(server.clientUrls, { user: { name: "app", password: appPassword } })
        yield* put(app, "/app/instance", "10.0.0.1:8080")
        expect(yield* get(app, "/app/instance")).toBe("10.0.0.1:8080")
        expect(yield* get(app, "/shared/config")).toBe("v1")
        expect(yield* put(app, "/shared/config", "v2").pipe(Effect.flip)).toBeInstanceOf(EtcdPermissionDeniedError)
        expect(yield* put(app, "/other/key", "x").pipe(Effect.flip)).toBeInstanceOf(EtcdPermissionDeniedError)
        expect(yield* get(app, "/other/key").pipe(Effect.flip)).toBeInstanceOf(EtcdPermissionDeniedError)

        const anonymous = yield* etcd3(server.clientUrls)
        expect(yield* get(anonymous, "/app/instance").pipe(Effect.flip)).toBeDefined()
      })
    )

    it.scoped("a server with auth enabled restarts healthy, credentials intact", () =>
      Effect.gen(function* () {
        const server = yield* EtcdServer.EtcdServer
        yield* server.restart
        const app = yield* etcd3(server.clientUrls, { user: { name: "app", password: appPassword } })
        expect(yield* get(app, "/app/instance")).toBe("10.0.0.1:8080")
        yield* EtcdAuth.disable(server, rootPassword)
        const anonymous = yield* etcd3(server.clientUrls)
        expect(yield* call(() => anonymous.get("/app/instance").string())).toBe("10.0.0.1:8080")
      })
    )
  })
})
