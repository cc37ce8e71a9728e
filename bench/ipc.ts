/**
 * Process plumbing of the benchmark: the parent forks worker processes (node +
 * tsx) and calls them over IPC; each call is answered once. Timestamps that
 * cross processes are `process.hrtime.bigint()` readings: on Linux that is
 * CLOCK_MONOTONIC, one clock for every process of the machine.
 */
import { fork, type ChildProcess } from "node:child_process"
import { fileURLToPath } from "node:url"

/** A monotonic timestamp in nanoseconds, comparable across processes of this machine. */
export const now = (): bigint => process.hrtime.bigint()

interface Request {
  readonly id: number
  readonly command: string
  readonly args: unknown
}

type Response =
  | { readonly id: number; readonly ok: true; readonly value: unknown }
  | { readonly id: number; readonly ok: false; readonly error: string }

/** A forked worker process (bench/worker.ts) and the calls in flight to it. */
export class Worker {
  private nextId = 0
  private readonly pending = new Map<number, { resolve: (v: unknown) => void; reject: (e: Error) => void }>()
  private exited: string | undefined

  private constructor(
    readonly name: string,
    readonly child: ChildProcess
  ) {
    child.on("message", (message: Response) => {
      const p = this.pending.get(message.id)
      if (p === undefined) return
      this.pending.delete(message.id)
      if (message.ok) p.resolve(message.value)
      else p.reject(new Error(`${this.name}: ${message.error}`))
    })
    child.on("exit", (code, signal) => {
      this.exited = `exited with ${signal ?? code}`
      for (const p of this.pending.values()) p.reject(new Error(`${this.name} ${this.exited}`))
      this.pending.clear()
    })
  }

  /** Forks `bench/worker.ts` as `name`, running `role` with the given setup arguments. */
  static async start(
    name: string,
    role: string,
    setup: unknown,
    execArgv: ReadonlyArray<string> = []
  ): Promise<Worker> {
    const child = fork(fileURLToPath(new URL("./worker.ts", import.meta.url)), [role], {
      execArgv: ["--import", "tsx", "--expose-gc", ...execArgv],
      serialization: "advanced",
      stdio: ["ignore", "inherit", "inherit", "ipc"]
    })
    const worker = new Worker(name, child)
    await worker.call("setup", setup)
    return worker
  }

  get pid(): number {
    return this.child.pid ?? -1
  }

  /** Calls `command` in the worker and waits for its answer. */
  call<A = unknown>(command: string, args?: unknown): Promise<A> {
    if (this.exited !== undefined) return Promise.reject(new Error(`${this.name} ${this.exited}`))
    const id = this.nextId++
    return new Promise<A>((resolve, reject) => {
      this.pending.set(id, { resolve: resolve as (v: unknown) => void, reject })
      this.child.send({ id, command, args } satisfies Request)
    })
  }

  /** Asks the worker to shut down, then kills it by its pid if it has not exited within `graceMillis`. */
  async stop(graceMillis = 5000): Promise<void> {
    if (this.exited !== undefined) return
    const exited = new Promise<void>((resolve) => this.child.once("exit", () => resolve()))
    this.call("shutdown").catch(() => undefined)
    const timer = setTimeout(() => {
      if (this.exited === undefined && this.child.pid !== undefined) process.kill(this.child.pid, "SIGKILL")
    }, graceMillis)
    await exited
    clearTimeout(timer)
  }
}

/** Worker side: answers the parent's calls with `handlers`. */
export const serve = (handlers: Record<string, (args: never) => unknown>): void => {
  process.on("message", (message: Request) => {
    const handler = handlers[message.command]
    const reply = (r: Response) => process.send?.(r)
    if (handler === undefined) {
      reply({ id: message.id, ok: false, error: `unknown command ${message.command}` })
      return
    }
    Promise.resolve()
      .then(() => handler(message.args as never))
      .then(
        (value) => reply({ id: message.id, ok: true, value }),
        (error: unknown) =>
          reply({
            id: message.id,
            ok: false,
            error: error instanceof Error ? (error.stack ?? error.message) : String(error)
          })
      )
  })
  process.on("disconnect", () => process.exit(0))
}
