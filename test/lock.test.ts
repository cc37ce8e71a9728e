/**
 * The registrar's locks: permits taken at once when free, waited for when not,
 * and given back however the locked effect ends.
 */
import { describe, expect, it } from "@effect/vitest"
import * as Deferred from "effect/Deferred"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Fiber from "effect/Fiber"
import { Lock } from "../src/internal/lock.js"

describe("Lock", () => {
  it.effect("runs at once when the permits are free, and waits for them when they are not", () =>
    Effect.gen(function* () {
      const lock = new Lock(3)
      const shared = lock.withPermits(1)
      const exclusive = lock.withPermits(3)
      const log: Array<string> = []
      const release = yield* Deferred.make<void>()
      const holding = yield* Deferred.make<void>()
      const holder = yield* Effect.fork(
        shared(Effect.zipRight(Deferred.succeed(holding, undefined), Deferred.await(release)))
      )
      yield* Deferred.await(holding)
      // another shared holder gets in beside the first; the exclusive one waits for both
      expect(yield* shared(Effect.succeed("beside"))).toBe("beside")
      const trying = yield* Deferred.make<void>()
      const waiter = yield* Effect.fork(
        Effect.zipRight(Deferred.succeed(trying, undefined), exclusive(Effect.sync(() => log.push("exclusive"))))
      )
      // the waiter goes on to the lock in the same run as it says it is trying, and suspends there
      yield* Deferred.await(trying)
      yield* Effect.yieldNow()
      expect(log).toEqual([])
      yield* Deferred.succeed(release, undefined)
      yield* Fiber.join(holder)
      yield* Fiber.join(waiter)
      expect(log).toEqual(["exclusive"])
      expect(lock.tryTake(3)).toBe(true)
    })
  )

  it.effect("gives the permits back when the locked effect fails, dies or is interrupted", () =>
    Effect.gen(function* () {
      const lock = new Lock(1)
      const locked = lock.withPermits(1)
      const free = Effect.sync(() => lock.tryTake(1) && (lock.release(1), true))
      expect(yield* Effect.exit(locked(Effect.fail("no")))).toStrictEqual(Exit.fail("no"))
      expect(yield* free).toBe(true)
      expect(Exit.isFailure(yield* Effect.exit(locked(Effect.die("defect"))))).toBe(true)
      expect(yield* free).toBe(true)
      const started = yield* Deferred.make<void>()
      const fiber = yield* Effect.fork(locked(Effect.zipRight(Deferred.succeed(started, undefined), Effect.never)))
      yield* Deferred.await(started)
      // a waiter interrupted while waiting takes nothing
      const waiting = yield* Effect.fork(locked(Effect.void))
      yield* Fiber.interrupt(waiting)
      yield* Fiber.interrupt(fiber)
      expect(yield* free).toBe(true)
    })
  )

  it.effect("takes and gives back permits outside any effect, and a release lets the waiters in", () =>
    Effect.gen(function* () {
      const lock = new Lock(2)
      expect(lock.tryTake(2)).toBe(true)
      expect(lock.tryTake(1)).toBe(false)
      const log: Array<string> = []
      const one = yield* Effect.fork(lock.withPermits(1)(Effect.sync(() => log.push("one"))))
      const both = yield* Effect.fork(lock.withPermits(2)(Effect.sync(() => log.push("both"))))
      yield* Effect.yieldNow()
      expect(log).toEqual([])
      // one permit back: the waiter for one goes in, the one for two still waits
      lock.release(1)
      yield* Fiber.join(one)
      expect(log).toEqual(["one"])
      yield* Effect.yieldNow()
      expect(log).toEqual(["one"])
      lock.release(1)
      yield* Fiber.join(both)
      expect(log).toEqual(["one", "both"])
      expect(lock.tryTake(2)).toBe(true)
    })
  )

  it.effect("a waiter woken by a release that another takes first waits again, and gets in later", () =>
    Effect.gen(function* () {
      const lock = new Lock(1)
      expect(lock.tryTake(1)).toBe(true)
      const log: Array<string> = []
      const waiter = yield* Effect.fork(lock.withPermits(1)(Effect.sync(() => log.push("waiter"))))
      yield* Effect.yieldNow()
      // released and taken again before the woken waiter runs
      lock.release(1)
      expect(lock.tryTake(1)).toBe(true)
      yield* Effect.yieldNow()
      yield* Effect.yieldNow()
      expect(log).toEqual([])
      lock.release(1)
      yield* Fiber.join(waiter)
      expect(log).toEqual(["waiter"])
    })
  )
})
