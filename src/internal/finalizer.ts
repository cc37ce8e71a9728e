/**
 * A scope finalizer that runs with the fiber refs of the fiber that added it,
 * as `Effect.addFinalizer`'s does, for less.
 *
 * @internal
 */
import * as Effect from "effect/Effect"
import type * as FiberRefs from "effect/FiberRefs"
import * as Scope from "effect/Scope"

/** Effect 3's fiber runtime, which has this method beside its public interface. */
interface SettableRefs {
  readonly setFiberRefs: (refs: FiberRefs.FiberRefs) => void
}

const settable = (fiber: unknown): fiber is SettableRefs =>
  typeof (fiber as Partial<SettableRefs>).setFiberRefs === "function"

/**
 * Adds `release` to the current scope, to run uninterruptibly with the fiber
 * refs (logger, log level and annotations, tracer and parent span, services)
 * of the fiber that adds it, not those of the fiber that closes the scope.
 *
 * `Effect.addFinalizer` does this by diffing the two fibers' refs both ways
 * and patching the closing fiber with one diff and back with the other: 21 µs
 * of a deregistration warm, 130 µs with the caches cold, against 7 and 70 here
 * (an uncommitted probe, p50 of 350 scope closes, issue 7). Here the closing
 * fiber runs `release` with the adding fiber's refs themselves and gets its own
 * back afterwards. The runtime method that sets a fiber's refs is the one
 * `Effect.addFinalizer` itself uses but is not in Effect's public types: where
 * a fiber lacks it, this is `Effect.addFinalizer`, so a change there costs
 * speed, not correctness.
 */
export const addFinalizer = (release: Effect.Effect<void>): Effect.Effect<void, never, Scope.Scope> =>
  Effect.withFiberRuntime((adder) => {
    if (!settable(adder)) return Effect.addFinalizer(() => release)
    const refs = adder.getFiberRefs()
    const run = Effect.withFiberRuntime<void>((closer) => {
      if (!settable(closer)) return release
      const own = closer.getFiberRefs()
      closer.setFiberRefs(refs)
      return Effect.ensuring(
        release,
        Effect.sync(() => closer.setFiberRefs(own))
      )
    })
    return Effect.flatMap(Scope.Scope, (scope) => Scope.addFinalizer(scope, Effect.uninterruptible(run)))
  })
