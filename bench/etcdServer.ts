/**
 * The benchmark's etcd, from the test kit (`effect-sd-etcd/testing`): a
 * single node on free loopback ports with a temporary data dir, stopped by its
 * own pid when the benchmark ends.
 *
 * The data dir goes to /dev/shm when it exists (BENCH_ETCD_DIR overrides):
 * the benchmark compares two clients, and a disk's fsync latency would add the
 * same noisy milliseconds to both sides.
 */
import * as Fs from "node:fs"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Option from "effect/Option"
import * as Scope from "effect/Scope"
import * as EtcdServer from "../src/testing/EtcdServer.js"

export interface BenchEtcd {
  readonly endpoint: string
  readonly pid: number
  readonly version: string
  readonly directory: string
  readonly stop: () => Promise<void>
}

export const startEtcd = async (): Promise<BenchEtcd> => {
  const directory = process.env["BENCH_ETCD_DIR"] ?? (Fs.existsSync("/dev/shm") ? "/dev/shm" : undefined)
  const scope = Effect.runSync(Scope.make())
  const server = await Effect.runPromise(
    Scope.extend(EtcdServer.make({ logLevel: "error", directory }), scope).pipe(
      Effect.tapErrorCause(() => Scope.close(scope, Exit.void))
    )
  )
  const endpoint = server.clientUrls[0]!
  const pid = Option.getOrElse(await Effect.runPromise(server.pid), () => -1)
  const version = ((await (await fetch(`${endpoint}/version`)).json()) as { etcdserver: string }).etcdserver
  return {
    endpoint,
    pid,
    version,
    directory: server.directory,
    stop: () => Effect.runPromise(Scope.close(scope, Exit.void))
  }
}
