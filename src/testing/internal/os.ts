/**
 * What the test kit needs from the operating system: the etcd binary, free
 * loopback ports, temporary directories, child commands and small HTTP requests.
 *
 * @internal
 */
import * as Clock from "effect/Clock"
import * as Config from "effect/Config"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Option from "effect/Option"
import type * as Scope from "effect/Scope"
import * as ChildProcess from "node:child_process"
import * as Fs from "node:fs"
import * as FsP from "node:fs/promises"
import * as Http from "node:http"
import * as Https from "node:https"
import * as Net from "node:net"
import * as Os from "node:os"
import * as Path from "node:path"
import { EtcdBinaryNotFound, EtcdTestError } from "../EtcdTestError.js"

const liveClock = Clock.make()

/**
 * Runs `self` on the real clock, also inside tests that run on `TestClock`:
 * processes and sockets live in real time, so the kit's timeouts and polls must too.
 */
export const live = <A, E, R>(self: Effect.Effect<A, E, R>): Effect.Effect<A, E, R> => Effect.withClock(self, liveClock)

const isExecutableFile = (file: string): Effect.Effect<boolean> =>
  Effect.promise(() =>
    FsP.stat(file).then(
      (stat) =>
        stat.isFile() &&
        FsP.access(file, Fs.constants.X_OK).then(
          () => true,
          () => false
        ),
      () => false
    )
  )

/** The etcd binary: `explicit`, else `ETCD_BIN`, else `etcd` on `PATH`. */
export const resolveBinary = (explicit: string | undefined): Effect.Effect<string, EtcdBinaryNotFound> =>
  Effect.gen(function* () {
    const fromEnv = yield* Config.option(Config.nonEmptyString("ETCD_BIN")).pipe(Effect.orDie)
    const named: { readonly binary: string; readonly source: "option" | "ETCD_BIN" } | undefined =
      explicit !== undefined
        ? { binary: explicit, source: "option" }
        : Option.isSome(fromEnv)
          ? { binary: fromEnv.value, source: "ETCD_BIN" }
          : undefined
    if (named !== undefined && named.binary.includes("/")) {
      const file = Path.resolve(named.binary)
      return (yield* isExecutableFile(file)) ? file : yield* new EtcdBinaryNotFound(named)
    }
    const name = named?.binary ?? "etcd"
    const path = yield* Config.string("PATH").pipe(Config.withDefault(""), Effect.orDie)
    const file = yield* findOnPath(name, path)
    return file ?? (yield* new EtcdBinaryNotFound({ binary: name, source: named?.source ?? "PATH" }))
  })

/** The first executable file named `name` in the directories of `path` (a `PATH` value). */
const findOnPath = (name: string, path: string): Effect.Effect<string | undefined> =>
  Effect.gen(function* () {
    for (const dir of path.split(Path.delimiter)) {
      if (dir.length === 0) continue
      const file = Path.join(dir, name)
      if (yield* isExecutableFile(file)) return file
    }
    return undefined
  })

/** Turns a command and its arguments into the command and arguments to spawn. */
export type Wrapper = (command: string, args: ReadonlyArray<string>) => readonly [string, ReadonlyArray<string>]

/**
 * How to start a command so that the kernel kills it when this process dies,
 * however it dies (a crash, SIGKILL, a test runner's worker torn down): on
 * Linux, util-linux's `setpriv --pdeathsig KILL`, which sets that signal and
 * then execs the command, so the command keeps `setpriv`'s pid. SIGKILL, not
 * SIGTERM, because a paused member ignores every other signal until resumed.
 * `undefined` where there is no `setpriv` that knows `--pdeathsig` (not Linux,
 * util-linux before 2.33): commands are then started as they are.
 */
export const parentDeathWrapper: Effect.Effect<Wrapper | undefined> = Effect.cached(
  Effect.gen(function* () {
    if (process.platform !== "linux") return undefined
    // the process's own PATH, read once: a test's ConfigProvider must not decide it for the others
    const file = yield* findOnPath("setpriv", process.env["PATH"] ?? "")
    if (file === undefined) return undefined
    const help = ChildProcess.spawnSync(file, ["--help"], { encoding: "utf8", timeout: 5000 })
    if (!(help.stdout ?? "").includes("--pdeathsig")) return undefined
    return (command: string, args: ReadonlyArray<string>) =>
      [file, ["--pdeathsig", "KILL", "--", command, ...args]] as const
  })
).pipe(Effect.runSync)

/**
 * Whether members run in a process group of their own, which their signals go
 * to: only where the kernel kills them with this process (see
 * {@link parentDeathWrapper}). Out of the terminal's process group, they no
 * longer get its Ctrl-C; elsewhere that is what stops them when a test run is
 * cut short.
 */
export const processGroups: boolean = parentDeathWrapper !== undefined

/** `count` distinct free TCP ports on 127.0.0.1 (bound to port 0 together, then released). */
export const freePorts = (count: number): Effect.Effect<ReadonlyArray<number>, EtcdTestError> =>
  Effect.tryPromise({
    try: async () => {
      const servers: Array<Net.Server> = []
      try {
        const ports: Array<number> = []
        for (let i = 0; i < count; i++) {
          const server = Net.createServer()
          servers.push(server)
          await new Promise<void>((resolve, reject) => {
            server.once("error", reject)
            server.listen(0, "127.0.0.1", () => resolve())
          })
          const address = server.address()
          if (address === null || typeof address === "string") throw new Error("no TCP address")
          ports.push(address.port)
        }
        return ports
      } finally {
        await Promise.all(servers.map((server) => new Promise<void>((resolve) => server.close(() => resolve()))))
      }
    },
    catch: (cause) =>
      new EtcdTestError({ operation: "ports", reason: "Failed", detail: "could not find free ports", cause })
  })

const tempPrefix = "effect-sd-etcd-"

/** In each temp dir: who made it (see {@link processIdentity}). */
const ownerFile = ".owner"

/**
 * The fields of a `/proc/<pid>/stat` line after the command name, which is in
 * parentheses and may hold spaces and parentheses itself: the state first,
 * then the parent's pid, ... (`proc(5)`'s third field on).
 */
export const statFields = (stat: string): Array<string> => stat.slice(stat.lastIndexOf(")") + 2).split(" ")

/** The pids in `/proc` (none where there is no `/proc`). */
const processIds = async (): Promise<Array<string>> =>
  (await FsP.readdir("/proc").catch(() => [])).filter((entry) => /^[0-9]+$/.test(entry))

/**
 * Whether a process group (a member's etcd and whatever its binary started:
 * a wrapper script may run etcd as its child) still has a live process. Where
 * /proc shows the group's processes, zombies do not count: an orphan's zombie
 * waits for an init that may never reap it.
 */
export const groupAlive = (pgid: number): Effect.Effect<boolean> =>
  Effect.promise(async () => {
    try {
      process.kill(-pgid, 0)
    } catch (cause) {
      return (cause as NodeJS.ErrnoException).code !== "ESRCH"
    }
    if (process.platform !== "linux") return true
    const ids = await processIds()
    if (ids.length === 0) return true
    for (const id of ids) {
      const stat = await FsP.readFile(`/proc/${id}/stat`, "utf8").catch(() => undefined)
      if (stat === undefined) continue
      const [state, , group] = statFields(stat)
      if (group === String(pgid) && state !== "Z" && state !== "X") return true
    }
    return false
  })

/**
 * A process as `<pid namespace> <pid> <start time>` (Linux /proc): a pid alone
 * may have been reused, and a pid from another namespace (another container
 * sharing the directory) means nothing here. `undefined` for no such process.
 */
const processIdentity = (pid: number | "self"): string | undefined => {
  try {
    const stat = Fs.readFileSync(`/proc/${pid}/stat`, "utf8")
    // the start time is the 22nd field
    const fields = statFields(stat)
    const namespace = Fs.readlinkSync(`/proc/${pid}/ns/pid`)
    return `${namespace} ${stat.slice(0, stat.indexOf(" "))} ${fields[19]}`
  } catch {
    return undefined
  }
}

/** This process's identity, which never changes: read once. */
const selfIdentity = processIdentity("self")

/** Whether a process's command line names `text` (an etcd names its data dir). */
const anyProcessMentions = async (text: string): Promise<boolean> => {
  for (const entry of await processIds()) {
    const cmdline = await FsP.readFile(Path.join("/proc", entry, "cmdline"), "utf8").catch(() => "")
    if (cmdline.includes(text)) return true
  }
  return false
}

/**
 * Removes the temp dirs under `parent` left by a process that died without
 * closing its scope (its etcd is killed with it, see {@link parentDeathWrapper},
 * but not its dir): those whose owner file names a process of this pid
 * namespace that is gone, and that no running process names. A dir without an
 * owner file (being made, or made elsewhere) is left alone. Linux only.
 */
const removeOrphanedDirectories = (parent: string): Effect.Effect<void> =>
  Effect.promise(async () => {
    if (selfIdentity === undefined) return
    const namespace = selfIdentity.slice(0, selfIdentity.indexOf(" "))
    const names = await FsP.readdir(parent).catch(() => [] as Array<string>)
    for (const name of names) {
      if (!name.startsWith(tempPrefix)) continue
      const dir = Path.join(parent, name)
      const owner = (await FsP.readFile(Path.join(dir, ownerFile), "utf8").catch(() => "")).trim()
      const [ownerNamespace, pid] = owner.split(" ")
      if (ownerNamespace !== namespace || pid === undefined || !/^\d+$/.test(pid)) continue
      if (processIdentity(Number(pid)) === owner || (await anyProcessMentions(dir))) continue
      await FsP.rm(dir, { recursive: true, force: true, maxRetries: 3 }).catch(() => undefined)
    }
  })

/**
 * A fresh directory under `parent` (default: the OS temp dir), removed with
 * everything in it when the scope closes. Dirs there that a dead process left
 * behind are removed first.
 */
export const tempDirectory = (parent: string | undefined): Effect.Effect<string, EtcdTestError, Scope.Scope> =>
  Effect.acquireRelease(
    Effect.zipRight(
      removeOrphanedDirectories(parent ?? Os.tmpdir()),
      Effect.tryPromise({
        try: async () => {
          const dir = await FsP.mkdtemp(Path.join(parent ?? Os.tmpdir(), tempPrefix))
          if (selfIdentity !== undefined) {
            await FsP.writeFile(Path.join(dir, ownerFile), `${selfIdentity}\n`).catch(async (cause: unknown) => {
              await FsP.rm(dir, { recursive: true, force: true })
              throw cause
            })
          }
          return dir
        },
        catch: (cause) =>
          new EtcdTestError({
            operation: "mkdtemp",
            reason: "Failed",
            detail: `could not create a temp dir in ${parent ?? Os.tmpdir()}: ${cause instanceof Error ? cause.message : String(cause)}`,
            cause
          })
      })
    ),
    (dir) =>
      Effect.tryPromise(() => FsP.rm(dir, { recursive: true, force: true, maxRetries: 3 })).pipe(
        Effect.catchAll((cause) => Effect.logWarning("could not remove the etcd temp dir", cause)),
        Effect.annotateLogs("dir", dir)
      )
  )

/** Removes a directory and everything in it. */
export const removeDirectory = (dir: string): Effect.Effect<void, EtcdTestError> =>
  Effect.tryPromise({
    try: () => FsP.rm(dir, { recursive: true, force: true, maxRetries: 3 }),
    catch: (cause) => new EtcdTestError({ operation: "rm", reason: "Failed", detail: `could not remove ${dir}`, cause })
  })

/** Writes a file. */
export const writeFile = (file: string, content: string): Effect.Effect<void, EtcdTestError> =>
  Effect.tryPromise({
    try: () => FsP.writeFile(file, content, { mode: 0o600 }),
    catch: (cause) =>
      new EtcdTestError({ operation: "write", reason: "Failed", detail: `could not write ${file}`, cause })
  })

/** Reads a file. */
export const readFile = (file: string, operation: string): Effect.Effect<Buffer, EtcdTestError> =>
  Effect.tryPromise({
    try: () => FsP.readFile(file),
    catch: (cause) => new EtcdTestError({ operation, reason: "Failed", detail: `could not read ${file}`, cause })
  })

/** The size of a file, 0 when it does not exist. */
export const fileSize = (file: string): Effect.Effect<number> =>
  Effect.promise(() =>
    FsP.stat(file).then(
      (stat) => stat.size,
      () => 0
    )
  )

/** Process `pid` and its descendants (a wrapper that runs etcd without `exec` is its parent), from `/proc`. */
const processTree = async (pid: number): Promise<ReadonlyArray<number>> => {
  const children = new Map<number, Array<number>>()
  for (const entry of await processIds()) {
    const stat = await FsP.readFile(`/proc/${entry}/stat`, "utf8").catch(() => "")
    const ppid = Number(statFields(stat)[1])
    if (Number.isInteger(ppid)) children.set(ppid, [...(children.get(ppid) ?? []), Number(entry)])
  }
  // a set: a pid reused during the scan cannot make a cycle
  const tree = new Set([pid])
  for (const member of tree) for (const child of children.get(member) ?? []) tree.add(child)
  return [...tree]
}

/**
 * Whether process `pid` (or one it started) holds a socket that listens on
 * `port` (on 127.0.0.1, or on any address, IPv4 or IPv6: all answer on
 * 127.0.0.1), from Linux's `/proc` (the listening sockets' inodes, among the
 * processes' open files); `undefined` where `/proc` cannot tell (another OS, a
 * process whose files cannot be read, a listener it does not show).
 */
export const listensOn = (pid: number, port: number): Effect.Effect<boolean | undefined> =>
  Effect.promise(async () => {
    const tables = await Promise.all(
      ["/proc/net/tcp", "/proc/net/tcp6"].map((file) => FsP.readFile(file, "utf8").catch(() => undefined))
    )
    if (tables[0] === undefined) return undefined
    // local address as the kernel writes it ("address:port", the port in hex), state 0A: LISTEN
    const hexPort = `:${port.toString(16).toUpperCase().padStart(4, "0")}`
    const inodes = new Set<string>()
    for (const table of tables) {
      for (const line of (table ?? "").split("\n").slice(1)) {
        const fields = line.trim().split(/\s+/)
        if (fields[1]?.endsWith(hexPort) === true && fields[3] === "0A" && fields[9] !== undefined) {
          inodes.add(`socket:[${fields[9]}]`)
        }
      }
    }
    // something answered on the port, so /proc does not show it
    if (inodes.size === 0) return undefined
    let unreadable = false
    for (const member of await processTree(pid)) {
      let fds: Array<string>
      try {
        fds = await FsP.readdir(`/proc/${member}/fd`)
      } catch (cause) {
        // gone since the scan: nothing of it listens; else it is not ours to read
        if ((cause as NodeJS.ErrnoException).code !== "ENOENT") unreadable = true
        continue
      }
      for (const fd of fds) {
        const target = await FsP.readlink(`/proc/${member}/fd/${fd}`).catch(() => "")
        if (inodes.has(target)) return true
      }
    }
    return unreadable ? undefined : false
  })

/** At most the last `bytes` bytes of a (log) file from offset `from` on, or "" when it cannot be read. */
export const fileTail = (file: string, from: number, bytes = 4096): Effect.Effect<string> =>
  Effect.promise(async () => {
    try {
      const content = await FsP.readFile(file)
      return content.subarray(Math.max(from, content.length - bytes)).toString("utf8")
    } catch {
      return ""
    }
  })

/** Runs a short command to completion (killed if interrupted); fails with its stderr. */
export const run = (
  command: string,
  args: ReadonlyArray<string>,
  options: { readonly cwd: string; readonly operation: string }
): Effect.Effect<void, EtcdTestError> =>
  Effect.async<void, EtcdTestError>((resume, signal) => {
    ChildProcess.execFile(command, args, { cwd: options.cwd, signal }, (error, _stdout, stderr) => {
      if (error === null) return resume(Effect.void)
      const missing = "code" in error && error.code === "ENOENT"
      resume(
        Effect.fail(
          new EtcdTestError({
            operation: options.operation,
            reason: "Failed",
            detail: missing ? `${command} not found on PATH` : `${command} ${args.join(" ")}: ${stderr.trim()}`,
            cause: error
          })
        )
      )
    })
  })

/** TLS material for talking to an https member. */
export interface ClientTls {
  readonly ca: Buffer
  readonly cert: Buffer
  readonly key: Buffer
}

/** A small HTTP(S) request to a member (no connection reuse), bounded by `timeout`. */
export const request = (
  url: string,
  options: {
    readonly method: "GET" | "POST"
    readonly body?: string | undefined
    readonly tls: ClientTls | undefined
    readonly timeout: Duration.DurationInput
  }
): Effect.Effect<{ readonly status: number; readonly body: string }, EtcdTestError> =>
  Effect.async<{ readonly status: number; readonly body: string }, EtcdTestError>((resume, signal) => {
    let done = false
    const finish = (effect: Effect.Effect<{ readonly status: number; readonly body: string }, EtcdTestError>) => {
      if (done) return
      done = true
      resume(effect)
    }
    const fail = (cause: unknown) =>
      finish(Effect.fail(new EtcdTestError({ operation: "request", reason: "Failed", detail: url, cause })))
    const target = new URL(url)
    const requestOptions: Https.RequestOptions = {
      method: options.method,
      agent: false,
      signal,
      headers: options.body === undefined ? {} : { "content-type": "application/json" },
      ...(options.tls === undefined ? {} : { ca: options.tls.ca, cert: options.tls.cert, key: options.tls.key })
    }
    const onResponse = (response: Http.IncomingMessage) => {
      const chunks: Array<Buffer> = []
      response.on("data", (chunk: Buffer) => chunks.push(chunk))
      response.on("error", fail)
      response.on("end", () =>
        finish(Effect.succeed({ status: response.statusCode ?? 0, body: Buffer.concat(chunks).toString("utf8") }))
      )
    }
    const req =
      target.protocol === "https:"
        ? Https.request(target, requestOptions, onResponse)
        : Http.request(target, requestOptions, onResponse)
    req.on("error", fail)
    req.end(options.body)
  }).pipe(
    Effect.timeoutFail({
      duration: options.timeout,
      onTimeout: () =>
        new EtcdTestError({
          operation: "request",
          reason: "Timeout",
          detail: `${url} did not answer within ${Duration.format(options.timeout)}`
        })
    }),
    live
  )
