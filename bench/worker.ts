/**
 * A worker process of the benchmark, forked by bench/run.ts. Its role (the
 * first argument) is `sub` (a subscriber), `reg` (a registrar), `writer` or
 * `micro`; `setup` says which side (`ours`, `raw`, `floor`) it runs.
 */
import type { Etcd3 } from "etcd3"
import * as Fs from "node:fs"
import * as Inspector from "node:inspector"
import * as Path from "node:path"
import { serve, now } from "./ipc.js"
import type { RegistrarSide, SideOptions, SubscriberSide } from "./side.js"
import { cpuMicros, GcCounter, mainThreadCpuMicros, Tracker, untilIdle } from "./view.js"
import type { ViewSnapshot } from "./view.js"
import type { Op } from "./writer.js"
import { instance, keyOf } from "./keys.js"
import { churn, deletePrefix, pool, populate, sequence } from "./writer.js"

type Side = "ours" | "raw" | "floor"

const gc = (): void => {
  const f = (globalThis as { gc?: () => void }).gc
  if (f === undefined) throw new Error("run with --expose-gc")
  f()
  f()
}

let subscriberSide: SubscriberSide | undefined
let registrarSide: RegistrarSide | undefined
let writer: Etcd3 | undefined
let tracker = new Tracker()
let stopSubscriber: (() => Promise<void>) | undefined
const waits = new Map<number, Promise<bigint>>()
let nextWait = 0
let eachWait: Promise<ReadonlyArray<bigint>> | undefined
const gcCounter = new GcCounter()
let setWait: { readonly at: Promise<bigint>; readonly cpu0: number; readonly main0: number | undefined } | undefined
const registered: Array<string> = []

/**
 * BENCH_CPU_PROF_WINDOWS (a directory): a subscriber profiles each churn window
 * alone, from arming the set wait until 50 ms after its view is complete (the
 * sampler, every 50 µs, would keep the process from idling), into one
 * `.cpuprofile` per window (`--cpu-prof` would also hold the start-up and the
 * initial sync). BENCH_HEAP_PROF_WINDOWS (a directory): the same windows'
 * allocations instead, sampled every 256 bytes by V8's sampling heap profiler
 * with the objects that garbage collections took included, one `.heapprofile`
 * per window (what a window allocates, by call stack, collected or not). With
 * BENCH_HEAP_PROF_SURVIVORS=1 as well, only what young collections left over
 * (promoted or still alive at the window's end): the objects that make
 * scavenges slow.
 */
const cpuWindowDir = process.env["BENCH_CPU_PROF_WINDOWS"]
const heapWindowDir = process.env["BENCH_HEAP_PROF_WINDOWS"]
const windowDir = cpuWindowDir ?? heapWindowDir
let inspector: Inspector.Session | undefined
let windows = 0
let sideName = ""
const post = (method: string, params?: object): Promise<unknown> =>
  new Promise((resolve, reject) =>
    need(inspector, "inspector session").post(method, params, (error, result) =>
      error === null ? resolve(result) : reject(error)
    )
  )
const startWindow = async (): Promise<void> => {
  if (windowDir === undefined) return
  if (inspector === undefined) {
    inspector = new Inspector.Session()
    inspector.connect()
    if (cpuWindowDir !== undefined) {
      await post("Profiler.enable")
      // a window is a few tens of ms of CPU: sample every 50 µs, not every 1 ms
      await post("Profiler.setSamplingInterval", { interval: 50 })
    }
  }
  if (cpuWindowDir !== undefined) await post("Profiler.start")
  else {
    await post("HeapProfiler.startSampling", {
      samplingInterval: 256,
      includeObjectsCollectedByMajorGC: true,
      includeObjectsCollectedByMinorGC: process.env["BENCH_HEAP_PROF_SURVIVORS"] !== "1"
    })
  }
}
const stopWindow = async (windowDir: string): Promise<void> => {
  const file = Path.join(windowDir, `${sideName}-${process.pid}-${windows++}`)
  Fs.mkdirSync(windowDir, { recursive: true })
  if (cpuWindowDir !== undefined) {
    const { profile } = (await post("Profiler.stop")) as { readonly profile: unknown }
    Fs.writeFileSync(`${file}.cpuprofile`, JSON.stringify(profile))
  } else {
    const { profile } = (await post("HeapProfiler.getSamplingProfile")) as { readonly profile: unknown }
    await post("HeapProfiler.stopSampling")
    Fs.writeFileSync(`${file}.heapprofile`, JSON.stringify(profile))
  }
}

const need = <A>(a: A | undefined, what: string): A => {
  if (a === undefined) throw new Error(`no ${what} in this worker`)
  return a
}

serve({
  setup: async (args: { readonly side: Side; readonly options: SideOptions }) => {
    const role = process.argv[2]
    sideName = args.side
    if (role === "sub") {
      const m = args.side === "ours" ? await import("./oursSide.js") : await import("./rawSide.js")
      subscriberSide = await m.subscriber(args.options)
    } else if (role === "reg") {
      if (args.side === "ours") registrarSide = await (await import("./oursSide.js")).registrar(args.options)
      else if (args.side === "raw") registrarSide = await (await import("./rawSide.js")).registrar(args.options)
      else registrarSide = await (await import("./rawSide.js")).floor(args.options)
    } else if (role === "writer") {
      const { rawClient } = await import("./raw.js")
      writer = rawClient(args.options.endpoint)
      await writer.maintenance.status()
    }
    return process.pid
  },

  // ---- subscriber ----

  /** Starts a subscriber and waits until its view holds `n` instances; returns how long that took (ns). */
  sync: async (args: { readonly prefix: string; readonly n: number }) => {
    const side = need(subscriberSide, "subscriber")
    if (stopSubscriber !== undefined) throw new Error("already subscribed")
    tracker = new Tracker()
    const t0 = now()
    stopSubscriber = await side.subscribe(args.prefix, tracker)
    const t1 = await tracker.until((v) => v.size >= args.n)
    return t1 - t0
  },
  unsubscribe: async () => {
    const stop = need(stopSubscriber, "subscription")
    stopSubscriber = undefined
    await stop()
  },
  /** Arms a wait for an instance to be present / absent; answers at once with the wait's id. */
  arm: (args: { readonly instance: string; readonly present: boolean }) => {
    const id = nextWait++
    const test = args.present ? (v: ViewSnapshot) => v.has(args.instance) : (v: ViewSnapshot) => !v.has(args.instance)
    waits.set(id, tracker.until(test))
    return id
  },
  /** Arms a wait for `values` to appear one after another; answers at once. */
  armEach: (args: { readonly values: ReadonlyArray<string> }) => {
    eachWait = tracker.untilEach(args.values)
    return args.values.length
  },
  /** Waits for the armed sequence; returns when each value first appeared. */
  waitEach: async () => {
    const w = need(eachWait, "armed sequence")
    eachWait = undefined
    return w
  },
  /** Waits for an armed wait; returns when the view first satisfied it. */
  wait: async (args: { readonly id: number }) => {
    const w = need(waits.get(args.id), `wait ${args.id}`)
    waits.delete(args.id)
    return w
  },
  /**
   * Arms a wait for the view to equal `values` (`newcomers` among them), waits
   * until the process is idle, and reads the CPU clocks.
   *
   * No garbage is collected by force here: a forced full collection makes V8
   * throw away optimized code, so every window then paid ~20 to 30 ms of
   * TurboFan compilation on V8's threads (both sides; `--trace-opt` counted
   * 20 to 50 functions recompiled per window), which is no production
   * subscriber's steady state. The warm-up rounds before the measured ones
   * collect the earlier phases' garbage and let compilation settle.
   */
  armSet: async (args: { readonly values: ReadonlyArray<string>; readonly newcomers: ReadonlyArray<string> }) => {
    const at = tracker.untilSet(new Set(args.values), args.newcomers)
    await untilIdle()
    await startWindow()
    gcCounter.reset()
    setWait = { at, cpu0: cpuMicros(), main0: mainThreadCpuMicros() }
    return tracker.size
  },
  /**
   * When the view first equaled the armed set, the CPU used from arming until
   * idle again (µs: the process's, and its main thread's), and the garbage
   * collections meanwhile.
   */
  waitSet: async () => {
    const w = need(setWait, "armed set")
    setWait = undefined
    const at = await w.at
    // a profile stops 50 ms after the view is complete: its sampler would keep the process from idling
    if (windowDir !== undefined) {
      await new Promise((resolve) => setTimeout(resolve, 50))
      await stopWindow(windowDir)
    }
    const idle = await untilIdle()
    const main1 = mainThreadCpuMicros()
    const mainMicros = main1 === undefined || w.main0 === undefined ? undefined : main1 - w.main0
    return {
      at,
      cpuMicros: idle - w.cpu0,
      mainMicros,
      gc: gcCounter.read(),
      views: tracker.views,
      exact: tracker.verifySet()
    }
  },
  heapUsed: () => {
    gc()
    return process.memoryUsage().heapUsed
  },

  // ---- registrar ----

  /** Registers one instance; returns the times just before and just after. */
  register: async (args: { readonly key: string; readonly value: string }) => {
    const side = need(registrarSide, "registrar")
    const t0 = now()
    await side.register(args.key, args.value)
    return [t0, now()]
  },
  deregister: async (args: { readonly key: string }) => {
    const side = need(registrarSide, "registrar")
    const t0 = now()
    await side.deregister(args.key)
    return [t0, now()]
  },
  /** Registers instances `from` .. `from + n - 1` under `prefix`, `concurrency` at a time. */
  registerMany: async (args: {
    readonly prefix: string
    readonly from: number
    readonly n: number
    readonly concurrency: number
  }) => {
    const side = need(registrarSide, "registrar")
    await pool(args.concurrency, args.n, async (i) => {
      const value = instance(args.from + i)
      const key = keyOf(args.prefix, value)
      await side.register(key, value)
      registered.push(key)
    })
  },
  deregisterAll: async (args: { readonly concurrency: number }) => {
    const side = need(registrarSide, "registrar")
    const keys = registered.splice(0)
    await pool(args.concurrency, keys.length, (i) => side.deregister(keys[i]!))
  },
  cpu: () => cpuMicros(),

  // ---- writer ----

  populate: async (args: { readonly prefix: string; readonly from: number; readonly n: number }) => {
    await populate(need(writer, "writer"), args.prefix, args.from, args.n)
  },
  /** Plays a churn; returns the time just before its first request. */
  churn: async (args: { readonly ops: ReadonlyArray<Op>; readonly inflight: number }) => {
    const t0 = now()
    await churn(need(writer, "writer"), args.ops, args.inflight)
    return t0
  },
  /** Puts `values` under `prefix` one after another; returns the time just before each put. */
  sequence: (args: { readonly prefix: string; readonly values: ReadonlyArray<string> }) =>
    sequence(need(writer, "writer"), args.prefix, args.values),
  deletePrefix: async (args: { readonly prefix: string }) => {
    await deletePrefix(need(writer, "writer"), args.prefix)
  },

  // ---- micro benchmarks ----

  micro: async (args: { readonly picks: number; readonly calls: number }) => {
    const { runMicro } = await import("./micro.js")
    return runMicro(args)
  },

  shutdown: async () => {
    if (stopSubscriber !== undefined) await stopSubscriber().catch(() => undefined)
    await subscriberSide?.close().catch(() => undefined)
    await registrarSide?.close().catch(() => undefined)
    writer?.close()
    setImmediate(() => process.exit(0))
  }
})
