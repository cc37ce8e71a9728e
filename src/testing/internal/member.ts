/**
 * One etcd process: spawn, health, signals, and the finalizer that leaves
 * nothing behind.
 *
 * @internal
 */
import * as Deferred from "effect/Deferred"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Option from "effect/Option"
import * as Schedule from "effect/Schedule"
import * as Schema from "effect/Schema"
import type * as Scope from "effect/Scope"
import * as ChildProcess from "node:child_process"
import { closeSync, openSync, readFileSync } from "node:fs"
import * as Path from "node:path"
import type { EtcdMember, State, Status } from "../EtcdMember.js"
import { EtcdTestError } from "../EtcdTestError.js"
import type { Certificates } from "../EtcdTls.js"
import * as Os from "./os.js"

/** Everything a member is started with; ports and data dir never change. */
export interface MemberSpec {
  readonly binary: string
  readonly name: string
  readonly directory: string
  readonly clientPort: number
  readonly peerPort: number
  /** `--initial-cluster`: `name=peerUrl,...` of every member. */
  readonly initialCluster: string
  readonly tls: { readonly certificates: Certificates; readonly client: Os.ClientTls } | undefined
  readonly extraArgs: ReadonlyArray<string>
  readonly logLevel: string
  readonly startTimeout: Duration.Duration
  readonly stopTimeout: Duration.Duration
}

/** A member plus what only the kit may do to it. */
export interface MemberHandle extends EtcdMember {
  /** The `--initial-cluster-token` of the next start (a wiped cluster gets a new one). */
  readonly setToken: (token: string) => void
  /**
   * Whether it leads, and whether it knows a leader, from its `/metrics` (which,
   * unlike the JSON gateway's status, also answers with auth enabled in TLS mode).
   */
  readonly role: Effect.Effect<Role, EtcdTestError>
  /** Deletes the data dir; the member must be stopped. */
  readonly wipeData: Effect.Effect<void, EtcdTestError>
}

/** What a member's metrics say about leadership. */
export interface Role {
  readonly isLeader: boolean
  readonly hasLeader: boolean
}

interface Running {
  readonly pid: number
  /** Where this process's part of the (appended) log file starts. */
  readonly logStart: number
  readonly exit: Deferred.Deferred<{ readonly code: number | null; readonly signal: NodeJS.Signals | null }>
  exited: boolean
  paused: boolean
}

const probeTimeout = Duration.seconds(1)
const healthSchedule = Schedule.spaced("50 millis")

/** etcd's `GET /health` answer. */
const decodeHealth = Schema.decode(Schema.parseJson(Schema.Struct({ health: Schema.String })))

/** etcd's Maintenance status through its JSON gateway (64-bit numbers as strings, zero values left out). */
const decodeStatus = Schema.decode(
  Schema.parseJson(
    Schema.Struct({
      header: Schema.Struct({
        member_id: Schema.String,
        revision: Schema.optionalWith(Schema.String, { default: () => "0" })
      }),
      leader: Schema.optionalWith(Schema.String, { default: () => "0" }),
      raftTerm: Schema.optionalWith(Schema.String, { default: () => "0" })
    })
  )
)

/** A unique `--initial-cluster-token`. */
export const newToken = (): string => `effect-sd-etcd-${Date.now().toString(36)}-${Math.random().toString(36).slice(2)}`

/**
 * Creates a member (no process yet). Its finalizer, registered in the current
 * scope, resumes a paused process, terminates it and waits for its exit; no
 * process is spawned after the scope has closed.
 */
export const make = (spec: MemberSpec, initialToken: string): Effect.Effect<MemberHandle, never, Scope.Scope> =>
  Effect.gen(function* () {
    const scheme = spec.tls === undefined ? "http" : "https"
    const clientUrl = `${scheme}://127.0.0.1:${spec.clientPort}`
    const peerUrl = `http://127.0.0.1:${spec.peerPort}`
    const dataDir = Path.join(spec.directory, `${spec.name}.etcd`)
    const logFile = Path.join(spec.directory, `${spec.name}.log`)
    const lock = yield* Effect.makeSemaphore(1)
    let token = initialToken
    let current: Running | undefined = undefined
    let closed = false

    const args = (): ReadonlyArray<string> => [
      "--name",
      spec.name,
      "--data-dir",
      dataDir,
      "--listen-client-urls",
      clientUrl,
      "--advertise-client-urls",
      clientUrl,
      "--listen-peer-urls",
      peerUrl,
      "--initial-advertise-peer-urls",
      peerUrl,
      "--initial-cluster",
      spec.initialCluster,
      "--initial-cluster-state",
      "new",
      "--initial-cluster-token",
      token,
      "--auto-compaction-retention",
      "0",
      "--logger",
      "zap",
      "--log-outputs",
      logFile,
      "--log-level",
      spec.logLevel,
      ...(spec.tls === undefined
        ? []
        : [
            "--cert-file",
            spec.tls.certificates.server.cert,
            "--key-file",
            spec.tls.certificates.server.key,
            "--trusted-ca-file",
            spec.tls.certificates.caCert,
            "--client-cert-auth"
          ]),
      ...spec.extraArgs
    ]

    const alive = (): Running | undefined => (current !== undefined && !current.exited ? current : undefined)

    /**
     * Signals the member's process group: etcd, and whatever its binary started
     * (a wrapper script that runs etcd as its child, without exec, would
     * otherwise be paused or stopped while its etcd goes on). Where there are
     * no process groups (Windows), the spawned process alone.
     */
    const signal = (running: Running, signal: NodeJS.Signals): Effect.Effect<void> =>
      Effect.sync(() => {
        // a pid whose exit was seen may belong to someone else by now; a group's id stays taken
        // while the group has a process, and a group without one is not signalled (ESRCH)
        if (running.exited && !Os.processGroups) return
        try {
          process.kill(Os.processGroups ? -running.pid : running.pid, signal)
        } catch {
          // ESRCH: it exited and its exit event is on its way
        }
      })

    /**
     * Waits until the kernel shows the process stopped (state `T` in
     * /proc/<pid>/stat), so that nothing it answers after `pause` returns.
     * Where there is no /proc, returns at once.
     */
    const awaitStopped = (pid: number): Effect.Effect<void> =>
      Effect.sync(() => {
        const stopped = (): boolean => {
          try {
            const state = Os.statFields(readFileSync(`/proc/${pid}/stat`, "utf8"))[0]
            return state === "T" || state === "t" || state === "Z" || state === "X"
          } catch {
            return true
          }
        }
        // a stop takes effect within microseconds: wait in 1 ms steps, at most a second
        const tick = new Int32Array(new SharedArrayBuffer(4))
        for (let i = 0; i < 1000 && !stopped(); i++) Atomics.wait(tick, 0, 0, 1)
      })

    /** Waits for the spawned process to exit, then for the rest of its group (within `stopTimeout`). */
    const awaitExit = (running: Running): Effect.Effect<boolean> =>
      Effect.zipRight(
        Deferred.await(running.exit),
        Os.processGroups
          ? Effect.repeat(Os.groupAlive(running.pid), {
              schedule: Schedule.spaced("10 millis"),
              until: (alive) => !alive
            })
          : Effect.void
      ).pipe(
        Effect.timeout(spec.stopTimeout),
        Effect.as(true),
        Effect.catchTag("TimeoutException", () => Effect.succeed(false))
      )

    const terminate = (running: Running, first: "SIGTERM" | "SIGKILL"): Effect.Effect<void> =>
      Effect.gen(function* () {
        // the spawned process gone, its group may not be (a wrapper that exited, leaving its etcd)
        if (running.exited && !(Os.processGroups && (yield* Os.groupAlive(running.pid)))) return
        if (running.paused) {
          yield* signal(running, "SIGCONT")
          running.paused = false
        }
        yield* signal(running, first)
        if (yield* awaitExit(running)) return
        if (first === "SIGTERM") {
          yield* Effect.logWarning(`etcd did not exit within ${Duration.format(spec.stopTimeout)} of SIGTERM: SIGKILL`)
          yield* signal(running, "SIGKILL")
          if (yield* awaitExit(running)) return
        }
        yield* Effect.logError("etcd did not exit after SIGKILL")
      }).pipe(Effect.uninterruptible, Effect.annotateLogs({ member: spec.name, pid: running.pid }), Os.live)

    const spawn: Effect.Effect<Running, EtcdTestError> = Effect.flatMap(
      Effect.all([
        Deferred.make<{ readonly code: number | null; readonly signal: NodeJS.Signals | null }>(),
        Os.fileSize(logFile),
        Os.parentDeathWrapper
      ]),
      ([exit, logStart, wrap]) =>
        Effect.async<Running, EtcdTestError>((resume) => {
          if (closed) {
            return resume(
              Effect.fail(
                new EtcdTestError({ operation: "start", reason: "Failed", detail: `${spec.name}: its scope is closed` })
              )
            )
          }
          // killed by the kernel if this process dies without stopping it
          const [command, argv] = wrap === undefined ? [spec.binary, args()] : wrap(spec.binary, args())
          // etcd's stdout and stderr go to its log: what it prints before its logger is set up (a
          // bad flag, a wrong binary) is then in the error's log tail too
          let output: number | "ignore" = "ignore"
          try {
            output = openSync(logFile, "a")
          } catch {
            // no log file to write to: etcd's own --log-outputs says why, in the error
          }
          // a process group of its own, which every signal goes to (see `signal`)
          const child = ChildProcess.spawn(command, argv, {
            stdio: ["ignore", output, output],
            detached: Os.processGroups
          })
          if (output !== "ignore") closeSync(output)
          const pid = child.pid
          if (pid === undefined) {
            child.once("error", (cause) =>
              resume(
                Effect.fail(
                  new EtcdTestError({
                    operation: "start",
                    reason: "Failed",
                    detail: `${spec.name}: could not spawn ${spec.binary}`,
                    cause
                  })
                )
              )
            )
            return
          }
          const running: Running = { pid, logStart, exit, exited: false, paused: false }
          child.on("error", () => {})
          child.once("exit", (code, signal) => {
            running.exited = true
            Deferred.unsafeDone(exit, Exit.succeed({ code, signal }))
          })
          current = running
          resume(Effect.succeed(running))
        })
    ).pipe(
      Effect.uninterruptible,
      Effect.tap((running) =>
        Effect.logDebug("etcd spawned").pipe(Effect.annotateLogs({ member: spec.name, pid: running.pid }))
      )
    )

    const isHealthy: Effect.Effect<boolean> = Os.request(`${clientUrl}/health`, {
      method: "GET",
      tls: spec.tls?.client,
      timeout: probeTimeout
    }).pipe(
      Effect.flatMap(({ body, status }) => (status === 200 ? decodeHealth(body) : Effect.succeed({ health: "false" }))),
      Effect.map(({ health }) => health === "true"),
      Effect.orElseSucceed(() => false)
    )

    const status: Effect.Effect<Status, EtcdTestError> = Os.request(`${clientUrl}/v3/maintenance/status`, {
      method: "POST",
      body: "{}",
      tls: spec.tls?.client,
      timeout: probeTimeout
    }).pipe(
      Effect.flatMap(({ body, status }) =>
        Effect.mapError(
          status === 200 ? Effect.mapError(decodeStatus(body), String) : Effect.fail(`HTTP ${status}: ${body}`),
          (detail: string) =>
            new EtcdTestError({ operation: "status", reason: "Failed", detail: `${spec.name}: ${detail}` })
        )
      ),
      Effect.map((raw): Status => ({
        memberId: raw.header.member_id,
        leaderId: raw.leader,
        isLeader: raw.leader === raw.header.member_id,
        revision: Number(raw.header.revision),
        raftTerm: Number(raw.raftTerm)
      }))
    )

    const role: Effect.Effect<Role, EtcdTestError> = Os.request(`${clientUrl}/metrics`, {
      method: "GET",
      tls: spec.tls?.client,
      timeout: probeTimeout
    }).pipe(
      Effect.flatMap(({ body, status }) => {
        const isLeader = /^etcd_server_is_leader (\d+)/m.exec(body)?.[1]
        const hasLeader = /^etcd_server_has_leader (\d+)/m.exec(body)?.[1]
        return status === 200 && isLeader !== undefined && hasLeader !== undefined
          ? Effect.succeed({ isLeader: isLeader === "1", hasLeader: hasLeader === "1" })
          : Effect.fail(
              new EtcdTestError({ operation: "status", reason: "Failed", detail: `${spec.name}: no leader metrics` })
            )
      })
    )

    const exitedError = (running: Running) =>
      Effect.flatMap(Deferred.await(running.exit), ({ code, signal }) =>
        Effect.flatMap(Os.fileTail(logFile, running.logStart), (log) =>
          Effect.fail(
            new EtcdTestError({
              operation: "start",
              reason: /address already in use/.test(log) ? "PortInUse" : "Exited",
              detail: `${spec.name} exited (${signal ?? `code ${code}`}) before it became healthy; its log ends with:\n${log}`
            })
          )
        )
      )

    // whatever answers on the client port must be this start's etcd: another one there (a parallel
    // test that took the port while this member was stopped) would answer the health check while
    // this one fails to bind, and its clients would use the other's data
    const ownsClientPort = (running: Running): Effect.Effect<void, EtcdTestError> =>
      Effect.flatMap(Os.listensOn(running.pid, spec.clientPort), (owns) =>
        owns === false
          ? Effect.fail(
              new EtcdTestError({
                operation: "start",
                reason: "PortInUse",
                detail: `${spec.name}: another process answers on its client port ${spec.clientPort}`
              })
            )
          : Effect.void
      )

    const awaitHealthy = (running: Running): Effect.Effect<void, EtcdTestError> =>
      Effect.raceFirst(
        Effect.zipRight(
          Effect.repeat(isHealthy, { schedule: healthSchedule, until: (healthy) => healthy }),
          ownsClientPort(running)
        ),
        exitedError(running)
      ).pipe(
        Effect.timeout(spec.startTimeout),
        Effect.catchTag("TimeoutException", () =>
          Effect.flatMap(Os.fileTail(logFile, running.logStart), (log) =>
            Effect.fail(
              new EtcdTestError({
                operation: "start",
                reason: "Timeout",
                detail: `${spec.name} was not healthy within ${Duration.format(spec.startTimeout)}; its log ends with:\n${log}`
              })
            )
          )
        ),
        Effect.asVoid,
        Os.live
      )

    const resumeRunning = (running: Running): Effect.Effect<void> =>
      Effect.zipRight(
        signal(running, "SIGCONT"),
        Effect.sync(() => {
          running.paused = false
        })
      )

    const startUnlocked: Effect.Effect<void, EtcdTestError> = Effect.suspend(() => {
      const current = alive()
      // a paused process is resumed, and waited for as a start is
      if (current !== undefined) {
        return current.paused
          ? Effect.zipRight(resumeRunning(current), awaitHealthy(current)).pipe(
              Effect.onError(() => terminate(current, "SIGKILL"))
            )
          : Effect.void
      }
      return Effect.flatMap(spawn, (running) =>
        awaitHealthy(running).pipe(
          Effect.onError(() => terminate(running, "SIGKILL")),
          Effect.tap(() =>
            Effect.logDebug("etcd healthy").pipe(Effect.annotateLogs({ member: spec.name, pid: running.pid }))
          )
        )
      )
    })

    const withRunning = (f: (running: Running) => Effect.Effect<void>): Effect.Effect<void> =>
      Effect.suspend(() => {
        const running = alive()
        return running === undefined ? Effect.void : f(running)
      })

    const stop = withRunning((running) => terminate(running, "SIGTERM"))
    const kill = withRunning((running) => terminate(running, "SIGKILL"))

    yield* Effect.addFinalizer(() =>
      Effect.suspend(() => {
        closed = true
        return stop
      })
    )

    const member: MemberHandle = {
      name: spec.name,
      clientUrl,
      peerUrl,
      dataDir,
      logFile,
      pid: Effect.sync(() => Option.map(Option.fromNullable(alive()), (running) => running.pid)),
      state: Effect.sync((): State => {
        const running = alive()
        return running === undefined ? "Stopped" : running.paused ? "Paused" : "Running"
      }),
      isHealthy,
      status,
      role,
      start: lock.withPermits(1)(startUnlocked),
      stop: lock.withPermits(1)(stop),
      kill: lock.withPermits(1)(kill),
      restart: lock.withPermits(1)(Effect.zipRight(stop, startUnlocked)),
      pause: lock.withPermits(1)(
        withRunning((running) =>
          Effect.zipRight(
            signal(running, "SIGSTOP"),
            Effect.zipRight(
              awaitStopped(running.pid),
              Effect.sync(() => {
                running.paused = true
              })
            )
          )
        )
      ),
      resume: lock.withPermits(1)(withRunning(resumeRunning)),
      setToken: (next) => {
        token = next
      },
      wipeData: Os.removeDirectory(dataDir)
    }
    return member
  })

/** The public face of a member, without the kit's own operations. */
export const toPublic = (member: MemberHandle): EtcdMember => ({
  name: member.name,
  clientUrl: member.clientUrl,
  peerUrl: member.peerUrl,
  dataDir: member.dataDir,
  logFile: member.logFile,
  pid: member.pid,
  state: member.state,
  isHealthy: member.isHealthy,
  status: member.status,
  start: member.start,
  stop: member.stop,
  kill: member.kill,
  restart: member.restart,
  pause: member.pause,
  resume: member.resume
})
