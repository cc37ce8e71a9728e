/**
 * Scenario 6, in one process: a round-robin pick over 100 endpoints inside a
 * running fiber, against a plain array round robin; and the overhead of
 * `Retry.retry(3, 1 s)` on a call that succeeds at once, against a plain
 * promise retry loop with a timer.
 *
 * The balancer reads a real Subscriber (over the in-memory EtcdClient, with 100
 * instances), which is the path an application takes.
 *
 * Beside the headline figure (picks by `yield*` in an `Effect.gen` loop), the
 * same loop yielding `Effect.void` gives the loop's own cost, the same loop
 * yielding one constant `Effect.succeed(endpoint)` and using it as a pick is
 * used gives all but the pick, and an `Effect.whileLoop` runs the balancer as
 * an effect (through `commit()`, as `flatMap` does): the marginal cost of a
 * pick is the difference to the void or constant loop of the same kind. Each
 * loop is a function of its own, as an application's loop is, and uses a pick
 * as the plain loop does (an identity check). The variants are timed
 * interleaved, since a process's history (call sites of the runtime going
 * megamorphic) moves every figure.
 *
 * The retried endpoints answer with `Effect.succeed`, an already-complete
 * effect: a successful call then needs neither timer nor fiber. Endpoints that
 * answer with `Effect.sync` are timed too: their calls fork the attempt, as
 * every call to an endpoint that may suspend does. So are endpoints that answer
 * after a resolved promise, as the plain side's do: their attempts suspend, so
 * their calls also arm and clear a timer.
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

/**
 * Like {@link timeEffect} for several bodies at once, interleaved: one warm-up
 * run of each, then `repeats` rounds that time each body once, so that a drift
 * of the machine or of the process (call sites going megamorphic) does not
 * favour the body measured first. Medians in ns per iteration.
 */
const timeEffects = <K extends string>(
  count: number,
  bodies: Record<K, (count: number) => Effect.Effect<void>>
): Effect.Effect<Record<K, number>> =>
  Effect.gen(function* () {
    const names = Object.keys(bodies) as Array<K>
    const xs = {} as Record<K, Array<number>>
    for (const name of names) {
      yield* bodies[name](Math.max(1, count >> 2))
      xs[name] = []
    }
    for (let r = 0; r < repeats; r++) {
      for (const name of names) {
        const t0 = now()
        yield* bodies[name](count)
        xs[name].push(Number(now() - t0) / count)
      }
    }
    const medians = {} as Record<K, number>
    for (const name of names) medians[name] = median(xs[name])
    return medians
  })

/** `count` runs of `effect` driven by `Effect.whileLoop` (no generator). */
const whileLoop =
  <A, E>(effect: Effect.Effect<A, E>, use: (a: A) => void) =>
  (count: number): Effect.Effect<void> =>
    Effect.suspend(() => {
      let i = 0
      return Effect.whileLoop({ while: () => i++ < count, body: () => effect, step: use })
    }).pipe(Effect.orDie)

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
      if (f !== undefined) sink += 1
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
      const arrayBalancer = Balancer.roundRobin(Effect.succeed(endpoints))
      // the least a pick that runs as an effect of its own costs: one Effect.sync reading an array
      let turn = 0
      const syncPick = Effect.sync(() => {
        const endpoint = endpoints[turn % endpoints.length]!
        turn = turn === 0x3fffffff ? 0 : turn + 1
        return endpoint
      })
      const constant = Effect.succeed(endpoints[0]!)
      // what a loop does with a pick, the same as the plain loop does: reading the endpoint's
      // `length` instead cost about 70 ns inside a generator, more than the pick itself
      const useEndpoint = (endpoint: Endpoint<number, number>) => {
        if (endpoint !== undefined) sink += 1
      }
      const useVoid = () => {
        sink += 1
      }
      // the same loops over the pick, over an Effect.sync pick and over Effect.void (the loop's own
      // cost), in an Effect.gen loop and in an Effect.whileLoop; what a pick adds to a loop is the
      // difference to the Effect.void loop
      const picks = yield* timeEffects(args.picks, {
        // each loop is a function of its own, as in an application: one loop shared by every
        // variant (a helper taking the effect) makes its call sites megamorphic, which costs every
        // variant tens of nanoseconds that no single application loop pays
        pick: (count) =>
          Effect.gen(function* () {
            for (let i = 0; i < count; i++) useEndpoint(yield* balancer)
          }).pipe(Effect.orDie),
        arrayPick: (count) =>
          Effect.gen(function* () {
            for (let i = 0; i < count; i++) useEndpoint(yield* arrayBalancer)
          }).pipe(Effect.orDie),
        syncPick: (count) =>
          Effect.gen(function* () {
            for (let i = 0; i < count; i++) useEndpoint(yield* syncPick)
          }),
        void: (count) =>
          Effect.gen(function* () {
            for (let i = 0; i < count; i++) {
              yield* Effect.void
              useVoid()
            }
          }),
        // the loop with the same use of an endpoint, always the same one: all but the pick
        constant: (count) =>
          Effect.gen(function* () {
            for (let i = 0; i < count; i++) useEndpoint(yield* constant)
          }),
        whilePick: whileLoop(balancer, useEndpoint),
        whileSyncPick: whileLoop(syncPick, useEndpoint),
        whileVoid: whileLoop(Effect.void, useVoid),
        whileConstant: whileLoop(constant, useEndpoint)
      })
      // endpoints that answer with Effect.sync: not an already-complete effect, so every retried
      // call runs its attempt in a child fiber (the path of any endpoint that might suspend)
      const syncSubscriber = yield* Subscriber.make<number, number>({
        prefix: "/bench/micro/",
        factory: (value) => {
          const offset = value.length
          const endpoint: Endpoint<number, number> = (request) => Effect.sync(() => request + offset)
          return Effect.succeed(endpoint)
        }
      })
      const syncEndpoints = yield* syncSubscriber.endpoints
      if (syncEndpoints.length !== n) return yield* Effect.dieMessage(`expected ${n} endpoints`)
      const syncBalancer = Balancer.roundRobin(syncSubscriber)
      // endpoints that answer after a resolved promise, as the plain side's do: the attempt suspends,
      // so a retried call also arms (and clears) its timer, as the plain retry does
      const asyncSubscriber = yield* Subscriber.make<number, number>({
        prefix: "/bench/micro/",
        factory: (value) => {
          const offset = value.length
          const endpoint: Endpoint<number, number> = (request) =>
            Effect.promise(() => Promise.resolve(request + offset))
          return Effect.succeed(endpoint)
        }
      })
      const asyncEndpoints = yield* asyncSubscriber.endpoints
      if (asyncEndpoints.length !== n) return yield* Effect.dieMessage(`expected ${n} endpoints`)
      const asyncBalancer = Balancer.roundRobin(asyncSubscriber)
      const retried = yield* Retry.retry(balancer, { max: 3, timeout: "1 second" })
      const retriedSync = yield* Retry.retry(syncBalancer, { max: 3, timeout: "1 second" })
      const retriedAsync = yield* Retry.retry(asyncBalancer, { max: 3, timeout: "1 second" })
      const calls = yield* timeEffects(args.calls, {
        call: (count) =>
          Effect.gen(function* () {
            for (let i = 0; i < count; i++) {
              const endpoint = yield* balancer
              sink += yield* endpoint(i)
            }
          }).pipe(Effect.orDie),
        retried: (count) =>
          Effect.gen(function* () {
            for (let i = 0; i < count; i++) sink += yield* retried(i)
          }).pipe(Effect.orDie),
        syncEndpointCall: (count) =>
          Effect.gen(function* () {
            for (let i = 0; i < count; i++) {
              const endpoint = yield* syncBalancer
              sink += yield* endpoint(i)
            }
          }).pipe(Effect.orDie),
        syncEndpointRetried: (count) =>
          Effect.gen(function* () {
            for (let i = 0; i < count; i++) sink += yield* retriedSync(i)
          }).pipe(Effect.orDie),
        asyncEndpointCall: (count) =>
          Effect.gen(function* () {
            for (let i = 0; i < count; i++) {
              const endpoint = yield* asyncBalancer
              sink += yield* endpoint(i)
            }
          }).pipe(Effect.orDie),
        asyncEndpointRetried: (count) =>
          Effect.gen(function* () {
            for (let i = 0; i < count; i++) sink += yield* retriedAsync(i)
          }).pipe(Effect.orDie)
      })
      const callNs = calls.call
      const retriedCallNs = calls.retried
      // what a whole-call timeout costs by itself in Effect (it races the call against a timer fiber)
      const timedCallNs = yield* timeEffect(args.calls, (count) =>
        Effect.gen(function* () {
          for (let i = 0; i < count; i++) {
            const endpoint = yield* balancer
            sink += yield* Effect.timeout(endpoint(i), "1 second")
          }
        }).pipe(Effect.orDie)
      )
      return { picks, calls, callNs, retriedCallNs, timedCallNs }
    }).pipe(Effect.scoped, Effect.provide(EtcdClient.layerMemory))
  )
  return {
    pickNs: ours.picks.pick,
    arrayPickNs: ours.picks.arrayPick,
    syncPickNs: ours.picks.syncPick,
    voidLoopNs: ours.picks.void,
    whilePickNs: ours.picks.whilePick,
    whileSyncPickNs: ours.picks.whileSyncPick,
    whileVoidNs: ours.picks.whileVoid,
    constantLoopNs: ours.picks.constant,
    whileConstantNs: ours.picks.whileConstant,
    timeoutOverheadNs: ours.timedCallNs - ours.callNs,
    plainPickNs,
    callNs: ours.callNs,
    retriedCallNs: ours.retriedCallNs,
    retryOverheadNs: ours.retriedCallNs - ours.callNs,
    syncEndpointCallNs: ours.calls.syncEndpointCall,
    syncEndpointRetriedNs: ours.calls.syncEndpointRetried,
    asyncEndpointCallNs: ours.calls.asyncEndpointCall,
    asyncEndpointRetriedNs: ours.calls.asyncEndpointRetried,
    plainCallNs,
    plainRetriedNs,
    plainRetryOverheadNs: plainRetriedNs - plainCallNs,
    sink
  }
}
