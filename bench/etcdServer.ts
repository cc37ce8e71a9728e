/**
 * A private etcd for the benchmark, until the test kit lands: a temporary
 * data directory, free loopback ports, killed by its own pid.
 */
import { spawn } from "node:child_process"
import * as Fs from "node:fs"
import * as Net from "node:net"
import * as Os from "node:os"
import * as Path from "node:path"

export interface SpawnedEtcd {
  readonly endpoint: string
  readonly pid: number
  readonly version: string
  readonly stop: () => Promise<void>
}

const freePort = (): Promise<number> =>
  new Promise((resolve, reject) => {
    const server = Net.createServer()
    server.once("error", reject)
    server.listen(0, "127.0.0.1", () => {
      const address = server.address() as Net.AddressInfo
      server.close(() => resolve(address.port))
    })
  })

export const startEtcd = async (): Promise<SpawnedEtcd> => {
  const dir = Fs.mkdtempSync(Path.join(Os.tmpdir(), "bench-etcd-"))
  const [client, peer] = [await freePort(), await freePort()]
  const endpoint = `http://127.0.0.1:${client}`
  const peerUrl = `http://127.0.0.1:${peer}`
  const log = Fs.openSync(Path.join(dir, "etcd.log"), "a")
  const child = spawn(
    process.env["ETCD_BIN"] ?? "etcd",
    [
      "--name=bench",
      `--data-dir=${Path.join(dir, "data")}`,
      `--listen-client-urls=${endpoint}`,
      `--advertise-client-urls=${endpoint}`,
      `--listen-peer-urls=${peerUrl}`,
      `--initial-advertise-peer-urls=${peerUrl}`,
      `--initial-cluster=bench=${peerUrl}`,
      "--log-level=error"
    ],
    { stdio: ["ignore", log, log] }
  )
  const exited = new Promise<void>((resolve) => child.once("exit", () => resolve()))
  const stop = async () => {
    if (child.exitCode === null && child.signalCode === null && child.pid !== undefined) {
      process.kill(child.pid, "SIGTERM")
      await exited
    }
    Fs.closeSync(log)
    Fs.rmSync(dir, { recursive: true, force: true })
  }
  const deadline = Date.now() + 20_000
  for (;;) {
    if (child.exitCode !== null) {
      const tail = Fs.readFileSync(Path.join(dir, "etcd.log"), "utf8").slice(-2000)
      await stop()
      throw new Error(`etcd exited with ${child.exitCode}: ${tail}`)
    }
    const healthy = await fetch(`${endpoint}/health`)
      .then((r) => r.ok)
      .catch(() => false)
    if (healthy) break
    if (Date.now() > deadline) {
      await stop()
      throw new Error("etcd did not become healthy within 20 s")
    }
    await new Promise((resolve) => setTimeout(resolve, 100))
  }
  const version = ((await (await fetch(`${endpoint}/version`)).json()) as { etcdserver: string }).etcdserver
  return { endpoint, pid: child.pid ?? -1, version, stop }
}
