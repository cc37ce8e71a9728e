/**
 * A timeout that costs nothing when the effect finishes at once.
 *
 * `Effect.timeoutFail` forks two fibers and hops through the scheduler on
 * every call, tens of microseconds even when the effect is done at once. Here
 * the effect starts synchronously in a child fiber of the same runtime; when it
 * is already done (a synchronous endpoint, a cached answer) its exit is
 * returned at once. Only an effect that really suspends pays for the timer
 * and is interrupted when it fires. On the live clock the timer is a Node.js
 * timer, cleared when the effect ends; under any other clock (`TestClock`) it
 * is that clock's `sleep`, run in a fiber of its own so that the clock drives
 * it. (A sleeping fiber on the live clock too made a call to an endpoint that
 * answers after a promise twice as slow: 59-65 µs against 28-29.) As with
 * `Effect.timeout`, the timeout (or the caller's interruption) is over once
 * the effect's interruption is: its finalizers have run.
 *
 * @internal
 */
import * as Clock from "effect/Clock"
import * as Context from "effect/Context"
import * as DefaultServices from "effect/DefaultServices"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Fiber from "effect/Fiber"
import * as Runtime from "effect/Runtime"
import * as RuntimeFlags from "effect/RuntimeFlags"

/** The child's flags: interruptible, yielding; the same for every call. */
const childFlags = RuntimeFlags.make(RuntimeFlags.Interruption, RuntimeFlags.CooperativeYielding)

/**
 * The clock of a runtime that provides none of its own (Node's timers), read
 * once, from a fiber: the services a fiber starts with are shared by every copy
 * of `effect` loaded (the ESM and CommonJS builds, two versions), and come from
 * the copy loaded first, which need not be this one's `liveServices`.
 */
let liveClock: Clock.Clock | undefined = undefined
const isLive = (clock: Clock.Clock): boolean => clock === (liveClock ??= Effect.runSync(Effect.clock))

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
    const deadline = new Deadline(parent, child, resume, onTimeout)
    child.addObserver((exit) => deadline.done(exit))
    if (deadline.settled) return
    if (isLive(Context.get(parent.getFiberRef(DefaultServices.currentServices), Clock.Clock))) {
      deadline.handle = setTimeout(expire, Duration.toMillis(duration), deadline)
    } else {
      // another clock (TestClock): its sleep, in a fiber of its own
      const timer = Runtime.runFork(runtime as Runtime.Runtime<never>, Effect.sleep(duration), immediately)
      deadline.timer = timer
      timer.addObserver((exit) => {
        if (Exit.isSuccess(exit)) deadline.expire()
      })
    }
    // the caller was interrupted: stop both; its interruption waits for the effect's
    return Effect.suspend(() => deadline.interrupted())
  })
}

/**
 * One call's race between its effect (the child fiber) and its timer: a Node.js
 * timer when the caller's clock is the live one, else a fiber sleeping on that
 * clock. A class and no closures of its own: a named closure made per call
 * costs a `__name` call under keep-names transpilers (tsx), and a timer fiber
 * per call cost about half of a call's time to an endpoint that answers after
 * a promise (a fiber forked, started, interrupted and its interruption run).
 */
class Deadline<A, E, E2> {
  settled = false
  handle: ReturnType<typeof setTimeout> | undefined = undefined
  timer: Fiber.RuntimeFiber<void> | undefined = undefined

  constructor(
    private readonly parent: Fiber.RuntimeFiber<unknown, unknown>,
    private readonly child: Fiber.RuntimeFiber<A, E>,
    private readonly resume: (effect: Effect.Effect<A, E | E2>) => void,
    private readonly onTimeout: () => E2
  ) {}

  /** The effect is over: its exit is the call's. */
  done(exit: Exit.Exit<A, E>): void {
    if (this.settled) return
    this.settled = true
    this.stopTimer()
    this.resume(exit)
  }

  /** The time is up: the call fails once the effect's finalizers have run. */
  expire(): void {
    if (this.settled) return
    this.settled = true
    this.resume(Effect.zipRight(Fiber.interruptAs(this.child, this.parent.id()), Effect.fail(this.onTimeout())))
  }

  /** The caller was interrupted: the effect is too, and the caller's interruption waits for it. */
  interrupted(): Effect.Effect<void> {
    this.settled = true
    this.stopTimer()
    return Effect.asVoid(Fiber.interruptAs(this.child, this.parent.id()))
  }

  private stopTimer(): void {
    if (this.handle !== undefined) clearTimeout(this.handle)
    this.timer?.unsafeInterruptAsFork(this.parent.id())
  }
}

const expire = (deadline: { expire(): void }): void => deadline.expire()
