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
  const deadline = new Deadline(parent, child, runtime, duration, onTimeout)
  return Effect.async<A, E | E2>((resume) => deadline.start(resume))
}

/**
 * One call's race between its effect (the child fiber) and its timer: a Node.js
 * timer when the caller's clock is the live one, else a fiber sleeping on that
 * clock. A class, and no named closures made per call: each costs a `__name`
 * call under keep-names transpilers (tsx). A timer fiber per call cost about
 * half of a call's time to an endpoint that answers after a promise (a fiber
 * forked, started, interrupted and its interruption run).
 *
 * Once the effect is over, the deadline lets go of all it held: the caller's
 * fiber, the child's runtime, the caller's resumption and the timeout's error.
 * Effect keeps a fiber's observers in an array that V8 soon allocates straight
 * in the old generation (most fibers of a running application live long), and
 * such an array keeps what it points to through every young collection until
 * the next full one, our observer (this deadline) included. Holding the call
 * past its end made young collections copy and promote megabytes: a retried
 * call to an endpoint answering after a promise cost 25-26 µs over the call,
 * 16 once the deadline let go (two alternating `BENCH_ONLY=6` pairs).
 */
class Deadline<A, E, R, E2> {
  settled = false
  private handle: ReturnType<typeof setTimeout> | undefined = undefined
  private timer: Fiber.RuntimeFiber<void> | undefined = undefined
  private resume: ((effect: Effect.Effect<A, E | E2>) => void) | undefined = undefined

  constructor(
    private parent: Fiber.RuntimeFiber<unknown, unknown> | undefined,
    private child: Fiber.RuntimeFiber<A, E> | undefined,
    private runtime: Runtime.Runtime<R> | undefined,
    private readonly duration: Duration.Duration,
    private onTimeout: (() => E2) | undefined
  ) {}

  /** The caller waits: the race starts; its canceler is for the caller's interruption. */
  start(resume: (effect: Effect.Effect<A, E | E2>) => void): Effect.Effect<void> | undefined {
    this.resume = resume
    this.child!.addObserver((exit) => this.done(exit))
    if (this.settled) return undefined
    if (isLive(Context.get(this.parent!.getFiberRef(DefaultServices.currentServices), Clock.Clock))) {
      this.handle = setTimeout(expire, Duration.toMillis(this.duration), this)
    } else {
      // another clock (TestClock): its sleep, in a fiber of its own
      const timer = Runtime.runFork(this.runtime as Runtime.Runtime<never>, Effect.sleep(this.duration), immediately)
      this.timer = timer
      timer.addObserver((exit) => {
        if (Exit.isSuccess(exit)) this.expire()
      })
    }
    // the caller was interrupted: stop both; its interruption waits for the effect's
    return Effect.suspend(() => this.interrupted())
  }

  /**
   * The effect is over: its exit is the call's unless the timeout or the
   * caller's interruption came first. Either way the deadline holds nothing more.
   */
  done(exit: Exit.Exit<A, E>): void {
    const first = !this.settled
    this.settled = true
    this.stopTimer()
    const resume = this.resume
    this.parent = this.child = this.runtime = this.onTimeout = this.resume = this.timer = undefined
    if (first) resume!(exit)
  }

  /** The time is up: the call fails once the effect's finalizers have run. */
  expire(): void {
    if (this.settled) return
    this.settled = true
    const child = this.child!
    const parent = this.parent!
    this.resume!(Effect.zipRight(Fiber.interruptAs(child, parent.id()), Effect.fail(this.onTimeout!())))
  }

  /**
   * The caller was interrupted: the effect is too, and the caller's interruption
   * waits for it. The effect may have ended just before (its exit and the
   * interruption crossed): nothing is left to stop.
   */
  interrupted(): Effect.Effect<void> {
    this.settled = true
    this.stopTimer()
    const child = this.child
    const parent = this.parent
    if (child === undefined || parent === undefined) return Effect.void
    return Effect.asVoid(Fiber.interruptAs(child, parent.id()))
  }

  private stopTimer(): void {
    if (this.handle !== undefined) clearTimeout(this.handle)
    this.handle = undefined
    if (this.timer !== undefined && this.parent !== undefined) this.timer.unsafeInterruptAsFork(this.parent.id())
  }
}

const expire = (deadline: { expire(): void }): void => deadline.expire()
