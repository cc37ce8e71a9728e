/**
 * The registrar's locks: permits taken at once when free, waited for when not,
 * and given back however the locked effect ends.
 */
import { describe, expect, it } from "@effect/vitest"
import * as Deferred from "effect/Deferred"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Fiber from "effect/Fiber"
import * as Option from "effect/Option"
import { withPermits } from "../src/internal/lock.js"

describe("withPermits", () => {
  it.effect("runs at once when the permits are free, and waits for them when they are not", () =>
    Effect.gen(function* () {
      const semaphore = yield* Effect.makeSemaphore(3)
      const shared = withPermits(semaphore, 1)
      const exclusive = withPermits(semaphore, 3)
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
      expect(Option.isSome(yield* semaphore.withPermitsIfAvailable(3)(Effect.void))).toBe(true)
    })
  )

  it.effect("gives the permits back when the locked effect fails, dies or is interrupted", () =>
    Effect.gen(function* () {
      const semaphore = yield* Effect.makeSemaphore(1)
      const locked = withPermits(semaphore, 1)
      const free = Effect.map(semaphore.withPermitsIfAvailable(1)(Effect.void), Option.isSome)
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
})
