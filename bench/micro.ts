/**
 * Scenario 6, in one process: a round-robin pick over 100 endpoints inside a
 * running fiber, against a plain array round robin; and the overhead of
 * `Retry.retry(3, 1 s)` on a call that succeeds at once, against a plain
 * promise retry loop with a timer.
 *
 * The balancer reads a real Subscriber (over the in-memory EtcdClient, with 100
 * instances), which is the path an application takes.
 */
import * as Effect from "effect/Effect"
import * as Balancer from "../src/Balancer.js"
import type { Endpoint } from "../src/Endpoint.js"
import * as EtcdClient from "../src/EtcdClient.js"
import * as Retry from "../src/Retry.js"
import * as Subscriber from "../src/Subscriber.js"
import { now } from "./ipc.js"
import { instance } from "./keys.js"
import { median } from "./stats.js"

const repeats = 7

/** Median over `repeats` timed runs of `body(count)` after one warm-up run, in ns per iteration. */
const timeSync = (count: number, body: (count: number) => void): number => {
  body(Math.max(1, count >> 2))
  const xs: Array<number> = []
  for (let r = 0; r < repeats; r++) {
    const t0 = now()
    body(count)
    xs.push(Number(now() - t0) / count)
  }
  return median(xs)
}

const timeEffect = (count: number, body: (count: number) => Effect.Effect<void>): Effect.Effect<number> =>
  Effect.gen(function* () {
    yield* body(Math.max(1, count >> 2))
    const xs: Array<number> = []
    for (let r = 0; r < repeats; r++) {
      const t0 = now()
      yield* body(count)
      xs.push(Number(now() - t0) / count)
    }
    return median(xs)
  })

const timeAsync = async (count: number, body: (count: number) => Promise<void>): Promise<number> => {
  await body(Math.max(1, count >> 2))
  const xs: Array<number> = []
  for (let r = 0; r < repeats; r++) {
    const t0 = now()
    await body(count)
    xs.push(Number(now() - t0) / count)
  }
  return median(xs)
}

/** A plain promise retry: up to `max` attempts within `timeoutMillis` (a timer per call). */
const plainRetry = async <A>(max: number, timeoutMillis: number, f: () => Promise<A>): Promise<A> => {
  let timer: NodeJS.Timeout | undefined
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error("timeout")), timeoutMillis)
  })
  try {
    let last: unknown
    for (let attempt = 1; attempt <= max; attempt++) {
      try {
        return await Promise.race([f(), timeout])
      } catch (e) {
        last = e
      }
    }
    throw last
  } finally {
    clearTimeout(timer)
  }
}

export const runMicro = async (args: { readonly picks: number; readonly calls: number }) => {
  const n = 100

  // ---- plain JS ----
  const plain: Array<(request: number) => number> = Array.from({ length: n }, (_, i) => (request) => request + i)
  let sink = 0
  let counter = 0
  const plainPickNs = timeSync(args.picks, (count) => {
    for (let i = 0; i < count; i++) {
      const f = plain[counter % plain.length]!
      counter = counter === 0x3fffffff ? 0 : counter + 1
      sink += f.length
    }
  })
  const plainCall = (request: number) => Promise.resolve(plain[counter++ % n]!(request))
  const plainCallNs = await timeAsync(args.calls, async (count) => {
    for (let i = 0; i < count; i++) sink += await plainCall(i)
  })
  const plainRetriedNs = await timeAsync(args.calls, async (count) => {
    for (let i = 0; i < count; i++) sink += await plainRetry(3, 1000, () => plainCall(i))
  })

  // ---- ours ----
  const ours = await Effect.runPromise(
    Effect.gen(function* () {
      const client = yield* EtcdClient.EtcdClient
      for (let i = 0; i < n; i++) yield* client.put(`/bench/micro/${i}`, instance(i))
      const subscriber = yield* Subscriber.make<number, number>({
        prefix: "/bench/micro/",
        factory: (value) => {
          const offset = value.length
          const endpoint: Endpoint<number, number> = (request) => Effect.succeed(request + offset)
          return Effect.succeed(endpoint)
        }
      })
      const endpoints = yield* subscriber.endpoints
      if (endpoints.length !== n) return yield* Effect.dieMessage(`expected ${n} endpoints, got ${endpoints.length}`)
      const balancer = Balancer.roundRobin(subscriber)
      const pickNs = yield* timeEffect(args.picks, (count) =>
        Effect.gen(function* () {
          for (let i = 0; i < count; i++) {
            const endpoint = yield* balancer
            sink += endpoint.length
          }
        }).pipe(Effect.orDie)
      )
      const arrayBalancer = Balancer.roundRobin(Effect.succeed(endpoints))
      const arrayPickNs = yield* timeEffect(args.picks, (count) =>
        Effect.gen(function* () {
          for (let i = 0; i < count; i++) {
            const endpoint = yield* arrayBalancer
            sink += endpoint.length
          }
        }).pipe(Effect.orDie)
      )
      // the least any pick inside a fiber can cost: one Effect.sync reading an array
      let turn = 0
      const syncPick = Effect.sync(() => {
        const endpoint = endpoints[turn % endpoints.length]!
        turn = turn === 0x3fffffff ? 0 : turn + 1
        return endpoint
      })
      const syncPickNs = yield* timeEffect(args.picks, (count) =>
        Effect.gen(function* () {
          for (let i = 0; i < count; i++) {
            const endpoint = yield* syncPick
            sink += endpoint.length
          }
        })
      )
      const callNs = yield* timeEffect(args.calls, (count) =>
        Effect.gen(function* () {
          for (let i = 0; i < count; i++) {
            const endpoint = yield* balancer
            sink += yield* endpoint(i)
          }
        }).pipe(Effect.orDie)
      )
      const retried = yield* Retry.retry(balancer, { max: 3, timeout: "1 second" })
      const retriedCallNs = yield* timeEffect(args.calls, (count) =>
        Effect.gen(function* () {
          for (let i = 0; i < count; i++) sink += yield* retried(i)
        }).pipe(Effect.orDie)
      )
      // what a whole-call timeout costs by itself in Effect (it races the call against a timer fiber)
      const timedCallNs = yield* timeEffect(args.calls, (count) =>
        Effect.gen(function* () {
          for (let i = 0; i < count; i++) {
            const endpoint = yield* balancer
            sink += yield* Effect.timeout(endpoint(i), "1 second")
          }
        }).pipe(Effect.orDie)
      )
      return { pickNs, arrayPickNs, syncPickNs, callNs, retriedCallNs, timedCallNs }
    }).pipe(Effect.scoped, Effect.provide(EtcdClient.layerMemory))
  )
  return {
    pickNs: ours.pickNs,
    arrayPickNs: ours.arrayPickNs,
    syncPickNs: ours.syncPickNs,
    timeoutOverheadNs: ours.timedCallNs - ours.callNs,
    plainPickNs,
    callNs: ours.callNs,
    retriedCallNs: ours.retriedCallNs,
    retryOverheadNs: ours.retriedCallNs - ours.callNs,
    plainCallNs,
    plainRetriedNs,
    plainRetryOverheadNs: plainRetriedNs - plainCallNs,
    sink
  }
}
