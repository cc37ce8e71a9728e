/**
 * What `yield*` of an effect whose answer is known at once delegates to.
 *
 * @internal
 */

/**
 * An iterator done on its first step, with `value`: returned by an effect's
 * `[Symbol.iterator]`, it answers `yield*` in `Effect.gen` without suspending
 * the generator or handing anything to the fiber. Yielding an already-complete
 * `Exit` instead never reaches the run loop either, but it suspends the
 * generator and resumes it with the value, through the fiber's generator step
 * and two more objects.
 */
export class Answered<A> {
  readonly done = true
  constructor(readonly value: A) {}
  next(): IteratorReturnResult<A> {
    return this
  }
}
