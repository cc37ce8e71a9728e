/**
 * A timeout that costs nothing when the effect finishes at once.
 *
 * `Effect.timeoutFail` forks two fibers and hops through the scheduler on
 * every call, tens of microseconds even when the effect is done at once. Here
 * the effect starts synchronously in a child fiber of the same runtime; when it
 * is already done (a synchronous endpoint, a cached answer) its exit is
 * returned at once. Only an effect that really suspends pays for the timer, a
 * `Clock.sleep` run beside it (so `TestClock` drives it), and is interrupted
 * when the timer fires. As with `Effect.timeout`, the timeout (or the caller's
 * interruption) is over once the effect's interruption is: its finalizers have
 * run.
 *
 * @internal
 */
import type * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Fiber from "effect/Fiber"
import * as Runtime from "effect/Runtime"
import * as RuntimeFlags from "effect/RuntimeFlags"

/** The child's flags: interruptible, yielding; the same for every call. */
const childFlags = RuntimeFlags.make(RuntimeFlags.Interruption, RuntimeFlags.CooperativeYielding)

/** Start the child at once, in the caller's turn. */
const immediately: Runtime.RunForkOptions = { immediate: true }

export const timeoutFail = <A, E, R, E2>(
  self: Effect.Effect<A, E, R>,
  duration: Duration.Duration,
  onTimeout: () => E2
): Effect.Effect<A, E | E2, R> =>
  Effect.withFiberRuntime<A, E | E2, R>((parent) => timeoutFailIn(parent, self, duration, onTimeout))

/**
 * {@link timeoutFail} for a caller already in `Effect.withFiberRuntime`: the
 * effect to run in the caller's fiber `parent` in place of `self`.
 */
export const timeoutFailIn = <A, E, R, E2>(
  parent: Fiber.RuntimeFiber<unknown, unknown>,
  self: Effect.Effect<A, E, R>,
  duration: Duration.Duration,
  onTimeout: () => E2
): Effect.Effect<A, E | E2> => {
  const runtime = Runtime.make({
    context: parent.currentContext as never,
    runtimeFlags: childFlags,
    fiberRefs: parent.getFiberRefs()
  }) as Runtime.Runtime<R>
  const child: Fiber.RuntimeFiber<A, E> = Runtime.runFork(runtime, self, immediately)
  const done = child.unsafePoll()
  if (done !== null) return done
  return Effect.async<A, E | E2>((resume) => {
    let settled = false
    let timer: Fiber.RuntimeFiber<void> | undefined = undefined
    child.addObserver((exit) => {
      if (settled) return
      settled = true
      timer?.unsafeInterruptAsFork(parent.id())
      resume(exit)
    })
    if (settled) return
    timer = Runtime.runFork(runtime as Runtime.Runtime<never>, Effect.sleep(duration), immediately)
    timer.addObserver((exit) => {
      if (settled || !Exit.isSuccess(exit)) return
      settled = true
      // the timeout fails once the effect's finalizers have run
      resume(Effect.zipRight(Fiber.interruptAs(child, parent.id()), Effect.fail(onTimeout())))
    })
    // the caller was interrupted: stop both; its interruption waits for the effect's
    return Effect.suspend(() => {
      settled = true
      timer?.unsafeInterruptAsFork(parent.id())
      return Effect.asVoid(Fiber.interruptAs(child, parent.id()))
    })
  })
}
