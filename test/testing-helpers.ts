/**
 * Helpers of the test suites: a raw `etcd3` client as a scoped resource,
 * checks that nothing was left behind, and a wait on a subscribable's changes.
 */
import * as Effect from "effect/Effect"
import * as Option from "effect/Option"
import * as Redacted from "effect/Redacted"
import type * as Scope from "effect/Scope"
import * as Stream from "effect/Stream"
import type * as Subscribable from "effect/Subscribable"
import * as TestServices from "effect/TestServices"
import { Etcd3 } from "etcd3"
import type { IOptions } from "etcd3"
import * as Fs from "node:fs"
import * as Net from "node:net"
import * as FsP from "node:fs/promises"
import * as Os from "node:os"
import * as Path from "node:path"
import type { TlsFiles } from "../src/testing/EtcdTls.js"

/** A raw etcd3 client, closed with the scope. */
export const etcd3 = (
  endpoints: ReadonlyArray<string>,
  options: {
    readonly tls?: TlsFiles | undefined
    readonly user?: { readonly name: string; readonly password: Redacted.Redacted<string> } | undefined
  } = {}
): Effect.Effect<Etcd3, never, Scope.Scope> =>
  Effect.acquireRelease(
    Effect.sync(() => {
      const config: IOptions = {
        hosts: [...endpoints],
        dialTimeout: 3000,
        defaultCallOptions: () => ({ deadline: Date.now() + 5000 }),
        ...(options.tls === undefined
          ? {}
          : {
              // grpc-js would send the IP as TLS server name (Node's DEP0123); the kit's server cert also names localhost
              grpcOptions: { "grpc.ssl_target_name_override": "localhost" },
              credentials: {
                rootCertificate: Fs.readFileSync(options.tls.caCert),
                certChain: Fs.readFileSync(options.tls.cert),
                privateKey: Fs.readFileSync(options.tls.key)
              }
            }),
        ...(options.user === undefined
          ? {}
          : { auth: { username: options.user.name, password: Redacted.value(options.user.password) } })
      }
      return new Etcd3(config)
    }),
    (client) => Effect.sync(() => client.close())
  )

/** Runs a promise-returning etcd3 call; a rejection is a failure with the thrown value. */
export const call = <A>(f: () => Promise<A>): Effect.Effect<A, unknown> =>
  Effect.tryPromise({ try: f, catch: (error) => error })

/** Puts a key and returns the revision of the put. */
export const put = (client: Etcd3, key: string, value: string): Effect.Effect<number, unknown> =>
  Effect.map(
    call(() => client.put(key).value(value).exec()),
    (response) => Number(response.header.revision)
  )

/** Reads a key (null when absent). */
export const get = (client: Etcd3, key: string): Effect.Effect<string | null, unknown> =>
  call(() => client.get(key).string())

/** Whether a process with this pid exists (signal 0 probes without signalling). */
export const processExists = (pid: number): boolean => {
  try {
    process.kill(pid, 0)
    return true
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === "EPERM"
  }
}

/** The pids of the processes whose command line mentions `text` (Linux /proc). */
export const processesMentioning = (text: string): Effect.Effect<ReadonlyArray<number>> =>
  Effect.promise(async () => {
    const pids: Array<number> = []
    for (const entry of await FsP.readdir("/proc")) {
      if (!/^\d+$/.test(entry) || Number(entry) === process.pid) continue
      try {
        const cmdline = await FsP.readFile(Path.join("/proc", entry, "cmdline"), "utf8")
        if (cmdline.includes(text)) pids.push(Number(entry))
      } catch {
        // the process is gone
      }
    }
    return pids
  })

/** A directory of our own for the kit to create its temp dir in, removed with the scope. */
export const parentDirectory: Effect.Effect<string, never, Scope.Scope> = Effect.acquireRelease(
  Effect.promise(() => FsP.mkdtemp(Path.join(Os.tmpdir(), "effect-sd-etcd-test-"))),
  (dir) => Effect.promise(() => FsP.rm(dir, { recursive: true, force: true }))
)

/** The entries of a directory. */
export const entries = (dir: string): Effect.Effect<ReadonlyArray<string>> => Effect.promise(() => FsP.readdir(dir))

/** Waits on the subscribable's changes (never on a sleep) until `predicate` holds; 10 s of real time at most. */
export const waitFor = <A>(subscribable: Subscribable.Subscribable<A>, predicate: (a: A) => boolean, what: string) =>
  TestServices.provideWithLive(
    Effect.flatMap(Stream.runHead(Stream.filter(subscribable.changes, predicate)), (a) =>
      Option.isSome(a) ? Effect.succeed(a.value) : Effect.dieMessage(`changes ended before ${what}`)
    ),
    (effect) =>
      Effect.timeoutFail(effect, { duration: "10 seconds", onTimeout: () => new Error(`timed out: ${what}`) }).pipe(
        Effect.orDie
      )
  )

/** A port nobody listens on: one bound, then closed. */
export const closedPort = Effect.promise(
  () =>
    new Promise<number>((resolve) => {
      const server = Net.createServer()
      server.listen(0, "127.0.0.1", () => {
        const address = server.address()
        server.close(() => resolve(typeof address === "object" && address !== null ? address.port : 0))
      })
    })
)
