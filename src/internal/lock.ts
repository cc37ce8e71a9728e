/**
 * A semaphore's permits taken without a suspension when they are free.
 *
 * @internal
 */
import * as Effect from "effect/Effect"
import * as Option from "effect/Option"

/**
 * `semaphore.withPermits(n)(self)`, taking the permits at once when they are
 * free. Effect's `withPermits` always suspends the fiber to take them, even
 * when nobody holds them, and that suspension is most of a lock's cost: 50-60
 * µs of a deregistration with the caches cold (an uncommitted probe, issue 7).
 * Who gets the permits is unchanged: Effect's `withPermits` also takes free
 * permits whether or not others wait for more.
 */
export const withPermits =
  (semaphore: Effect.Semaphore, n: number) =>
  <A, E, R>(self: Effect.Effect<A, E, R>): Effect.Effect<A, E, R> =>
    Effect.flatMap(semaphore.withPermitsIfAvailable(n)(self), (done) =>
      Option.isSome(done) ? Effect.succeed(done.value) : semaphore.withPermits(n)(self)
    )
