import { describe, expect, it } from "@effect/vitest"
import { createRequire } from "node:module"
import * as v8 from "node:v8"
import * as vm from "node:vm"
import { vi } from "vitest"
import * as Cause from "effect/Cause"
import * as Clock from "effect/Clock"
import * as Data from "effect/Data"
import * as Deferred from "effect/Deferred"
import * as Differ from "effect/Differ"
import * as Duration from "effect/Duration"
import type * as EffectPackage from "effect"
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import * as Exit from "effect/Exit"
import * as Context from "effect/Context"
import * as Fiber from "effect/Fiber"
import * as FiberId from "effect/FiberId"
import * as FiberRef from "effect/FiberRef"
import { identity } from "effect/Function"
import * as HashMap from "effect/HashMap"
import * as Logger from "effect/Logger"
import * as LogLevel from "effect/LogLevel"
import * as Option from "effect/Option"
import * as Queue from "effect/Queue"
import * as Ref from "effect/Ref"
import * as RuntimeFlags from "effect/RuntimeFlags"
import * as RuntimeFlagsPatch from "effect/RuntimeFlagsPatch"
import * as Schedule from "effect/Schedule"
import * as Scheduler from "effect/Scheduler"
import * as Stream from "effect/Stream"
import * as Supervisor from "effect/Supervisor"
import * as TestClock from "effect/TestClock"
import type * as Scope from "effect/Scope"
import * as Balancer from "../src/Balancer.js"
import type { Endpoint } from "../src/Endpoint.js"
import * as EtcdClient from "../src/EtcdClient.js"
import type { EtcdError } from "../src/EtcdError.js"
import * as Retry from "../src/Retry.js"
import * as Subscriber from "../src/Subscriber.js"
import { fiberClassOf, forksPurely, startsFibers } from "../src/internal/timeout.js"

class Boom {
  readonly _tag = "Boom"
  constructor(readonly n: number) {}
}

/** One endpoint that fails its first `failures` calls (with Boom(call number)), then answers "ok". */
const flaky = (failures: number) =>
  Effect.map(Ref.make(0), (calls) => {
    const endpoint: Endpoint<string, string, Boom> = (request) =>
      Effect.flatMap(
        Ref.updateAndGet(calls, (n) => n + 1),
        (n) => (n <= failures ? Effect.fail(new Boom(n)) : Effect.succeed(`ok ${request}`))
      )
    return { endpoint, calls: Ref.get(calls) }
  })

/**
 * Where the round robin takes the endpoints from: a fixed array (`Effect.succeed`), an effect to run
 * (`Effect.sync`), or a Subscriber over the in-memory etcd with one instance per endpoint. Over the
 * array and the Subscriber the balancer picks synchronously, so that a retried call takes another
 * path when the endpoint's answer is already complete.
 */
type Kind = "array" | "effect" | "subscriber"

let prefixes = 0

const roundRobinOver =
  (kind: Kind) =>
  <Req, Res, E>(
    endpoints: ReadonlyArray<Endpoint<Req, Res, E>>
  ): Effect.Effect<Balancer.Balancer<Req, Res, E, EtcdError>, never, EtcdClient.EtcdClient | Scope.Scope> =>
    kind === "array"
      ? Effect.succeed(Balancer.roundRobin(Effect.succeed(endpoints)))
      : kind === "effect"
        ? Effect.succeed(Balancer.roundRobin(Effect.sync(() => endpoints)))
        : Effect.gen(function* () {
            const client = yield* EtcdClient.EtcdClient
            const prefix = `/svc${++prefixes}/`
            // keys in the endpoints' order
            for (let i = 0; i < endpoints.length; i++) {
              yield* Effect.orDie(client.put(`${prefix}${String(i).padStart(3, "0")}`, String(i)))
            }
            const subscriber = yield* Effect.orDie(
              Subscriber.make<Req, Res, E>({ prefix, factory: (value) => Effect.succeed(endpoints[Number(value)]!) })
            )
            const ready = yield* subscriber.endpointSet.changes.pipe(
              Stream.filter((set) => set.endpoints.length === endpoints.length),
              Stream.runHead
            )
            if (Option.isNone(ready)) return yield* Effect.dieMessage("the subscriber's changes ended")
            return Balancer.roundRobin(subscriber)
          })

const onMemory = <A, E, R>(effect: Effect.Effect<A, E, R>) =>
  effect.pipe(Effect.scoped, Effect.provide(EtcdClient.layerMemory))

describe.each<Kind>(["array", "effect", "subscriber"])("Retry over a round robin from %s", (kind) => {
  const balancerOf = roundRobinOver(kind)

  it.effect("succeeds on the 3rd attempt with max 3", () =>
    Effect.gen(function* () {
      const { calls, endpoint } = yield* flaky(2)
      const call = yield* Retry.retry(yield* balancerOf([endpoint]), {
        max: 3,
        timeout: "1 second"
      })
      expect(yield* call("hi")).toBe("ok hi")
      expect(yield* calls).toBe(3)
    }).pipe(onMemory)
  )

  it.effect("fails after 3 attempts with a RetryError holding the 3 errors", () =>
    Effect.gen(function* () {
      const { calls, endpoint } = yield* flaky(10)
      const call = yield* Retry.retry(yield* balancerOf([endpoint]), {
        max: 3,
        timeout: "1 second"
      })
      const error = yield* Effect.flip(call("hi"))
      expect(error._tag).toBe("RetryError")
      expect(error.timedOut).toBe(false)
      expect(error.errors).toEqual([new Boom(1), new Boom(2), new Boom(3)])
      expect(error.final).toEqual(new Boom(3))
      expect(yield* calls).toBe(3)
      // the error can be handled by tag
      const message = yield* call("again").pipe(Effect.catchTag("RetryError", (e) => Effect.succeed(e.message)))
      expect(message).toContain("after 3 attempts")
    }).pipe(onMemory)
  )

  it.effect("a timeout yields a RetryError with the errors so far", () =>
    Effect.gen(function* () {
      const attempts = yield* Ref.make(0)
      const thirdStarted = yield* Deferred.make<void>()
      // fails twice, then hangs
      const endpoint: Endpoint<string, string, Boom> = () =>
        Effect.flatMap(
          Ref.updateAndGet(attempts, (n) => n + 1),
          (n) =>
            n <= 2 ? Effect.fail(new Boom(n)) : Effect.zipRight(Deferred.succeed(thirdStarted, undefined), Effect.never)
        )
      const call = yield* Retry.retry(yield* balancerOf([endpoint]), {
        max: 5,
        timeout: "3 seconds"
      })
      const fiber = yield* Effect.fork(Effect.flip(call("hi")))
      yield* Deferred.await(thirdStarted)
      yield* TestClock.adjust("3 seconds")
      const error = yield* Fiber.join(fiber)
      expect(error.timedOut).toBe(true)
      expect(error.errors).toEqual([new Boom(1), new Boom(2)])
      expect(error.final).toBeInstanceOf(Cause.TimeoutException)
      expect(yield* Ref.get(attempts)).toBe(3)
      // the attempt cut off counts, without an error
      expect(error.attempts).toBe(3)
      expect(error.inFlight).toBe(true)
      expect(error.message).toBe("timed out after 3 attempts (the last one still running): retry timed out after 3s")
    }).pipe(onMemory)
  )

  it.effect(
    "the attempt in flight is interrupted, and has released what it holds, when the timeout fires and when the caller is interrupted",
    () =>
      Effect.gen(function* () {
        // an endpoint that hangs, tells when it starts, and takes a few turns to release what it holds
        // when interrupted: the timeout and the caller's interruption are over once it has
        const hanging = Effect.gen(function* () {
          const started = yield* Deferred.make<void>()
          const released = yield* Ref.make(false)
          const endpoint: Endpoint<string, string, Boom> = () =>
            Effect.zipRight(Deferred.succeed(started, undefined), Effect.never).pipe(
              Effect.onInterrupt(() => Effect.zipRight(Effect.repeatN(Effect.yieldNow(), 5), Ref.set(released, true)))
            )
          const call = yield* Retry.retry(yield* balancerOf([endpoint]), {
            max: 3,
            timeout: "1 second"
          })
          return { started, released, call }
        })

        const first = yield* hanging
        const timedOut = yield* Effect.fork(Effect.flip(first.call("hi")))
        yield* Deferred.await(first.started)
        yield* TestClock.adjust("1 second")
        expect((yield* Fiber.join(timedOut)).timedOut).toBe(true)
        expect(yield* Ref.get(first.released)).toBe(true)

        const second = yield* hanging
        const caller = yield* Effect.fork(second.call("hi"))
        yield* Deferred.await(second.started)
        yield* Fiber.interrupt(caller)
        expect(yield* Ref.get(second.released)).toBe(true)
      }).pipe(onMemory)
  )

  it.effect("the callback stops early and replaces the error", () =>
    Effect.gen(function* () {
      const { calls, endpoint } = yield* flaky(10)
      const seen: Array<readonly [number, number]> = []
      const call = yield* Retry.retry(yield* balancerOf([endpoint]), {
        max: 5,
        timeout: "1 second",
        callback: (attempt, error) => {
          seen.push([attempt, error._tag === "Boom" ? error.n : -1])
          return attempt < 2 ? { keepTrying: true } : { keepTrying: false, replacement: "gave up" as const }
        }
      })
      const error = yield* Effect.flip(call("hi"))
      expect(seen).toEqual([
        [1, 1],
        [2, 2]
      ])
      expect(error.errors).toEqual([new Boom(1), new Boom(2)])
      expect(error.final).toBe("gave up")
      expect(yield* calls).toBe(2)
    }).pipe(onMemory)
  )

  it.effect("retryWithCallback: the callback alone decides when to stop", () =>
    Effect.gen(function* () {
      const { calls, endpoint } = yield* flaky(10)
      const call = yield* Retry.retryWithCallback(yield* balancerOf([endpoint]), {
        timeout: "1 second",
        callback: (attempt) => ({ keepTrying: attempt < 7 })
      })
      const error = yield* Effect.flip(call("hi"))
      expect(error.errors.length).toBe(7)
      expect(yield* calls).toBe(7)
    }).pipe(onMemory)
  )

  it.effect("with 3 endpoints of which one always fails, retry(3) never fails", () =>
    Effect.gen(function* () {
      const good: Endpoint<number, number, Boom> = (n) => Effect.succeed(n)
      const bad: Endpoint<number, number, Boom> = (n) => Effect.fail(new Boom(n))
      const call = yield* Retry.retry(yield* balancerOf([good, bad, good]), {
        max: 3,
        timeout: "1 second"
      })
      const results = yield* Effect.forEach(
        Array.from({ length: 100 }, (_, i) => i),
        call
      )
      expect(results).toEqual(Array.from({ length: 100 }, (_, i) => i))
    }).pipe(onMemory)
  )

  it.effect("a backoff schedule waits between attempts, and a fresh endpoint serves each attempt", () =>
    Effect.gen(function* () {
      const picked: Array<string> = []
      const firstPicked = yield* Deferred.make<void>()
      const make =
        (name: string): Endpoint<string, string, Boom> =>
        () => {
          picked.push(name)
          if (name === "a") Deferred.unsafeDone(firstPicked, Effect.void)
          return name === "c" ? Effect.succeed("c answered") : Effect.fail(new Boom(picked.length))
        }
      const call = yield* Retry.retry(yield* balancerOf(["a", "b", "c"].map(make)), {
        max: 3,
        timeout: "1 minute",
        schedule: Schedule.spaced("10 seconds")
      })
      const fiber = yield* Effect.fork(call("hi"))
      yield* Deferred.await(firstPicked)
      yield* TestClock.adjust("9 seconds")
      expect(picked).toEqual(["a"])
      yield* TestClock.adjust("1 second")
      expect(picked).toEqual(["a", "b"])
      yield* TestClock.adjust("10 seconds")
      expect(yield* Fiber.join(fiber)).toBe("c answered")
      expect(picked).toEqual(["a", "b", "c"])
    }).pipe(onMemory)
  )

  it.effect("NoEndpoints counts as a failed attempt", () =>
    Effect.gen(function* () {
      const call = yield* Retry.retry(yield* balancerOf<string, string, never>([]), {
        max: 2,
        timeout: "1 second"
      })
      const error = yield* Effect.flip(call("hi"))
      expect(error.errors.map((e) => e._tag)).toEqual(["NoEndpoints", "NoEndpoints"])
    }).pipe(onMemory)
  )

  it.effect("invalid options are a typed InvalidOptions error", () =>
    Effect.gen(function* () {
      const balancer = yield* balancerOf<string, string, never>([])
      const zero = yield* Effect.flip(Retry.retry(balancer, { max: 0, timeout: "1 second" }))
      expect(zero._tag).toBe("InvalidOptions")
      expect(zero.option).toBe("max")
      const fraction = yield* Effect.flip(Retry.retry(balancer, { max: 1.5, timeout: "1 second" }))
      expect(fraction.option).toBe("max")
      const noTime = yield* Effect.flip(Retry.retry(balancer, { max: 3, timeout: Duration.zero }))
      expect(noTime.option).toBe("timeout")
      expect(noTime.reason).toBe("must be positive, got 0")
      for (const timeout of [Number.NaN, [Number.NaN, 0] as const]) {
        const nan = yield* Effect.flip(Retry.retry(balancer, { max: 3, timeout }))
        expect(nan.option).toBe("timeout")
        expect(nan.reason).toMatch(/^not a duration: /)
        const nanCallback = yield* Effect.flip(
          Retry.retryWithCallback(balancer, { timeout, callback: () => ({ keepTrying: true }) })
        )
        expect(nanCallback.reason).toMatch(/^not a duration: /)
      }
      // longer than a timer can wait: it would never fire, and mean no timeout
      const tooLong = yield* Effect.flip(Retry.retry(balancer, { max: 3, timeout: Duration.millis(2 ** 31) }))
      expect(tooLong.option).toBe("timeout")
      expect(tooLong.reason).toBe("must be at most 24d 20h 31m 23s 647ms (a timer's limit), got 24d 20h 31m 23s 648ms")
      const tooLongCallback = yield* Effect.flip(
        Retry.retryWithCallback(balancer, { timeout: "30 days", callback: () => ({ keepTrying: true }) })
      )
      expect(tooLongCallback.reason).toBe("must be at most 24d 20h 31m 23s 647ms (a timer's limit), got 30 days")
      // the longest wait a timer takes, and no timeout at all, are accepted
      yield* Retry.retry(balancer, { max: 3, timeout: Duration.millis(2 ** 31 - 1) })
      yield* Retry.retry(balancer, { max: 3, timeout: Duration.infinity })
    }).pipe(onMemory)
  )

  it.effect("defects are not retried", () =>
    Effect.gen(function* () {
      const calls = yield* Ref.make(0)
      const dying: Endpoint<string, string> = () =>
        Effect.zipRight(
          Ref.update(calls, (n) => n + 1),
          Effect.die("bug")
        )
      const call = yield* Retry.retry(yield* balancerOf([dying]), { max: 3, timeout: "1 second" })
      const exit = yield* Effect.exit(call("hi"))
      expect(exit._tag === "Failure" && Cause.isDie(exit.cause)).toBe(true)
      expect(yield* Ref.get(calls)).toBe(1)
    }).pipe(onMemory)
  )

  it.effect("endpoints answering with an already-complete effect: every attempt's error kept, in turn", () =>
    Effect.gen(function* () {
      const failing =
        (n: number): Endpoint<string, string, Boom> =>
        () =>
          Effect.fail(new Boom(n))
      const call = yield* Retry.retry(yield* balancerOf([failing(1), failing(2), failing(3), failing(4)]), {
        max: 3,
        timeout: "1 second"
      })
      const error = yield* Effect.flip(call("hi"))
      expect(error.timedOut).toBe(false)
      expect(error.errors).toEqual([new Boom(1), new Boom(2), new Boom(3)])
      expect(error.final).toEqual(new Boom(3))
      // the next call goes on from the 4th endpoint
      const next = yield* Effect.flip(call("hi"))
      expect(next.errors).toEqual([new Boom(4), new Boom(1), new Boom(2)])
    }).pipe(onMemory)
  )

  it.effect("after an attempt that failed at once, the timeout covers the next ones, which it interrupts", () =>
    Effect.gen(function* () {
      const started = yield* Deferred.make<void>()
      const interrupted = yield* Deferred.make<void>()
      const failing: Endpoint<string, string, Boom> = () => Effect.fail(new Boom(1))
      const hanging: Endpoint<string, string, Boom> = () =>
        Effect.zipRight(Deferred.succeed(started, undefined), Effect.never).pipe(
          Effect.onInterrupt(() => Deferred.succeed(interrupted, undefined))
        )
      const call = yield* Retry.retry(yield* balancerOf([failing, hanging]), { max: 3, timeout: "2 seconds" })
      const fiber = yield* Effect.fork(Effect.flip(call("hi")))
      yield* Deferred.await(started)
      yield* TestClock.adjust("1999 millis")
      expect(fiber.unsafePoll()).toBeNull()
      yield* TestClock.adjust("1 milli")
      const error = yield* Fiber.join(fiber)
      expect(error.timedOut).toBe(true)
      expect(error.errors).toEqual([new Boom(1)])
      expect(error.final).toBeInstanceOf(Cause.TimeoutException)
      yield* Deferred.await(interrupted)
    }).pipe(onMemory)
  )

  it.effect("a defect answered at once is not retried either", () =>
    Effect.gen(function* () {
      let calls = 0
      const dying: Endpoint<string, string> = () => {
        calls++
        return Effect.die("bug")
      }
      const call = yield* Retry.retry(yield* balancerOf([dying]), { max: 3, timeout: "1 second" })
      const exit = yield* Effect.exit(call("hi"))
      expect(exit._tag === "Failure" && Cause.isDie(exit.cause)).toBe(true)
      expect(calls).toBe(1)
    }).pipe(onMemory)
  )

  it.effect("a timeout that cuts off the only attempt counts it: 1 attempt, still running, no error", () =>
    Effect.gen(function* () {
      const started = yield* Deferred.make<void>()
      const hanging: Endpoint<string, string, Boom> = () =>
        Effect.zipRight(Deferred.succeed(started, undefined), Effect.never)
      const call = yield* Retry.retry(yield* balancerOf([hanging]), { max: 3, timeout: "500 millis" })
      const fiber = yield* Effect.fork(Effect.flip(call("hi")))
      yield* Deferred.await(started)
      yield* TestClock.adjust("500 millis")
      const error = yield* Fiber.join(fiber)
      expect(error.timedOut).toBe(true)
      expect(error.attempts).toBe(1)
      expect(error.inFlight).toBe(true)
      expect(error.errors).toEqual([])
      expect(error.message).toBe("timed out after 1 attempt (the last one still running): retry timed out after 500ms")
    }).pipe(onMemory)
  )

  it.effect("a timeout during a backoff's wait counts the attempts made, none in flight", () =>
    Effect.gen(function* () {
      const failed = yield* Deferred.make<void>()
      const failing: Endpoint<string, string, Boom> = () =>
        Effect.zipRight(Deferred.succeed(failed, undefined), Effect.fail(new Boom(1)))
      const call = yield* Retry.retry(yield* balancerOf([failing]), {
        max: 3,
        timeout: "5 seconds",
        schedule: Schedule.spaced("10 seconds")
      })
      const fiber = yield* Effect.fork(Effect.flip(call("hi")))
      yield* Deferred.await(failed)
      yield* TestClock.adjust("5 seconds")
      const error = yield* Fiber.join(fiber)
      expect(error.timedOut).toBe(true)
      expect(error.attempts).toBe(1)
      expect(error.inFlight).toBe(false)
      expect(error.errors).toEqual([new Boom(1)])
      expect(error.message).toBe("timed out after 1 attempt: retry timed out after 5s")
    }).pipe(onMemory)
  )

  it.effect("after many failed attempts the error keeps every error, and counts them all", () =>
    Effect.gen(function* () {
      const { calls, endpoint } = yield* flaky(10_000)
      const call = yield* Retry.retry(yield* balancerOf([endpoint]), { max: 1000, timeout: "1 minute" })
      const error = yield* Effect.flip(call("hi"))
      expect(yield* calls).toBe(1000)
      expect(error.attempts).toBe(1000)
      expect(error.inFlight).toBe(false)
      expect(error.errors).toEqual(Array.from({ length: 1000 }, (_, i) => new Boom(i + 1)))
      expect(error.final).toEqual(new Boom(1000))
      expect(error.message).toBe("failed after 1000 attempts: Boom")
    }).pipe(onMemory)
  )

  it.effect("without a timeout: retries and keeps every error", () =>
    Effect.gen(function* () {
      const good: Endpoint<number, number, Boom> = (n) => Effect.succeed(n)
      const bad: Endpoint<number, number, Boom> = (n) => Effect.fail(new Boom(n))
      const mostlyGood = yield* Retry.retry(yield* balancerOf([bad, good]), { max: 2, timeout: Duration.infinity })
      expect(yield* Effect.forEach([1, 2, 3, 4], mostlyGood)).toEqual([1, 2, 3, 4])
      const allBad = yield* Retry.retry(yield* balancerOf([bad]), { max: 3, timeout: Duration.infinity })
      const error = yield* Effect.flip(allBad(7))
      expect(error.timedOut).toBe(false)
      expect(error.errors).toEqual([new Boom(7), new Boom(7), new Boom(7)])
    }).pipe(onMemory)
  )
})

describe("RetryError.message", () => {
  class Bare extends Data.TaggedError("Bare")<{ readonly n: number }> {}
  class Told extends Data.TaggedError("Told")<{ readonly message: string }> {}

  it.effect("gives the final error's message, or its _tag when it has none", () =>
    Effect.gen(function* () {
      const bare: Endpoint<string, string, Bare> = () => Effect.fail(new Bare({ n: 1 }))
      const call = yield* Retry.retry(Balancer.roundRobin(Effect.succeed([bare])), { max: 2, timeout: "1 second" })
      const error = yield* Effect.flip(call("hi"))
      expect(error.final).toBeInstanceOf(Bare)
      expect(error.message).toBe("failed after 2 attempts: Bare")
      const failed = (final: unknown) =>
        new Retry.RetryError({ errors: [final], final, timedOut: false, attempts: 1 }).message
      expect(failed(new Told({ message: "told why" }))).toBe("failed after 1 attempt: told why")
      // a plain tagged object, an Error without a message, a callback's replacement
      expect(failed(new Boom(1))).toBe("failed after 1 attempt: Boom")
      expect(failed(new Error())).toBe("failed after 1 attempt: Error")
      expect(failed("gave up")).toBe("failed after 1 attempt: gave up")
    })
  )
})

describe("Retry's timed calls whose attempts suspend: the timer, the attempt's fiber, interruptions", () => {
  it.live(
    "on the live clock: a hung attempt is interrupted at the deadline, and a call that ends (answered or interrupted) leaves no timer behind",
    () =>
      Effect.gen(function* () {
        // the hour-long timers armed and not cleared (other timers come and go meanwhile: vitest's, Effect's)
        const armed = new Set<unknown>()
        let arms = 0
        const set = globalThis.setTimeout
        const clear = globalThis.clearTimeout
        const setSpy = vi.spyOn(globalThis, "setTimeout").mockImplementation(((
          f: (...args: Array<unknown>) => void,
          ms?: number,
          ...args: Array<unknown>
        ) => {
          const handle = set(f, ms, ...args)
          if (ms === 3_600_000) {
            armed.add(handle)
            arms++
          }
          return handle
        }) as typeof setTimeout)
        const clearSpy = vi.spyOn(globalThis, "clearTimeout").mockImplementation(((handle?: unknown) => {
          armed.delete(handle)
          return clear(handle as Parameters<typeof clearTimeout>[0])
        }) as typeof clearTimeout)
        yield* Effect.addFinalizer(() =>
          Effect.sync(() => {
            setSpy.mockRestore()
            clearSpy.mockRestore()
          })
        )
        // answered after a turn of the event loop: the attempt suspends, and the call arms its timer
        const later: Endpoint<string, string> = (request) =>
          Effect.async<string>((resume) => {
            const handle = setImmediate(() => resume(Effect.succeed(`ok ${request}`)))
            return Effect.sync(() => clearImmediate(handle))
          })
        const answering = yield* Retry.retry(Balancer.roundRobin(Effect.succeed([later])), {
          max: 3,
          timeout: "1 hour"
        })
        for (let i = 0; i < 20; i++) expect(yield* answering(`${i}`)).toBe(`ok ${i}`)
        // each call armed its timer, and cleared it by the time it returned: an hour-long timer left
        // armed would keep the process alive for an hour
        expect(arms).toBe(20)
        expect(armed.size).toBe(0)

        const finalized: Array<string> = []
        // started: the request of every attempt started, in order
        const started = yield* Queue.unbounded<string>()
        const hung: Endpoint<string, string> = (request) =>
          Effect.zipRight(Queue.offer(started, request), Effect.never).pipe(
            Effect.onInterrupt(() => Effect.sync(() => finalized.push(request)))
          )
        const timed = yield* Retry.retry(Balancer.roundRobin(Effect.succeed([hung])), { max: 3, timeout: "50 millis" })
        const start = Date.now()
        const error = yield* Effect.flip(timed("a"))
        expect(Date.now() - start).toBeGreaterThanOrEqual(45)
        expect(error.timedOut).toBe(true)
        expect(error.inFlight).toBe(true)
        expect(error.attempts).toBe(1)
        // the timeout fails once the attempt's finalizers have run
        expect(finalized).toEqual(["a"])

        // the caller interrupted: the attempt is interrupted, and the hour-long timer cleared
        const long = yield* Retry.retry(Balancer.roundRobin(Effect.succeed([hung])), { max: 3, timeout: "1 hour" })
        const fiber = yield* Effect.fork(long("b"))
        expect([...(yield* Queue.takeAll(started))]).toEqual(["a"])
        expect(yield* Queue.take(started)).toBe("b")
        expect(armed.size).toBe(1)
        yield* Fiber.interrupt(fiber)
        expect(finalized).toEqual(["a", "b"])
        expect(armed.size).toBe(0)
      }).pipe(Effect.scoped)
  )

  /** Answers `effect` after a turn of the event loop: an attempt that runs it suspends first. */
  const afterATurn = <A, E>(effect: Effect.Effect<A, E>): Effect.Effect<A, E> =>
    Effect.zipRight(
      Effect.async<void>((resume) => {
        const handle = setImmediate(() => resume(Effect.void))
        return Effect.sync(() => clearImmediate(handle))
      }),
      effect
    )

  it.effect(
    "a first attempt that fails after suspending: the next ones run under the same deadline, not a new one",
    () =>
      Effect.gen(function* () {
        const secondStarted = yield* Deferred.make<void>()
        const attempts = yield* Ref.make(0)
        // the first attempt fails 60 ms in; the second hangs
        const endpoint: Endpoint<string, string, Boom> = () =>
          Effect.flatMap(
            Ref.updateAndGet(attempts, (n) => n + 1),
            (n) =>
              n === 1
                ? Effect.zipRight(Effect.sleep("60 millis"), Effect.fail(new Boom(1)))
                : Effect.zipRight(Deferred.succeed(secondStarted, undefined), Effect.never)
          )
        const call = yield* Retry.retry(Balancer.roundRobin(Effect.succeed([endpoint])), {
          max: 3,
          timeout: "100 millis"
        })
        const fiber = yield* Effect.fork(Effect.flip(call("x")))
        yield* TestClock.adjust("60 millis")
        yield* Deferred.await(secondStarted)
        yield* TestClock.adjust("39 millis")
        expect(yield* Fiber.poll(fiber)).toEqual(Option.none())
        // 100 ms after the call began (a timer armed anew for the second attempt would wait until 160)
        yield* TestClock.adjust("1 millis")
        const error = yield* Fiber.join(fiber)
        expect(error.timedOut).toBe(true)
        expect(error.attempts).toBe(2)
        expect(error.inFlight).toBe(true)
        expect(error.errors).toEqual([new Boom(1)])
        expect(yield* Ref.get(attempts)).toBe(2)
      })
  )

  it.live(
    "attempts after one that failed after suspending run with the caller's services and refs, and the call answers",
    () =>
      Effect.gen(function* () {
        const depth = yield* FiberRef.make(0, { fork: (n) => n + 100 })
        let calls = 0
        const endpoint: Endpoint<string, string, Boom> = (request) =>
          Effect.gen(function* () {
            const n = ++calls
            const region = Option.getOrElse(yield* Effect.serviceOption(Region), () => "-")
            const seen = yield* FiberRef.get(depth)
            return yield* afterATurn(
              n === 1 ? Effect.fail(new Boom(n)) : Effect.succeed(`${request} ${region} ${seen}`)
            )
          })
        const call = yield* Retry.retry(Balancer.roundRobin(Effect.succeed([endpoint])), {
          max: 3,
          timeout: "1 minute"
        })
        // each attempt's fiber, the further one too, gets its own fork of the caller's refs
        expect(yield* Effect.provideService(Effect.locally(call("x"), depth, 1), Region, "eu")).toBe("x eu 101")
        expect(calls).toBe(2)
        // and a first attempt that fails at once is followed the same way
        calls = 1
        const atOnce: Endpoint<string, string, Boom> = (request) =>
          ++calls === 2
            ? Effect.fail(new Boom(2))
            : Effect.map(Effect.serviceOption(Region), (region) => `${request} ${Option.getOrElse(region, () => "-")}`)
        const again = yield* Retry.retry(Balancer.roundRobin(Effect.succeed([atOnce])), { max: 3, timeout: "1 minute" })
        expect(yield* Effect.provideService(again("y"), Region, "us")).toBe("y us")
      }).pipe(Effect.scoped)
  )

  it.live(
    "a caller interrupted while an attempt after one that failed runs: that attempt is interrupted, its finalizers run first",
    () =>
      Effect.gen(function* () {
        const finalized: Array<number> = []
        const secondStarted = yield* Deferred.make<void>()
        let calls = 0
        const endpoint: Endpoint<string, string, Boom> = () => {
          const n = ++calls
          return n === 1
            ? afterATurn(Effect.fail(new Boom(n)))
            : Effect.zipRight(Deferred.succeed(secondStarted, undefined), Effect.never).pipe(
                Effect.onInterrupt(() =>
                  Effect.zipRight(
                    Effect.repeatN(Effect.yieldNow(), 5),
                    Effect.sync(() => finalized.push(n))
                  )
                )
              )
        }
        const call = yield* Retry.retry(Balancer.roundRobin(Effect.succeed([endpoint])), {
          max: 3,
          timeout: "1 minute"
        })
        const caller = yield* Effect.fork(call("x"))
        yield* Deferred.await(secondStarted)
        expect(Exit.isInterrupted(yield* Fiber.interrupt(caller))).toBe(true)
        expect(finalized).toEqual([2])
        expect(calls).toBe(2)
      })
  )

  it.live("a fiber ref an attempt set is seen by the next ones, as in one fiber, with a timeout or without", () =>
    Effect.gen(function* () {
      const counter = yield* FiberRef.make(0)
      for (const timeout of [Duration.infinity, Duration.minutes(1)]) {
        for (const suspend of [false, true]) {
          let calls = 0
          const endpoint: Endpoint<string, string, Boom> = (request) =>
            Effect.gen(function* () {
              const n = ++calls
              if (n === 1) {
                yield* FiberRef.set(counter, 42)
                return yield* suspend ? afterATurn(Effect.fail(new Boom(n))) : Effect.fail(new Boom(n))
              }
              return `${request} ${yield* FiberRef.get(counter)}`
            })
          const call = yield* Retry.retry(Balancer.roundRobin(Effect.succeed([endpoint])), { max: 3, timeout })
          expect(yield* call("x")).toBe("x 42")
          // without a timeout the attempts run in the caller's fiber, with one in fibers of their own
          expect(yield* FiberRef.get(counter)).toBe(Duration.isFinite(timeout) ? 0 : 42)
          yield* FiberRef.set(counter, 0)
        }
      }
    }).pipe(Effect.scoped)
  )

  it.live(
    "a caller interrupted just as its first attempt fails (while it yields to other fibers): no further attempt starts",
    () =>
      Effect.gen(function* () {
        let calls = 0
        const asked = yield* Deferred.make<void>()
        let failFirst: (() => void) | undefined = undefined
        const endpoint: Endpoint<string, string, Boom> = () => {
          const n = ++calls
          return n === 1
            ? Effect.async<string, Boom>((resume) => {
                failFirst = () => resume(Effect.fail(new Boom(n)))
                Deferred.unsafeDone(asked, Exit.void)
              })
            : Effect.zipRight(Effect.sleep("300 millis"), Effect.fail(new Boom(n)))
        }
        const call = yield* Retry.retry(Balancer.roundRobin(Effect.succeed([endpoint])), {
          max: 3,
          timeout: "1 minute"
        })
        const scheduler = new YieldingOnce()
        const window = { caller: undefined as unknown, armed: false, commits: 0, hit: false }
        // the caller's interruption runs the canceler of its wait: `Effect.suspend`'s step, then
        // `Effect.async`'s, which registers; between the two the first attempt fails and the caller yields
        class Window extends Supervisor.AbstractSupervisor<void> {
          get value() {
            return Effect.void
          }
          override onEffect(
            fiber: Fiber.RuntimeFiber<unknown, unknown>,
            effect: Effect.Effect<unknown, unknown, unknown>
          ) {
            const op = (effect as unknown as { readonly _op?: unknown })._op
            if (window.armed && fiber === window.caller && op === "Commit" && ++window.commits === 2) {
              window.armed = false
              window.hit = true
              failFirst!()
              scheduler.yieldHere = (yielding) => yielding === window.caller
            }
          }
        }
        const caller = yield* Effect.fork(
          Effect.withFiberRuntime((fiber) => {
            window.caller = fiber
            return Effect.void
          }).pipe(
            Effect.zipRight(call("x")),
            Effect.supervised(new Window()),
            Effect.withRuntimeFlagsPatch(RuntimeFlagsPatch.enable(RuntimeFlags.OpSupervision)),
            Effect.withScheduler(scheduler)
          )
        )
        yield* Deferred.await(asked)
        window.armed = true
        const exit = yield* Fiber.interrupt(caller)
        expect(window.hit).toBe(true)
        expect(Exit.isFailure(exit) && Cause.isInterruptedOnly(exit.cause)).toBe(true)
        // before, the second and third attempts ran (300 ms each, with no timer left) before the interruption was over
        expect(calls).toBe(1)
      })
  )

  it.live(
    "a timed call is started when it runs, each time it runs, alike yielded in Effect.gen or run as an effect, and inside another's attempt",
    () =>
      Effect.gen(function* () {
        for (const suspend of [false, true]) {
          let calls = 0
          // answers "ok n" to its even calls, fails its odd ones
          const endpoint: Endpoint<string, string, Boom> = (request) => {
            const n = ++calls
            const answer = n % 2 === 0 ? Effect.succeed(`${request} ${n}`) : Effect.fail(new Boom(n))
            return suspend ? afterATurn(answer) : answer
          }
          const once = yield* Retry.retry(Balancer.roundRobin(Effect.succeed([endpoint])), {
            max: 1,
            timeout: "1 minute"
          })
          const call = once("x")
          expect(calls).toBe(0)
          expect((yield* Effect.flip(call)).errors).toEqual([new Boom(1)])
          expect(yield* call).toBe("x 2")
          expect(yield* Effect.exit(call)).toEqual(Exit.fail(expect.objectContaining({ errors: [new Boom(3)] })))
          expect(yield* Effect.flatMap(call, (answer) => Effect.succeed(`${answer}!`))).toBe("x 4!")
          expect(calls).toBe(4)
          // a timed call made by an endpoint, in its attempt's fiber
          const outer = yield* Retry.retry(
            Balancer.roundRobin(Effect.succeed([(request: string) => once(`${request} in`)])),
            { max: 3, timeout: "1 minute" }
          )
          expect(yield* outer("y")).toBe("y in 6")
          expect(calls).toBe(6)
        }
      })
  )

  it.live("a loop of timed calls answered at once still gives other fibers their turns, and can be interrupted", () =>
    Effect.gen(function* () {
      const atOnce: Endpoint<string, string> = (request) => Effect.succeed(request)
      const synchronous: Endpoint<string, string> = (request) => Effect.sync(() => request)
      for (const endpoint of [atOnce, synchronous]) {
        const call = yield* Retry.retry(Balancer.roundRobin(Effect.succeed([endpoint])), {
          max: 3,
          timeout: "1 minute"
        })
        let turns = 0
        const other = yield* Effect.fork(
          Effect.forever(
            Effect.zipRight(
              Effect.yieldNow(),
              Effect.sync(() => turns++)
            )
          )
        )
        yield* Effect.yieldNow()
        const before = turns
        for (let i = 0; i < 20_000; i++) yield* call("x")
        // (the calls of the loop yield to other fibers as often as two steps of the run loop each would)
        expect(turns - before).toBeGreaterThanOrEqual(5)
        yield* Fiber.interrupt(other)
        let calls = 0
        const loop = yield* Effect.fork(
          Effect.gen(function* () {
            while (calls < 5_000_000) {
              yield* call("x")
              calls++
            }
          })
        )
        yield* Effect.yieldNow()
        expect(Exit.isInterrupted(yield* Fiber.interrupt(loop))).toBe(true)
        expect(calls).toBeLessThan(5_000_000)
      }
    })
  )

  it.live(
    "an endpoint that throws is a defect of the call, yielded in Effect.gen (its try/catch does not take it) or run as an effect",
    () =>
      Effect.gen(function* () {
        const throwing: Endpoint<string, string> = () => {
          throw new Error("thrown by the endpoint")
        }
        const call = yield* Retry.retry(Balancer.roundRobin(Effect.succeed([throwing])), {
          max: 3,
          timeout: "1 minute"
        })
        let caught = false
        const yielded = yield* Effect.exit(
          Effect.gen(function* () {
            try {
              return yield* call("x")
            } catch {
              caught = true
              return "caught"
            }
          })
        )
        const run = yield* Effect.exit(call("x"))
        for (const exit of [yielded, run]) {
          expect(Exit.isFailure(exit) && Cause.isDie(exit.cause)).toBe(true)
          expect(Exit.isFailure(exit) && Cause.squash(exit.cause)).toMatchObject({ message: "thrown by the endpoint" })
        }
        expect(caught).toBe(false)
      })
  )

  it.live("a caller whose interruption is already on its way when it reaches a timed call does not start it", () =>
    Effect.gen(function* () {
      let calls = 0
      const endpoint: Endpoint<string, string> = () => {
        calls++
        return Effect.never
      }
      const call = yield* Retry.retry(Balancer.roundRobin(Effect.succeed([endpoint])), { max: 3, timeout: "1 minute" })
      const exit = yield* Fiber.await(
        yield* Effect.fork(
          Effect.gen(function* () {
            const me = yield* Effect.withFiberRuntime<Fiber.RuntimeFiber<unknown, unknown>>((fiber) =>
              Effect.succeed(fiber)
            )
            yield* Effect.sync(() => me.unsafeInterruptAsFork(FiberId.none))
            return yield* call("x")
          })
        )
      )
      expect(Exit.isInterrupted(exit)).toBe(true)
      expect(calls).toBe(0)
    })
  )

  it.live(
    "failed attempts and failed calls are not logged as unhandled errors, at any level; a forked fiber's are",
    () =>
      Effect.gen(function* () {
        const messages: Array<string> = []
        const logger = Logger.make(({ message }) => {
          messages.push(String(message))
        })
        const unhandled = () => messages.filter((message) => message.includes("unhandled"))
        let calls = 0
        const failingTwice: Endpoint<string, string, Boom> = (request) => {
          const n = ++calls
          const answer = n % 3 === 0 ? Effect.succeed(`ok ${request}`) : Effect.fail(new Boom(n))
          return n > 3 ? afterATurn(answer) : answer
        }
        const call = yield* Retry.retry(Balancer.roundRobin(Effect.succeed([failingTwice])), {
          max: 3,
          timeout: "1 minute"
        })
        const failing = yield* Retry.retry(Balancer.roundRobin(Effect.succeed([failingTwice])), {
          max: 2,
          timeout: "1 minute"
        })
        yield* Effect.gen(function* () {
          // attempts failing at once, then after a turn; then calls failing either way
          expect(yield* call("a")).toBe("ok a")
          expect(yield* call("b")).toBe("ok b")
          calls = 0
          expect((yield* Effect.flip(failing("c"))).attempts).toBe(2)
          calls = 3
          expect((yield* Effect.flip(failing("d"))).attempts).toBe(2)
          expect(unhandled()).toEqual([])
          // the logger sees a fiber's unhandled error: the same failure in a forked fiber, awaited
          yield* Fiber.await(yield* Effect.fork(Effect.fail(new Boom(0))))
        }).pipe(Effect.provide(Logger.replace(Logger.defaultLogger, logger)), Logger.withMinimumLogLevel(LogLevel.All))
        expect(unhandled()).toEqual(["Fiber terminated with an unhandled error"])
      })
  )

  /** Counts the fibers started under it (a timed call's attempt, and its timer when that is a fiber). */
  class Started extends Supervisor.AbstractSupervisor<number> {
    count = 0
    get value() {
      return Effect.sync(() => this.count)
    }
    override onStart() {
      this.count++
    }
  }

  /** A timed call whose attempt suspends (answered after a turn of the event loop), under a fiber counter. */
  const fibersOfTimedCall = Effect.gen(function* () {
    const later: Endpoint<string, string> = (request) =>
      Effect.async<string>((resume) => {
        const handle = setImmediate(() => resume(Effect.succeed(`ok ${request}`)))
        return Effect.sync(() => clearImmediate(handle))
      })
    const call = yield* Retry.retry(Balancer.roundRobin(Effect.succeed([later])), { max: 3, timeout: "1 minute" })
    const started = new Started()
    expect(yield* Effect.supervised(call("x"), started)).toBe("ok x")
    return started.count
  })

  it.live("on the live clock a timed call's timer is no fiber: its attempt is the one fiber it starts", () =>
    Effect.map(fibersOfTimedCall, (fibers) => expect(fibers).toBe(1))
  )

  it.effect("under TestClock (or any clock but the live one) a timed call's timer is a fiber sleeping on it", () =>
    Effect.gen(function* () {
      // (TestClock forks one more on its first sleep: the fiber that warns of a clock never adjusted)
      expect(yield* fibersOfTimedCall).toBeGreaterThanOrEqual(2)
      // a clock made like the live one is still another clock: its sleep is what the call must wait on
      expect(yield* Effect.withClock(fibersOfTimedCall, Clock.make())).toBe(2)
    })
  )

  class Region extends Context.Tag("Region")<Region, string>() {}

  /**
   * What an attempt sees of its caller: a ref whose fork differs from its value (an attempt sees it
   * forked, as any forked fiber does), the log annotations and a service, read once the attempt has
   * started, and again after it suspended when `suspend` is given.
   */
  const seenBy = (depth: FiberRef.FiberRef<number>, suspend: boolean): Endpoint<string, string> => {
    const read = Effect.gen(function* () {
      const annotations = yield* FiberRef.get(FiberRef.currentLogAnnotations)
      const region = yield* Effect.serviceOption(Region)
      const user = Option.getOrElse(HashMap.get(annotations, "user"), () => "-")
      return `${yield* FiberRef.get(depth)} ${String(user)} ${Option.getOrElse(region, () => "-")}`
    })
    return (request) =>
      Effect.gen(function* () {
        const first = yield* read
        if (!suspend) return `${request}: ${first}`
        yield* Effect.async<void>((resume) => {
          const handle = setImmediate(() => resume(Effect.void))
          return Effect.sync(() => clearImmediate(handle))
        })
        return `${request}: ${first} / ${yield* read}`
      })
  }

  it.live("an attempt runs with its caller's fiber refs and services as they are at each call", () =>
    Effect.gen(function* () {
      const depth = yield* FiberRef.make(0, { fork: (n) => n + 100 })
      for (const suspend of [false, true]) {
        // (the fibers of `Effect.all` below hand their refs back to this one when they are joined)
        yield* FiberRef.set(depth, 0)
        const call = yield* Retry.retry(Balancer.roundRobin(Effect.succeed([seenBy(depth, suspend)])), {
          max: 3,
          timeout: "1 minute"
        })
        const twice = (seen: string) => (suspend ? `${seen} / ${seen}` : seen)
        // one fiber whose refs change from call to call
        expect(yield* call("a")).toBe(`a: ${twice("100 - -")}`)
        expect(yield* Effect.locally(call("b"), depth, 1)).toBe(`b: ${twice("101 - -")}`)
        yield* FiberRef.set(depth, 2)
        expect(yield* call("c")).toBe(`c: ${twice("102 - -")}`)
        expect(yield* Effect.annotateLogs(call("d"), "user", "ann")).toBe(`d: ${twice("102 ann -")}`)
        expect(yield* Effect.provideService(call("e"), Region, "eu")).toBe(`e: ${twice("102 - eu")}`)
        expect(yield* call("f")).toBe(`f: ${twice("102 - -")}`)
        // two fibers calling in turn, each with refs of its own
        const caller = (n: number, region: string) =>
          Effect.gen(function* () {
            const answers: Array<string> = []
            for (let i = 0; i < 5; i++) {
              answers.push(yield* call(`${i}`))
              yield* Effect.yieldNow()
            }
            return answers
          }).pipe(Effect.locally(depth, n), Effect.annotateLogs("user", `u${n}`), Effect.provideService(Region, region))
        const [one, two] = yield* Effect.all([caller(1, "eu"), caller(2, "us")], { concurrency: 2 })
        expect(one).toEqual([0, 1, 2, 3, 4].map((i) => `${i}: ${twice("101 u1 eu")}`))
        expect(two).toEqual([0, 1, 2, 3, 4].map((i) => `${i}: ${twice("102 u2 us")}`))
      }
    }).pipe(Effect.scoped)
  )

  /** A full collection now: `gc` made available at run time (the flag, then a fresh context's global). */
  const collectGarbage = (): void => {
    v8.setFlagsFromString("--expose-gc")
    const gc = vm.runInNewContext("gc") as () => void
    gc()
  }

  it.live("each attempt's fiber gets its own fork of a ref whose fork makes a new value", () =>
    Effect.gen(function* () {
      let forks = 0
      // a buffer each fiber gets afresh, and a number per fiber
      const buffer = yield* FiberRef.make<Array<string>>([], { fork: () => [] })
      const forked = yield* FiberRef.make(0, { fork: () => ++forks })
      const endpoint: Endpoint<string, string> = (request) =>
        Effect.gen(function* () {
          const own = yield* FiberRef.get(buffer)
          own.push(request)
          return `${own.join(",")} #${yield* FiberRef.get(forked)}`
        })
      const call = yield* Retry.retry(Balancer.roundRobin(Effect.succeed([endpoint])), { max: 3, timeout: "1 minute" })
      expect([yield* call("a"), yield* call("b"), yield* call("c")]).toEqual(["a #1", "b #2", "c #3"])
    }).pipe(Effect.scoped)
  )

  it.live("fibers joined inside an attempt, and fibers an attempt started, hand back the refs they set", () =>
    Effect.gen(function* () {
      const depth = yield* FiberRef.make(0, { fork: (n) => n + 100 })
      yield* FiberRef.set(depth, 5)
      // a fiber of the caller's, joined by the attempt: it set the ref back to its initial value
      const joining: Endpoint<Fiber.Fiber<void>, number> = (fiber) =>
        Effect.zipRight(Fiber.join(fiber), FiberRef.get(depth))
      const join = yield* Retry.retry(Balancer.roundRobin(Effect.succeed([joining])), { max: 3, timeout: "1 minute" })
      const reset = yield* Effect.fork(FiberRef.set(depth, 0))
      yield* Fiber.await(reset)
      expect(yield* join(reset)).toBe(0)
      // a fiber the attempt started, joined by the caller
      const starting: Endpoint<number, Fiber.RuntimeFiber<void>> = (value) =>
        Effect.tap(Effect.forkDaemon(FiberRef.set(depth, value)), Fiber.await)
      const start = yield* Retry.retry(Balancer.roundRobin(Effect.succeed([starting])), { max: 3, timeout: "1 minute" })
      yield* FiberRef.set(depth, 5)
      yield* Fiber.join(yield* start(0))
      expect(yield* FiberRef.get(depth)).toBe(0)
    }).pipe(Effect.scoped)
  )

  it.live("a ref whose fork reads the world outside is forked for every attempt, as for any fiber", () =>
    Effect.gen(function* () {
      let version = 1
      let forks = 0
      // a ref that picks up the latest version whenever a fiber is forked (the first fork changes nothing)
      const config = yield* FiberRef.make(1, {
        fork: () => {
          forks++
          return version
        }
      })
      const endpoint: Endpoint<string, string> = (request) =>
        Effect.map(FiberRef.get(config), (v) => `${request} v${v}`)
      const call = yield* Retry.retry(Balancer.roundRobin(Effect.succeed([endpoint])), { max: 3, timeout: "1 minute" })
      const before = [yield* call("a"), yield* call("b")]
      version = 2
      expect([...before, yield* call("c"), yield* call("d")]).toEqual(["a v1", "b v1", "c v2", "d v2"])
      expect(forks).toBe(4)
    }).pipe(Effect.scoped)
  )

  it.live("a ref whose fork goes through a differ of its own is forked for every attempt, as for any fiber", () =>
    Effect.gen(function* () {
      let version = 1
      // a fork patch that picks up the latest version
      type Patch =
        { readonly _tag: "Keep" } | { readonly _tag: "Refresh" } | { readonly _tag: "Set"; readonly value: number }
      const keep: Patch = { _tag: "Keep" }
      const refreshing = Differ.make<number, Patch>({
        empty: keep,
        diff: (old, next) => (old === next ? keep : { _tag: "Set", value: next }),
        combine: (first, second) => (second._tag === "Keep" ? first : second),
        patch: (patch, old) => (patch._tag === "Keep" ? old : patch._tag === "Set" ? patch.value : version)
      })
      // a fork that is `identity`, under a differ whose patch reads the version
      const atLeastVersion = Differ.make<number, (n: number) => number>({
        empty: identity,
        diff: (_, next) => () => next,
        combine: (first, second) => (n) => second(first(n)),
        patch: (f, old) => Math.max(f(old), version)
      })
      const refs = [
        FiberRef.unsafeMakePatch(1, { differ: refreshing, fork: { _tag: "Refresh" } as Patch }),
        FiberRef.unsafeMakePatch(1, { differ: atLeastVersion, fork: identity })
      ]
      for (const config of refs) {
        version = 1
        yield* FiberRef.set(config, 1)
        const endpoint: Endpoint<string, string> = (request) =>
          Effect.map(FiberRef.get(config), (v) => `${request} v${v}`)
        const call = yield* Retry.retry(Balancer.roundRobin(Effect.succeed([endpoint])), {
          max: 3,
          timeout: "1 minute"
        })
        const before = [yield* call("a"), yield* call("b")]
        version = 2
        const after = [yield* call("c"), yield* call("d")]
        expect([...before, ...after]).toEqual(["a v1", "b v1", "c v2", "d v2"])
        // as any fiber forked now
        expect(yield* Effect.flatMap(Effect.fork(FiberRef.get(config)), Fiber.join)).toBe(2)
      }
    }).pipe(Effect.scoped)
  )

  it.live("a caller that joins a fiber its attempt started keeps the runtime flags it has", () =>
    Effect.gen(function* () {
      const noYielding = RuntimeFlagsPatch.disable(RuntimeFlags.CooperativeYielding)
      const starting: Endpoint<string, Fiber.RuntimeFiber<void>> = () => Effect.forkDaemon(Effect.void)
      const start = yield* Retry.retry(Balancer.roundRobin(Effect.succeed([starting])), { max: 3, timeout: "1 minute" })
      // the caller's refs record its flags (as a fork does) while it does not yield, then it calls with the flags it has
      yield* Effect.withRuntimeFlagsPatch(Effect.fork(Effect.void), noYielding)
      const started = yield* start("x")
      const after = yield* Effect.withRuntimeFlagsPatch(
        Effect.zipRight(Fiber.join(started), Effect.getRuntimeFlags),
        noYielding
      )
      expect(RuntimeFlags.cooperativeYielding(after)).toBe(false)
    })
  )

  it.effect("the refs whose fork an attempt may share are forked to the same value by Effect itself", () =>
    Effect.gen(function* () {
      // (an Effect upgrade that gave one of them a fork that changes its value would fail here)
      const refs = [...forksPurely] as Array<FiberRef.FiberRef<unknown>>
      expect(refs.length).toBeGreaterThan(20)
      // (the runtime flags' ref reads a fiber's own flags, which a forked fiber sets for itself)
      for (const ref of refs.filter((ref) => ref !== FiberRef.currentRuntimeFlags)) {
        // held by this fiber, as a caller's refs hold what it set
        yield* FiberRef.set(ref, yield* FiberRef.get(ref))
        const mine = yield* FiberRef.get(ref)
        const forked = yield* Effect.flatMap(Effect.fork(FiberRef.get(ref)), Fiber.join)
        if (ref === FiberRef.interruptedCause) expect(Cause.isEmpty(forked as Cause.Cause<never>)).toBe(true)
        else expect(forked).toBe(mine)
      }
    })
  )

  it.effect(
    "an attempt's fiber is made by Effect's own fiber class, which makes and starts fibers as runFork does",
    () =>
      Effect.withFiberRuntime((caller) => {
        expect(startsFibers(caller.constructor)).toBe(true)
        expect(fiberClassOf(caller)).toBe(caller.constructor)
        return Effect.void
      })
  )

  it.effect(
    "a fiber class of another shape (a later Effect's) fails the check that lets the attempt skip runFork",
    () =>
      Effect.sync(() => {
        // other parameters, no start, a start that runs nothing, a constructor that throws
        class TwoParameters {
          constructor(_id: unknown, _refs: unknown) {}
          start() {}
        }
        class NoStart {
          constructor(_id: unknown, _refs: unknown, _flags: unknown) {}
        }
        class StartsNothing {
          constructor(_id: unknown, _refs: unknown, _flags: unknown) {}
          start() {}
          unsafePoll() {
            return null
          }
        }
        class Throws {
          constructor(_id: unknown, _refs: unknown, _flags: unknown) {
            throw new Error("not this way")
          }
          start() {}
        }
        for (const Class of [TwoParameters, NoStart, StartsNothing, Throws]) {
          expect(startsFibers(Class)).toBe(false)
          expect(
            fiberClassOf({ constructor: Class } as unknown as Fiber.RuntimeFiber<unknown, unknown>)
          ).toBeUndefined()
        }
      })
  )

  it.live("a caller on another copy of Effect (its CommonJS build) has its attempt started by runFork, as before", () =>
    Effect.gen(function* () {
      const cjs = createRequire(import.meta.url)("effect") as typeof EffectPackage
      expect(cjs.Effect).not.toBe(Effect)
      // a supervisor of that copy, told of the fibers it runs (not of this copy's fibers, whose
      // supervisor is a ref of this copy's)
      const resumed = new Set<unknown>()
      class Resumed extends cjs.Supervisor.AbstractSupervisor<void> {
        get value() {
          return cjs.Effect.void
        }
        override onResume(fiber: Fiber.RuntimeFiber<unknown, unknown>) {
          resumed.add(fiber)
        }
      }
      const attempts: Array<Fiber.RuntimeFiber<unknown, unknown>> = []
      // an attempt that suspends, so that it is resumed
      const later: Endpoint<string, string> = (request) =>
        Effect.withFiberRuntime((attempt) => {
          attempts.push(attempt)
          return Effect.promise(() => Promise.resolve(request))
        })
      const call = yield* Retry.retry(Balancer.roundRobin(Effect.succeed([later])), { max: 3, timeout: "1 minute" })
      const answer = yield* Effect.promise(() => cjs.Effect.runPromise(cjs.Effect.supervised(call("x"), new Resumed())))
      expect(answer).toBe("x")
      expect(attempts.length).toBe(1)
      // made by this copy, as runFork made it: no fiber of the other copy's class, half told of by its supervisor
      expect(attempts[0]!.constructor).toBe(
        yield* Effect.withFiberRuntime((fiber) => Effect.succeed(fiber.constructor))
      )
      expect(resumed.has(attempts[0])).toBe(false)
    })
  )

  it.live("an attempt's fiber is its caller's: Fiber.roots does not list it, as it lists no fiber of Effect.fork", () =>
    Effect.gen(function* () {
      // an endpoint that runs (not an already-complete effect), so the attempt has a fiber of its own
      const listed: Endpoint<string, boolean> = () =>
        Effect.withFiberRuntime((attempt) => Effect.map(Fiber.roots, (roots) => roots.includes(attempt)))
      const call = yield* Retry.retry(Balancer.roundRobin(Effect.succeed([listed])), { max: 3, timeout: "1 minute" })
      expect(yield* call("x")).toBe(false)
      // (a fiber started by Effect.runFork is a root)
      const root = Effect.runFork(
        Effect.withFiberRuntime((fiber) => Effect.map(Fiber.roots, (roots) => roots.includes(fiber)))
      )
      expect(yield* Fiber.join(root)).toBe(true)
    })
  )

  class Session extends Context.Tag("Session")<Session, { readonly id: string }>() {}

  it.live("a timed call keeps nothing of its caller's services past the event loop's turn", () =>
    Effect.gen(function* () {
      // answered with an effect that is not complete yet: the call runs its attempt in a fiber
      const echo: Endpoint<string, string> = (request) => Effect.sync(() => request)
      const call = yield* Retry.retry(Balancer.roundRobin(Effect.succeed([echo])), { max: 3, timeout: "1 minute" })
      const held: { session?: { readonly id: string } } = { session: { id: "s1" } }
      const weak = new WeakRef(held.session!)
      expect(yield* Effect.provideService(call("x"), Session, held.session!)).toBe("x")
      delete held.session
      yield* Effect.promise(() => new Promise((resolve) => setImmediate(resolve)))
      collectGarbage()
      expect(weak.deref()).toBeUndefined()
    })
  )

  /** Keeps every observer ever added to a fiber started under it, as a fiber's observer array can. */
  class KeepingObservers extends Supervisor.AbstractSupervisor<void> {
    readonly kept: Array<unknown> = []
    get value() {
      return Effect.void
    }
    override onStart<A, E, R>(
      _context: unknown,
      _effect: Effect.Effect<A, E, R>,
      _parent: Option.Option<Fiber.RuntimeFiber<unknown, unknown>>,
      fiber: Fiber.RuntimeFiber<A, E>
    ) {
      const add = fiber.addObserver.bind(fiber)
      fiber.addObserver = (observer) => {
        this.kept.push(observer)
        add(observer)
      }
    }
  }

  /**
   * One timed call to `endpoint` (interrupted once `interruptWhen` is done, if given): its exit, and
   * whether its caller's fiber could be collected once it was over while every observer ever added
   * to its attempt's fiber was kept. V8 soon allocates a fiber's observer array in the old
   * generation (most fibers of an application live long), where the array keeps its observers
   * through every young collection until a full one: the caller (a server's request, with all it
   * holds) must not hang on them.
   */
  const callerCollected = (
    endpoint: Endpoint<string, string>,
    timeout: Duration.DurationInput,
    interruptWhen?: Deferred.Deferred<void>
  ) =>
    Effect.gen(function* () {
      const call = yield* Retry.retry(Balancer.roundRobin(Effect.succeed([endpoint])), { max: 3, timeout })
      const keeping = new KeepingObservers()
      // the caller's fiber, held here only until the call is over
      const held: { caller?: Fiber.RuntimeFiber<string, unknown> } = {
        caller: Effect.runFork(Effect.supervised(call("x"), keeping))
      }
      const weak = new WeakRef(held.caller!)
      if (interruptWhen !== undefined) {
        yield* Deferred.await(interruptWhen)
        yield* Fiber.interrupt(held.caller!)
      }
      const exit = yield* Fiber.await(held.caller!)
      delete held.caller
      // a WeakRef's target stays until the end of the turn that made or read it
      yield* Effect.promise(() => new Promise((resolve) => setImmediate(resolve)))
      collectGarbage()
      return { exit, collected: weak.deref() === undefined }
    })

  it.live("once a timed call is over (answered, timed out, interrupted), nothing of its attempt holds the caller", () =>
    Effect.gen(function* () {
      const later: Endpoint<string, string> = (request) =>
        Effect.async<string>((resume) => {
          const handle = setImmediate(() => resume(Effect.succeed(`ok ${request}`)))
          return Effect.sync(() => clearImmediate(handle))
        })
      const answered = yield* callerCollected(later, "1 minute")
      expect(answered.exit).toEqual(Exit.succeed("ok x"))
      expect(answered.collected).toBe(true)

      const timedOut = yield* callerCollected(() => Effect.never, "20 millis")
      expect(Exit.isFailure(timedOut.exit) && Cause.squash(timedOut.exit.cause)).toMatchObject({ timedOut: true })
      expect(timedOut.collected).toBe(true)

      const asked = yield* Deferred.make<void>()
      const hung: Endpoint<string, string> = () => Effect.zipRight(Deferred.succeed(asked, undefined), Effect.never)
      const interrupted = yield* callerCollected(hung, "1 minute", asked)
      expect(Exit.isInterrupted(interrupted.exit)).toBe(true)
      expect(interrupted.collected).toBe(true)
    })
  )

  it.live("a caller interrupted just as its attempt answers is interrupted, with nothing else in its exit", () =>
    Effect.gen(function* () {
      const answers: Array<(effect: Effect.Effect<string>) => void> = []
      const asked = yield* Deferred.make<void>()
      const later: Endpoint<string, string> = () =>
        Effect.async<string>((resume) => {
          answers.push(resume)
          Deferred.unsafeDone(asked, Exit.void)
        })
      const call = yield* Retry.retry(Balancer.roundRobin(Effect.succeed([later])), { max: 3, timeout: "1 minute" })
      const caller = Effect.runFork(call("x"))
      yield* Deferred.await(asked)
      // in one go: the attempt answers, then the caller is interrupted; the caller sees its
      // interruption first (both wait for a later turn), when the attempt is already over
      const id = yield* Effect.fiberId
      answers[0]!(Effect.succeed("late"))
      caller.unsafeInterruptAsFork(id)
      const exit = yield* Fiber.await(caller)
      expect(Exit.isInterrupted(exit)).toBe(true)
      expect(Exit.isFailure(exit) && Cause.isInterruptedOnly(exit.cause)).toBe(true)
    })
  )

  /** Delegates to the default scheduler, but makes one fiber yield where `yieldHere` says so. */
  class YieldingOnce implements Scheduler.Scheduler {
    yieldHere: ((fiber: Fiber.RuntimeFiber<unknown, unknown>) => boolean) | undefined = undefined
    shouldYield(fiber: Fiber.RuntimeFiber<unknown, unknown>): number | false {
      if (this.yieldHere?.(fiber) === true) {
        this.yieldHere = undefined
        return 0
      }
      return Scheduler.defaultScheduler.shouldYield(fiber)
    }
    scheduleTask(task: Scheduler.Task, priority: number, fiber?: Fiber.RuntimeFiber<unknown, unknown>) {
      Scheduler.defaultScheduler.scheduleTask(task, priority, fiber)
    }
  }

  /**
   * A call whose caller yields to other fibers right after starting its attempt, before waiting for
   * it (Effect's cooperative yielding falls there every so often), and is interrupted then. Answers
   * the attempt's fiber, whether its interruption is over, and a weak reference to the caller.
   */
  const interruptedBeforeWaiting = (timeout: Duration.DurationInput) =>
    Effect.gen(function* () {
      const attempt: { fiber?: Fiber.RuntimeFiber<unknown, unknown> } = {}
      const asked = yield* Deferred.make<void>()
      const stopped = yield* Deferred.make<void>()
      const hung: Endpoint<string, string> = () =>
        Effect.withFiberRuntime((fiber) => {
          attempt.fiber = fiber
          return Effect.async<string>(() => {
            Deferred.unsafeDone(asked, Exit.void)
            return Deferred.succeed(stopped, undefined)
          })
        })
      const call = yield* Retry.retry(Balancer.roundRobin(Effect.succeed([hung])), { max: 3, timeout })
      const scheduler = new YieldingOnce()
      let yielded = false
      scheduler.yieldHere = (fiber) => {
        if (attempt.fiber === undefined || fiber === attempt.fiber) return false
        yielded = true
        return true
      }
      // the caller's fiber, held here only until it is over
      const held: { caller?: Fiber.RuntimeFiber<string, unknown> } = {
        caller: Effect.runFork(Effect.withScheduler(call("x"), scheduler))
      }
      const caller = new WeakRef(held.caller!)
      yield* Deferred.await(asked)
      expect(yielded).toBe(true)
      expect(Exit.isInterrupted(yield* Fiber.interrupt(held.caller!))).toBe(true)
      delete held.caller
      return { attempt: attempt.fiber!, stopped, caller }
    })

  it.live("a caller interrupted after its attempt started but before it waits: the attempt ends at the deadline", () =>
    Effect.gen(function* () {
      const { stopped } = yield* interruptedBeforeWaiting("200 millis")
      // nobody waits for the attempt any more; its deadline still stops it
      expect(yield* Effect.either(Effect.timeout(Deferred.await(stopped), "10 seconds"))).toEqual(
        Either.right(undefined)
      )
    })
  )

  it.live("a caller interrupted before it waits is not held while its attempt runs on to the deadline", () =>
    Effect.gen(function* () {
      const { attempt, caller, stopped } = yield* interruptedBeforeWaiting("1 minute")
      // a WeakRef's target stays until the end of the turn that made or read it
      yield* Effect.promise(() => new Promise((resolve) => setImmediate(resolve)))
      collectGarbage()
      const collected = caller.deref() === undefined
      // the attempt, still running, is stopped here rather than in a minute (and its timer cleared)
      attempt.unsafeInterruptAsFork(attempt.id())
      yield* Deferred.await(stopped)
      expect(collected).toBe(true)
    })
  )
})

describe("Retry whose attempts fail at once (no endpoint yet), without a backoff", () => {
  const empty = Balancer.roundRobin(Effect.succeed<ReadonlyArray<Endpoint<string, string>>>([]))

  it.live("a call with a 1 ms backoff does not wait in line behind 300 calls spinning at once", () =>
    Effect.gen(function* () {
      const refusing = Balancer.roundRobin(
        Effect.succeed<ReadonlyArray<Endpoint<string, string, string>>>([() => Effect.fail("no")])
      )
      const spinning = yield* Deferred.make<void>()
      const spin = yield* Retry.retryWithCallback(empty, {
        timeout: "2 seconds",
        callback: () => {
          Deferred.unsafeDone(spinning, Exit.void)
          return { keepTrying: true }
        }
      })
      const spaced = yield* Retry.retry(refusing, {
        max: 20,
        timeout: "10 seconds",
        schedule: Schedule.spaced("1 millis")
      })
      const [alone] = yield* Effect.timed(Effect.flip(spaced("alone")))
      const spinners = yield* Effect.fork(
        Effect.forEach(Array.from({ length: 300 }), () => Effect.exit(spin("x")), {
          concurrency: "unbounded",
          discard: true
        })
      )
      yield* Deferred.await(spinning)
      const [beside] = yield* Effect.timed(Effect.flip(spaced("beside the spinners")))
      yield* Fiber.interrupt(spinners)
      // 19 waits of 1 ms: tens of ms alone; in line behind the spinners (16 attempts a turn), ~500 ms.
      // Beside them, each wait also waits for a turn of a loop the spinners keep busy: a bound of
      // 150 ms failed in two of three full-suite runs on a slower 2-core machine, hence 300
      expect(Duration.toMillis(beside)).toBeLessThan(Math.max(300, 3 * Duration.toMillis(alone)))
    })
  )

  it.live("a loop of calls of two attempts each still lets a 10 ms interval fire", () =>
    Effect.gen(function* () {
      const call = yield* Retry.retry(empty, { max: 2, timeout: "1 second" })
      let ticks = 0
      const start = Date.now()
      yield* Effect.acquireUseRelease(
        Effect.sync(() => setInterval(() => ticks++, 10)),
        () =>
          Effect.whileLoop({
            while: () => Date.now() - start < 200,
            body: () => Effect.exit(call("x")),
            step: () => {}
          }),
        (interval) => Effect.sync(() => clearInterval(interval))
      )
      // each call's second attempt was neither waited for nor counted: 0 ticks in 200 ms
      expect(ticks).toBeGreaterThanOrEqual(5)
    })
  )

  it.live("a module loaded while fake timers are on (a setup file) still gives retries real turns after", () =>
    Effect.gen(function* () {
      vi.useFakeTimers()
      vi.resetModules()
      const FreshRetry = yield* Effect.promise(() => import("../src/Retry.js"))
      const FreshBalancer = yield* Effect.promise(() => import("../src/Balancer.js"))
      vi.useRealTimers()
      const fresh = FreshBalancer.roundRobin(Effect.succeed<ReadonlyArray<Endpoint<string, string>>>([]))
      const call = yield* FreshRetry.retry(fresh, { max: 40, timeout: "1 hour" })
      const result = yield* Effect.timeoutOption(Effect.flip(call("after")), "2 seconds")
      expect(Option.isSome(result)).toBe(true)
    })
  )

  it.live("after a test with fake timers, a retry whose attempts fail at once still completes", () =>
    Effect.gen(function* () {
      const call = yield* Retry.retry(empty, { max: 40, timeout: "1 hour" })
      // a turn armed by an earlier test has fired
      yield* Effect.promise(() => new Promise<void>((resolve) => setImmediate(() => setImmediate(resolve))))
      vi.useFakeTimers()
      const stuck = Effect.runFork(call("under fake timers"))
      yield* Effect.promise(async () => {
        for (let i = 0; i < 200; i++) await Promise.resolve()
      })
      yield* Fiber.interrupt(stuck)
      vi.useRealTimers()
      // real timers again: a call of 40 attempts (a few turns of the loop) ends
      const after = yield* Effect.timeoutOption(Effect.flip(call("after")), "2 seconds")
      expect(Option.isSome(after)).toBe(true)
    })
  )

  it.live(
    "300 calls spinning at once: timers still run every few attempts, and the timeouts end near the deadline",
    () =>
      Effect.gen(function* () {
        const call = yield* Retry.retryWithCallback(empty, {
          timeout: "300 millis",
          callback: () => ({ keepTrying: true })
        })
        let ticks = 0
        const start = Date.now()
        let last = 0
        yield* Effect.acquireUseRelease(
          Effect.sync(() => setInterval(() => ticks++, 10)),
          () =>
            Effect.forEach(
              Array.from({ length: 300 }),
              () =>
                Effect.tap(
                  Effect.exit(call("hi")),
                  Effect.sync(() => {
                    last = Date.now() - start
                  })
                ),
              { concurrency: "unbounded", discard: true }
            ),
          (interval) => Effect.sync(() => clearInterval(interval))
        )
        // with a turn every 16 attempts per call (not per process), 300 calls let a 10 ms interval fire 2-4 times
        expect(ticks).toBeGreaterThanOrEqual(10)
        // a generous bound for a busy machine (per call, the last ended at 550-600 ms)
        expect(last).toBeLessThan(1_300)
      })
  )

  it.live("timers run during the retry loop, the timeout fires on time, and the error keeps every error", () =>
    Effect.gen(function* () {
      let ticks = 0
      // the ticks the retry's callback has seen, while its attempts go on
      let ticksSeen = 0
      const call = yield* Retry.retryWithCallback(empty, {
        timeout: "300 millis",
        callback: () => {
          ticksSeen = ticks
          return { keepTrying: true }
        }
      })
      const start = Date.now()
      const error = yield* Effect.acquireUseRelease(
        Effect.sync(() => setInterval(() => ticks++, 10)),
        () => Effect.flip(call("hi")),
        (interval) => Effect.sync(() => clearInterval(interval))
      )
      const took = Date.now() - start
      expect(error.timedOut).toBe(true)
      // a 10 ms interval fired several times between attempts (starved, it fired once, after the deadline)
      expect(ticksSeen).toBeGreaterThanOrEqual(3)
      // near the deadline (starved, the timer fired seconds late); a generous bound for a busy machine
      expect(took).toBeGreaterThanOrEqual(290)
      expect(took).toBeLessThan(1300)
      expect(error.attempts).toBeGreaterThan(100)
      expect(error.errors.length).toBe(error.attempts)
      expect(error.errors.every((e) => e._tag === "NoEndpoints")).toBe(true)
      // one NoEndpoints value for every attempt: a long spin keeps an array of references, not of errors
      expect(new Set(error.errors).size).toBe(1)
      expect(error.message).toBe(`timed out after ${error.attempts} attempts: retry timed out after 300ms`)
    })
  )

  it.live("a retry waiting for an instance picks it up when it is registered meanwhile", () =>
    Effect.gen(function* () {
      const client = yield* EtcdClient.EtcdClient
      const subscriber = yield* Subscriber.make<string, string>({
        prefix: "/late/",
        factory: (instance) => Effect.succeed((request: string) => Effect.succeed(`${instance} got ${request}`))
      })
      const call = yield* Retry.retryWithCallback(Balancer.roundRobin(subscriber), {
        timeout: "1 second",
        callback: () => ({ keepTrying: true })
      })
      // registered by another fiber 50 ms into the call (starved, the put came after the deadline)
      yield* Effect.forkScoped(Effect.delay(Effect.orDie(client.put("/late/a", "a")), "50 millis"))
      expect(yield* call("hi")).toBe("a got hi")
    }).pipe(onMemory)
  )
})
