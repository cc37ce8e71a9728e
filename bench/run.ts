/**
 * `npm run bench`: effect-sd-etcd against the raw etcd3 client doing the same
 * work, in one run, on an etcd spawned for the purpose. Prints a table of
 * medians and ratios (ours / raw) and writes bench/results/latest.json.
 *
 * Sizes come from the environment (defaults are the sizes):
 * BENCH_SAMPLES (200), BENCH_CHURN_N (1000,10000), BENCH_CHURN_OPS (500),
 * BENCH_CHURN_INFLIGHT (16), BENCH_CHURN_ROUNDS (10), BENCH_CHURN_WARMUP (60), BENCH_SYNC_N
 * (10000,100000), BENCH_SYNC_ROUNDS (5), BENCH_MEM_N (100000),
 * BENCH_MEM_ROUNDS (2), BENCH_KEEPALIVE_N (1000), BENCH_KEEPALIVE_SECONDS (30),
 * BENCH_MICRO_PICKS (1000000), BENCH_MICRO_CALLS (20000),
 * BENCH_ONLY (scenario numbers, e.g. `1,3`), BENCH_OUT (results file),
 * BENCH_CPU_PROF (worker names such as `sub-ours,reg-ours`, or `all`: run them
 * with `--cpu-prof`, profiles in bench/results/profiles/), BENCH_CPU_PROF_WINDOWS
 * (a directory: each churn window of each subscriber profiled alone),
 * BENCH_HEAP_PROF_WINDOWS (a directory: each such window's allocations, sampled;
 * with BENCH_HEAP_PROF_SURVIVORS=1, only what young collections did not free),
 * BENCH_SUB_V8_FLAGS (V8 flags for the subscriber workers, e.g. `--trace-gc-nvp`:
 * each garbage collection's phases, what it copied and promoted, on stdout).
 */
import { execFileSync } from "node:child_process"
import * as Fs from "node:fs"
import * as Os from "node:os"
import * as Path from "node:path"
import { fileURLToPath } from "node:url"
import { startEtcd } from "./etcdServer.js"
import { Worker } from "./ipc.js"
import { instance, keyOf } from "./keys.js"
import type { SideOptions } from "./side.js"
import { mean, median, percentile, row, table, type Row } from "./stats.js"
import type { GcWindow } from "./view.js"
import type { Op } from "./writer.js"

// ---- configuration ----

const nonNegativeInt = (name: string, v: string): number => {
  const n = Number(v)
  if (v === "" || !Number.isInteger(n) || n < 0) throw new Error(`${name} must be a non-negative integer, got ${v}`)
  return n
}
const int = (name: string, fallback: number): number => {
  const v = process.env[name]
  return v === undefined || v === "" ? fallback : nonNegativeInt(name, v.trim())
}
/** A comma-separated list of integers, e.g. BENCH_CHURN_N=1000,10000. */
const ints = (name: string, fallback: ReadonlyArray<number>): ReadonlyArray<number> => {
  const v = process.env[name]
  return v === undefined || v === "" ? fallback : v.split(",").map((s) => nonNegativeInt(name, s.trim()))
}

const config = {
  samples: int("BENCH_SAMPLES", 200),
  warmup: int("BENCH_WARMUP", 20),
  churnSizes: ints("BENCH_CHURN_N", [1000, 10000]),
  churnOps: int("BENCH_CHURN_OPS", 500),
  churnInflight: int("BENCH_CHURN_INFLIGHT", 16),
  churnRounds: int("BENCH_CHURN_ROUNDS", 10),
  // V8 went on compiling (Node's timers, our batch path) into round 50-odd of N = 1,000: one to
  // two functions per round, 1-27 ms each on its compiler threads, counted in that round's CPU
  // (--trace-opt per round, bench/NOTES.md); from about round 57 on, one every 5-10 rounds
  churnWarmup: int("BENCH_CHURN_WARMUP", 60),
  syncSizes: ints("BENCH_SYNC_N", [10000, 100000]),
  syncRounds: int("BENCH_SYNC_ROUNDS", 5),
  memN: int("BENCH_MEM_N", 100000),
  memRounds: int("BENCH_MEM_ROUNDS", 2),
  keepAliveN: int("BENCH_KEEPALIVE_N", 1000),
  keepAliveSeconds: int("BENCH_KEEPALIVE_SECONDS", 30),
  microPicks: int("BENCH_MICRO_PICKS", 1_000_000),
  microCalls: int("BENCH_MICRO_CALLS", 20_000),
  ttlSeconds: 10,
  heartbeatMillis: 3000
}
const only = new Set((process.env["BENCH_ONLY"] ?? "1,2,3,4,5,6,7").split(",").map((s) => s.trim()))
const out =
  process.env["BENCH_OUT"] ?? Path.join(Path.dirname(fileURLToPath(import.meta.url)), "results", "latest.json")

// ---- helpers ----

const rows: Array<Row> = []
const record = (r: Row) => {
  rows.push(r)
  const extra = r.extra === undefined ? "" : `  ${JSON.stringify(r.extra)}`
  console.log(
    `  ${r.scenario}: ours ${r.ours.toPrecision(4)} ${r.unit}, raw ${r.raw.toPrecision(4)} ${r.unit}, ratio ${r.ratio.toFixed(3)}${
      r.met === undefined ? "" : r.met ? " (bar met)" : " (BAR MISSED)"
    }${extra}`
  )
}

const profiled = new Set((process.env["BENCH_CPU_PROF"] ?? "").split(",").filter((s) => s.length > 0))
const profileDir = Path.join(Path.dirname(out), "profiles")
/** BENCH_SUB_V8_FLAGS for the subscribers, `--cpu-prof` for the workers named in BENCH_CPU_PROF (`all` for every one). */
const subscriberV8Flags = (process.env["BENCH_SUB_V8_FLAGS"] ?? "").split(" ").filter((s) => s.length > 0)
const execArgv = (name: string): ReadonlyArray<string> => [
  ...(name.startsWith("sub-") ? subscriberV8Flags : []),
  ...(profiled.has(name) || profiled.has("all") ? ["--cpu-prof", `--cpu-prof-dir=${Path.join(profileDir, name)}`] : [])
]

const workers = new Set<Worker>()
const startWorker = async (name: string, role: string, side: string, options: SideOptions): Promise<Worker> => {
  const w = await Worker.start(name, role, { side, options }, execArgv(name))
  workers.add(w)
  return w
}
const stopWorker = async (w: Worker) => {
  workers.delete(w)
  // writing a profile takes a while
  await w.stop(profiled.has(w.name) || profiled.has("all") ? 60_000 : 5000)
}

const ms = (ns: bigint | number): number => Number(ns) / 1e6
const sleep = (millis: number) => new Promise<void>((resolve) => setTimeout(resolve, millis))

/** A deterministic PRNG (mulberry32), so that every run plays the same churn. */
const prng = (seed: number) => () => {
  seed = (seed + 0x6d2b79f5) | 0
  let t = Math.imul(seed ^ (seed >>> 15), 1 | seed)
  t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t
  return ((t ^ (t >>> 14)) >>> 0) / 4294967296
}

type SideName = "ours" | "raw"
const sides: ReadonlyArray<SideName> = ["ours", "raw"]
/** Alternates which side goes first, round by round. */
const order = <A>(items: ReadonlyArray<A>, round: number): ReadonlyArray<A> => {
  const k = round % items.length
  return [...items.slice(k), ...items.slice(0, k)]
}

// ---- scenarios ----

/** 1 + 2: register → visible and deregister → gone, in another process. */
const registration = async (options: SideOptions, writer: Worker) => {
  console.log(`\n1 + 2. register → visible / deregister → gone, ${config.samples} samples (+${config.warmup} warm-up)`)
  // `floor`: a plain put / delete (no lease) seen by the raw subscriber; `oursReg`: our registrar seen by the
  // raw subscriber, which tells the registrar's share of the difference from the subscriber's
  const variants = ["ours", "raw", "floor", "oursReg"] as const
  const prefix = (v: string) => `/bench/registration/${v}/`
  const subs = new Map<string, Worker>()
  const regs = new Map<string, Worker>()
  for (const v of variants) {
    subs.set(v, await startWorker(`sub-${v}`, "sub", v === "ours" ? "ours" : "raw", options))
    regs.set(v, await startWorker(`reg-${v}`, "reg", v === "oursReg" ? "ours" : v, options))
    await subs.get(v)!.call("sync", { prefix: prefix(v), n: 0 })
  }
  const up = new Map<string, Array<number>>(variants.map((v) => [v, []]))
  const down = new Map<string, Array<number>>(variants.map((v) => [v, []]))
  // how long the register / deregister call itself took, to tell the registrar's share from the subscriber's
  const upCall = new Map<string, Array<number>>(variants.map((v) => [v, []]))
  const downCall = new Map<string, Array<number>>(variants.map((v) => [v, []]))
  for (let i = 0; i < config.warmup + config.samples; i++) {
    for (const v of order(variants, i)) {
      const sub = subs.get(v)!
      const reg = regs.get(v)!
      const value = instance(i)
      const key = keyOf(prefix(v), value)
      const seen = await sub.call<number>("arm", { instance: value, present: true })
      const [t0, t0done] = await reg.call<[bigint, bigint]>("register", { key, value })
      const t1 = await sub.call<bigint>("wait", { id: seen })
      const gone = await sub.call<number>("arm", { instance: value, present: false })
      const [t2, t2done] = await reg.call<[bigint, bigint]>("deregister", { key })
      const t3 = await sub.call<bigint>("wait", { id: gone })
      if (i >= config.warmup) {
        up.get(v)!.push(ms(t1 - t0))
        down.get(v)!.push(ms(t3 - t2))
        upCall.get(v)!.push(ms(t0done - t0))
        downCall.get(v)!.push(ms(t2done - t2))
      }
    }
  }
  for (const [n, what, data, calls] of [
    [1, "register → visible", up, upCall],
    [2, "deregister → gone", down, downCall]
  ] as const) {
    for (const [p, bar] of [
      [50, 1.15],
      [99, 1.3]
    ] as const) {
      record(
        row({
          scenario: `${n}. ${what}, p${p}`,
          ours: percentile(data.get("ours")!, p),
          raw: percentile(data.get("raw")!, p),
          unit: "ms",
          bar,
          samples: config.samples,
          extra: {
            floor: percentile(data.get("floor")!, p),
            oursOverFloor: percentile(data.get("ours")!, p) / percentile(data.get("floor")!, p),
            rawOverFloor: percentile(data.get("raw")!, p) / percentile(data.get("floor")!, p),
            oursRegistrarRawSubscriber: percentile(data.get("oursReg")!, p),
            oursCall: percentile(calls.get("ours")!, p),
            rawCall: percentile(calls.get("raw")!, p)
          }
        })
      )
    }
  }
  for (const w of [...subs.values(), ...regs.values()]) await stopWorker(w)
  await writer.call("deletePrefix", { prefix: "/bench/registration/" })
}

/**
 * 1, beside: puts one after another (each sent once the last is answered) →
 * visible in a subscriber in another process. Changes that come one at a time
 * but close together; no bar (the issue sets none), here to catch a subscriber
 * that holds such changes back.
 */
const backToBack = async (options: SideOptions, writer: Worker) => {
  const rounds = 4
  const perRound = Math.ceil(config.samples / rounds)
  console.log(`\n1. back-to-back puts → visible: ${rounds} rounds of ${perRound} puts per side (+1 warm-up round)`)
  const prefix = (s: SideName) => `/bench/back-to-back/${s}/`
  const subs = new Map<SideName, Worker>()
  for (const s of sides) {
    const w = await startWorker(`sub-${s}`, "sub", s, options)
    subs.set(s, w)
    await w.call("sync", { prefix: prefix(s), n: 0 })
  }
  const latencies = new Map<SideName, Array<number>>(sides.map((s) => [s, []]))
  let next = 0
  for (let round = 0; round <= rounds; round++) {
    for (const s of order(sides, round)) {
      const sub = subs.get(s)!
      const values = Array.from({ length: perRound }, () => instance(next++))
      await sub.call("armEach", { values })
      const sent = await writer.call<Array<bigint>>("sequence", { prefix: prefix(s), values })
      const seen = await sub.call<Array<bigint>>("waitEach")
      if (round > 0) for (let i = 0; i < values.length; i++) latencies.get(s)!.push(ms(seen[i]! - sent[i]!))
    }
  }
  for (const s of sides) await stopWorker(subs.get(s)!)
  await writer.call("deletePrefix", { prefix: "/bench/back-to-back/" })
  const ours = latencies.get("ours")!
  const raw = latencies.get("raw")!
  record(
    row({
      scenario: "1. back-to-back puts → visible, p50",
      ours: percentile(ours, 50),
      raw: percentile(raw, 50),
      unit: "ms",
      samples: ours.length,
      extra: { oursP90: percentile(ours, 90), rawP90: percentile(raw, 90) }
    })
  )
}

/** 3: churn under N present instances. */
const churn = async (options: SideOptions, writer: Worker) => {
  const cpuBy = new Map<string, number>()
  for (const n of config.churnSizes) {
    console.log(
      `\n3. churn: N = ${n}, ${config.churnOps} puts + deletes, ${config.churnInflight} in flight, ${config.churnRounds} rounds (+${config.churnWarmup} warm-up)`
    )
    const prefix = (s: SideName) => `/bench/churn/${n}/${s}/`
    let current: Array<string> = []
    for (let i = 0; i < n; i++) current.push(instance(i))
    let next = n
    const subs = new Map<SideName, Worker>()
    for (const s of sides) {
      await writer.call("populate", { prefix: prefix(s), from: 0, n })
      const w = await startWorker(`sub-${s}`, "sub", s, options)
      subs.set(s, w)
      await w.call("sync", { prefix: prefix(s), n })
    }
    const random = prng(n)
    const times = new Map<SideName, Array<number>>(sides.map((s) => [s, []]))
    const cpus = new Map<SideName, Array<number>>(sides.map((s) => [s, []]))
    // the main thread's share (JavaScript; the rest is V8's garbage collection and compilation threads)
    const mains = new Map<SideName, Array<number>>(sides.map((s) => [s, []]))
    // the garbage collections in each window
    const gcs = new Map<SideName, Array<GcWindow>>(sides.map((s) => [s, []]))
    // how many views each subscriber published in a window (ours: endpoint sets; raw: watch responses)
    const views = new Map<SideName, Array<number>>(sides.map((s) => [s, []]))
    for (let round = 0; round < config.churnWarmup + config.churnRounds; round++) {
      // half puts of new instances, half deletes of present ones, interleaved
      const deleted = new Set<string>()
      const plan: Array<{ readonly put: boolean; readonly value: string }> = []
      for (let k = 0; k < config.churnOps; k++) {
        if (k % 2 === 0) {
          plan.push({ put: true, value: instance(next++) })
        } else {
          let victim: string
          do victim = current[Math.floor(random() * current.length)]!
          while (deleted.has(victim))
          deleted.add(victim)
          plan.push({ put: false, value: victim })
        }
      }
      current = current.filter((v) => !deleted.has(v)).concat(plan.filter((p) => p.put).map((p) => p.value))
      for (const s of order(sides, round)) {
        const sub = subs.get(s)!
        const ops: Array<Op> = plan.map((p) => ({ put: p.put, key: keyOf(prefix(s), p.value), value: p.value }))
        await sub.call("armSet", { values: current, newcomers: plan.filter((p) => p.put).map((p) => p.value) })
        const t0 = await writer.call<bigint>("churn", { ops, inflight: config.churnInflight })
        const r = await sub.call<{
          at: bigint
          cpuMicros: number
          mainMicros?: number
          gc: GcWindow
          views: number
          exact: boolean
        }>("waitSet")
        if (!r.exact) throw new Error(`churn N=${n} ${s}: the final view is not the final set`)
        if (round >= config.churnWarmup) {
          times.get(s)!.push(ms(r.at - t0))
          cpus.get(s)!.push(r.cpuMicros / 1000)
          if (r.mainMicros !== undefined) mains.get(s)!.push(r.mainMicros / 1000)
          gcs.get(s)!.push(r.gc)
          views.get(s)!.push(r.views)
        }
      }
    }
    for (const s of sides) {
      await stopWorker(subs.get(s)!)
      cpuBy.set(`${s}:${n}`, median(cpus.get(s)!))
    }
    await writer.call("deletePrefix", { prefix: `/bench/churn/${n}/` })
    record(
      row({
        scenario: `3. churn N=${n}: time to final view`,
        ours: median(times.get("ours")!),
        raw: median(times.get("raw")!),
        unit: "ms",
        bar: 1.2,
        samples: config.churnRounds
      })
    )
    record(
      row({
        scenario: `3. churn N=${n}: subscriber CPU until idle`,
        ours: median(cpus.get("ours")!),
        raw: median(cpus.get("raw")!),
        unit: "ms",
        bar: 1.2,
        samples: config.churnRounds,
        extra: {
          ...(mains.get("ours")!.length > 0 && mains.get("raw")!.length > 0
            ? { oursMainThreadMs: median(mains.get("ours")!), rawMainThreadMs: median(mains.get("raw")!) }
            : {}),
          // per window: young collections (count, and their pauses' sum in ms) and the others' pauses
          oursScavenges: mean(gcs.get("ours")!.map((g) => g.young)),
          rawScavenges: mean(gcs.get("raw")!.map((g) => g.young)),
          oursScavengeMs: median(gcs.get("ours")!.map((g) => g.youngMs)),
          rawScavengeMs: median(gcs.get("raw")!.map((g) => g.youngMs)),
          oursOtherGcMs: median(gcs.get("ours")!.map((g) => g.otherMs)),
          rawOtherGcMs: median(gcs.get("raw")!.map((g) => g.otherMs)),
          oursViews: median(views.get("ours")!),
          rawViews: median(views.get("raw")!)
        }
      })
    )
  }
  const [small, large] = [config.churnSizes[0], config.churnSizes[config.churnSizes.length - 1]]
  if (small !== undefined && large !== undefined && large > small) {
    const growth = (s: SideName) => cpuBy.get(`${s}:${large}`)! / cpuBy.get(`${s}:${small}`)!
    record(
      row({
        scenario: `3. churn CPU growth, N=${large} / N=${small}`,
        ours: growth("ours"),
        raw: growth("raw"),
        unit: "×",
        // N grows 10×: per-change work must not (it would be ~10× if it were O(N) per change)
        bar: 2,
        barOn: "ours"
      })
    )
  }
}

/** 4: subscriber start → full view. */
const initialSync = async (options: SideOptions, writer: Worker) => {
  for (const n of config.syncSizes) {
    console.log(`\n4. initial sync of ${n} instances, ${config.syncRounds} rounds (+1 warm-up)`)
    const prefix = `/bench/sync/${n}/`
    await writer.call("populate", { prefix, from: 0, n })
    const subs = new Map<SideName, Worker>()
    for (const s of sides) subs.set(s, await startWorker(`sub-${s}`, "sub", s, options))
    const times = new Map<SideName, Array<number>>(sides.map((s) => [s, []]))
    const cold = new Map<SideName, number>()
    for (let round = 0; round <= config.syncRounds; round++) {
      for (const s of order(sides, round)) {
        const sub = subs.get(s)!
        await sub.call("heapUsed") // a collection now, not during the sync
        const t = ms(await sub.call<bigint>("sync", { prefix, n }))
        await sub.call("unsubscribe")
        if (round > 0) times.get(s)!.push(t)
        else cold.set(s, t)
      }
    }
    for (const s of sides) await stopWorker(subs.get(s)!)
    record(
      row({
        scenario: `4. initial sync, ${n} instances`,
        ours: median(times.get("ours")!),
        raw: median(times.get("raw")!),
        unit: "ms",
        bar: 1.3,
        samples: config.syncRounds,
        extra: { oursFirst: cold.get("ours")!, rawFirst: cold.get("raw")! }
      })
    )
  }
}

/** 5: heap per instance of a synced subscriber. */
const memory = async (options: SideOptions, writer: Worker) => {
  const n = config.memN
  console.log(`\n5. memory: heap per instance at ${n} instances, ${config.memRounds} fresh processes per side`)
  const prefix = `/bench/sync/${n}/`
  // scenario 4 leaves this prefix populated when it ran at this size
  if (!(only.has("4") && config.syncSizes.includes(n))) await writer.call("populate", { prefix, from: 0, n })
  const bytes = new Map<SideName, Array<number>>(sides.map((s) => [s, []]))
  const syncs = new Map<SideName, Array<number>>(sides.map((s) => [s, []]))
  for (let round = 0; round < config.memRounds; round++) {
    for (const s of order(sides, round)) {
      const sub = await startWorker(`sub-${s}`, "sub", s, options)
      const h0 = await sub.call<number>("heapUsed")
      syncs.get(s)!.push(ms(await sub.call<bigint>("sync", { prefix, n })))
      await sleep(200)
      const h1 = await sub.call<number>("heapUsed")
      bytes.get(s)!.push((h1 - h0) / n)
      await stopWorker(sub)
    }
  }
  record(
    row({
      scenario: `5. subscriber heap per instance, ${n} instances`,
      ours: median(bytes.get("ours")!),
      raw: median(bytes.get("raw")!),
      unit: "B",
      bar: 2,
      samples: config.memRounds,
      extra: { oursColdSyncMs: median(syncs.get("ours")!), rawColdSyncMs: median(syncs.get("raw")!) }
    })
  )
}

/** 6: balancer pick and retry overhead, in one process. */
const micro = async () => {
  console.log(`\n6. balancer: ${config.microPicks} picks, ${config.microCalls} retried calls`)
  const w = await Worker.start("micro", "micro", { side: "ours", options: {} }, execArgv("micro"))
  workers.add(w)
  const r = await w.call<{
    readonly pickNs: number
    readonly arrayPickNs: number
    readonly syncPickNs: number
    readonly voidLoopNs: number
    readonly whilePickNs: number
    readonly whileSyncPickNs: number
    readonly whileVoidNs: number
    readonly constantLoopNs: number
    readonly whileConstantNs: number
    readonly timeoutOverheadNs: number
    readonly plainPickNs: number
    readonly callNs: number
    readonly retriedCallNs: number
    readonly retryOverheadNs: number
    readonly syncEndpointCallNs: number
    readonly syncEndpointRetriedNs: number
    readonly asyncEndpointCallNs: number
    readonly asyncEndpointRetriedNs: number
    readonly plainCallNs: number
    readonly plainRetriedNs: number
    readonly plainRetryOverheadNs: number
  }>("micro", { picks: config.microPicks, calls: config.microCalls })
  await stopWorker(w)
  record(
    row({
      scenario: "6. round-robin pick, 100 endpoints",
      ours: r.pickNs,
      raw: r.plainPickNs,
      unit: "ns",
      bar: 150,
      barOn: "ours",
      extra: {
        oursOverArrayEffectNs: r.arrayPickNs,
        effectSyncPickFloorNs: r.syncPickNs,
        // the Effect.gen loop yielding Effect.void: what the loop costs without a pick
        genVoidLoopNs: r.voidLoopNs,
        oursPickOverVoidNs: r.pickNs - r.voidLoopNs,
        effectSyncPickOverVoidNs: r.syncPickNs - r.voidLoopNs,
        // the same picks driven by Effect.whileLoop
        whileLoopPickNs: r.whilePickNs,
        whileLoopSyncPickNs: r.whileSyncPickNs,
        whileLoopVoidNs: r.whileVoidNs,
        whileLoopPickOverVoidNs: r.whilePickNs - r.whileVoidNs,
        // the same loops yielding one constant Effect.succeed(endpoint), used as a pick is: all but the pick
        genConstantLoopNs: r.constantLoopNs,
        oursPickOverConstantNs: r.pickNs - r.constantLoopNs,
        whileLoopConstantNs: r.whileConstantNs,
        whileLoopPickOverConstantNs: r.whilePickNs - r.whileConstantNs
      }
    })
  )
  record(
    row({
      // endpoints that run (Effect.sync), as every real endpoint does, and as the plain side's promises do:
      // each attempt runs in a child fiber under the call's timer
      scenario: "6. retry(3, 1 s) overhead per successful call",
      ours: r.syncEndpointRetriedNs - r.syncEndpointCallNs,
      raw: r.plainRetryOverheadNs,
      unit: "ns",
      bar: 2000,
      barOn: "ours",
      extra: {
        oursSyncEndpointCallNs: r.syncEndpointCallNs,
        oursSyncEndpointRetriedCallNs: r.syncEndpointRetriedNs,
        // endpoints that answer with an already-completed Effect.succeed: nothing runs that a timeout
        // could stop, so the call needs no timer and no fiber (a fast path that real endpoints do not take)
        oursCompletedEndpointCallNs: r.callNs,
        oursCompletedEndpointRetriedCallNs: r.retriedCallNs,
        oursCompletedEndpointRetryOverheadNs: r.retryOverheadNs,
        // endpoints that answer after a resolved promise, as the plain side's: the attempt suspends, and
        // the call arms and clears its timer, as the plain retry does
        oursAsyncEndpointCallNs: r.asyncEndpointCallNs,
        oursAsyncEndpointRetriedCallNs: r.asyncEndpointRetriedNs,
        oursAsyncEndpointRetryOverheadNs: r.asyncEndpointRetriedNs - r.asyncEndpointCallNs,
        plainCallNs: r.plainCallNs,
        plainRetriedCallNs: r.plainRetriedNs,
        effectTimeoutOverheadNs: r.timeoutOverheadNs
      }
    })
  )
}

/** etcd's counters, summed by method. */
const metrics = async (endpoint: string) => {
  const text = await (await fetch(`${endpoint}/metrics`)).text()
  const sum = (name: string, method?: string) => {
    let total = 0
    for (const line of text.split("\n")) {
      if (!line.startsWith(name + "{") && !line.startsWith(name + " ")) continue
      if (method !== undefined && !line.includes(`grpc_method="${method}"`)) continue
      total += Number(line.slice(line.lastIndexOf(" ") + 1))
    }
    return total
  }
  return {
    received: sum("grpc_server_msg_received_total"),
    keepAlives: sum("grpc_server_msg_received_total", "LeaseKeepAlive"),
    started: sum("grpc_server_started_total"),
    etcdCpuSeconds: sum("process_cpu_seconds_total")
  }
}

/** 7: keeping N registrations alive. */
const keepAlive = async (options: SideOptions, endpoint: string) => {
  const n = config.keepAliveN
  const seconds = config.keepAliveSeconds
  console.log(`\n7. keep-alive: ${n} registrations in one process for ${seconds} s, each side in turn`)
  const result = new Map<SideName, { rps: number; keepAlives: number; streams: number; cpu: number; etcdCpu: number }>()
  for (const s of sides) {
    const w = await startWorker(`reg-${s}`, "reg", s, options)
    await w.call("registerMany", { prefix: `/bench/keepalive/${s}/`, from: 0, n, concurrency: 16 })
    await sleep(2000)
    const m0 = await metrics(endpoint)
    const c0 = await w.call<number>("cpu")
    await sleep(seconds * 1000)
    const c1 = await w.call<number>("cpu")
    const m1 = await metrics(endpoint)
    await w.call("deregisterAll", { concurrency: 16 })
    await stopWorker(w)
    result.set(s, {
      rps: (m1.received - m0.received) / seconds,
      keepAlives: (m1.keepAlives - m0.keepAlives) / seconds,
      streams: (m1.started - m0.started) / seconds,
      cpu: (c1 - c0) / 1000 / seconds,
      etcdCpu: ((m1.etcdCpuSeconds - m0.etcdCpuSeconds) * 1000) / seconds
    })
  }
  const ours = result.get("ours")!
  const raw = result.get("raw")!
  record(
    row({
      scenario: `7. keep-alive of ${n} registrations: etcd requests`,
      ours: ours.rps,
      raw: raw.rps,
      unit: "req/s",
      extra: {
        oursKeepAlivesPerS: ours.keepAlives,
        rawKeepAlivesPerS: raw.keepAlives,
        oursCallsOpenedPerS: ours.streams,
        rawCallsOpenedPerS: raw.streams
      }
    })
  )
  record(
    row({
      scenario: `7. keep-alive of ${n} registrations: registrar CPU`,
      ours: ours.cpu,
      raw: raw.cpu,
      unit: "ms/s",
      extra: { oursEtcdCpuMsPerS: ours.etcdCpu, rawEtcdCpuMsPerS: raw.etcdCpu }
    })
  )
}

// ---- main ----

const commit = (): string => {
  try {
    return execFileSync("git", ["rev-parse", "--short", "HEAD"], { encoding: "utf8" }).trim()
  } catch {
    return "unknown"
  }
}

const load = () =>
  Os.loadavg()
    .map((l) => l.toFixed(2))
    .join(" ")

const main = async () => {
  const started = Date.now()
  const loadAtStart = load()
  console.log(
    `effect-sd-etcd benchmark at ${commit()} — ${Os.cpus().length} cores, node ${process.version}, load ${loadAtStart}`
  )
  const etcd = await startEtcd()
  console.log(`etcd ${etcd.version} at ${etcd.endpoint} (pid ${etcd.pid}, data in ${etcd.directory})`)
  const options: SideOptions = {
    endpoint: etcd.endpoint,
    ttlSeconds: config.ttlSeconds,
    heartbeatMillis: config.heartbeatMillis
  }
  const stopAll = async () => {
    for (const w of [...workers]) await stopWorker(w).catch(() => undefined)
    await etcd.stop()
  }
  const onSignal = () => {
    stopAll().finally(() => process.exit(130))
  }
  process.once("SIGINT", onSignal)
  process.once("SIGTERM", onSignal)
  try {
    const writer = await startWorker("writer", "writer", "raw", options)
    if (only.has("1") || only.has("2")) await registration(options, writer)
    if (only.has("1")) await backToBack(options, writer)
    if (only.has("3")) await churn(options, writer)
    if (only.has("4")) await initialSync(options, writer)
    if (only.has("5")) await memory(options, writer)
    if (only.has("6")) await micro()
    if (only.has("7")) await keepAlive(options, etcd.endpoint)
  } finally {
    await stopAll()
  }
  const seconds = (Date.now() - started) / 1000
  console.log(`\n${table(rows)}\n`)
  console.log(
    `${rows.filter((r) => r.met === false).length} bar(s) missed; whole run ${seconds.toFixed(0)} s; load ${loadAtStart} at the start, ${load()} at the end. ` +
      "These machines are shared and noisy: compare ratios within one run, not figures across runs."
  )
  Fs.mkdirSync(Path.dirname(out), { recursive: true })
  Fs.writeFileSync(out, JSON.stringify(rows, null, 2) + "\n")
  Fs.writeFileSync(
    out.replace(/\.json$/, ".meta.json"),
    JSON.stringify(
      {
        startedAt: new Date(started).toISOString(),
        commit: commit(),
        seconds,
        loadAtStart,
        loadAtEnd: load(),
        cores: Os.cpus().length,
        node: process.version,
        etcd: etcd.version,
        config
      },
      null,
      2
    ) + "\n"
  )
  console.log(`wrote ${out}`)
}

main().catch((error: unknown) => {
  console.error(error)
  process.exitCode = 1
})
