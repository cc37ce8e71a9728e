/**
 * The registrar's locks: a semaphore whose permits can also be taken and
 * given back synchronously.
 *
 * @internal
 */
import * as Effect from "effect/Effect"

/**
 * A semaphore of `permits` permits, as Effect's, with two differences. Free
 * permits are taken without a suspension (Effect's `withPermits` always
 * suspends the fiber to take them, even when nobody holds them, and that
 * suspension was most of a lock's cost: 50-60 µs of a deregistration with the
 * caches cold, issue 7). And {@link Lock.tryTake} / {@link Lock.release} take
 * and give back permits outside any effect, for a path that must do a few
 * synchronous things under the lock before its first effect runs (a
 * deregistration that sends its request at once). Who gets the permits is as
 * with Effect's: free permits go to whoever asks, whether or not others wait
 * for more; a release wakes every waiter whose permits are free, and those
 * that lose the race wait again.
 */
export class Lock {
  private taken = 0
  private readonly waiters = new Set<() => void>()

  constructor(readonly permits: number) {}

  /** Takes `n` permits when they are free, at once; says whether it took them. */
  tryTake(n: number): boolean {
    if (this.permits - this.taken < n) return false
    this.taken += n
    return true
  }

  /** Gives back `n` permits taken by {@link tryTake}, and wakes the waiters they may let in. */
  release(n: number): void {
    this.taken -= n
    if (this.waiters.size === 0) return
    for (const wake of Array.from(this.waiters)) wake()
  }

  /** Waits until `n` permits are free, taking none (interruptible: leaves the line). */
  private free(n: number): Effect.Effect<void> {
    return Effect.async<void>((resume) => {
      // freed since the caller looked (it may have yielded in between)
      if (this.permits - this.taken >= n) return resume(Effect.void)
      const wake = () => {
        if (this.permits - this.taken < n) return
        this.waiters.delete(wake)
        resume(Effect.void)
      }
      this.waiters.add(wake)
      return Effect.sync(() => {
        this.waiters.delete(wake)
      })
    })
  }

  /**
   * Runs `self` holding `n` permits, given back however it ends. Only the
   * wait is interruptible (when the caller is): the permits are taken in the
   * same step as the release is set up, so an interruption never keeps them.
   */
  withPermits(n: number): <A, E, R>(self: Effect.Effect<A, E, R>) => Effect.Effect<A, E, R> {
    return (self) =>
      Effect.uninterruptibleMask((restore) => {
        const locked = Effect.ensuring(
          restore(self),
          Effect.sync(() => this.release(n))
        )
        const acquire: Effect.Effect<void> = Effect.suspend(() =>
          this.tryTake(n) ? Effect.void : Effect.zipRight(restore(this.free(n)), acquire)
        )
        return Effect.suspend(() => (this.tryTake(n) ? locked : Effect.zipRight(acquire, locked)))
      })
  }
}
