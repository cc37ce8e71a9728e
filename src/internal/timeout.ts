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
import type * as Cause from "effect/Cause"
import * as Clock from "effect/Clock"
import * as Context from "effect/Context"
import * as DefaultServices from "effect/DefaultServices"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import type * as Fiber from "effect/Fiber"
import * as FiberId from "effect/FiberId"
import * as FiberRef from "effect/FiberRef"
import * as FiberRefs from "effect/FiberRefs"
import * as Option from "effect/Option"
import * as Runtime from "effect/Runtime"
import * as RuntimeFlags from "effect/RuntimeFlags"
import * as Supervisor from "effect/Supervisor"
import { inNextTurn } from "./nextTurn.js"

/** The child's flags: interruptible, yielding; the same for every call. */
const childFlags = RuntimeFlags.make(RuntimeFlags.Interruption, RuntimeFlags.CooperativeYielding)

/**
 * The clock of a runtime that provides none of its own (Node's timers), read
 * once, from a fiber: the services a fiber starts with are shared by every copy
 * of `effect` loaded (the ESM and CommonJS builds, two versions), and come from
 * the copy loaded first, which need not be this one's `liveServices`.
 */
let liveClock: Clock.Clock | undefined = undefined
const isLive = (clock: Clock.Clock): boolean => clock === (liveClock ??= runAside(Effect.clock))

/**
 * `effect` run at once in a fiber of a runtime with no services of its own and the
 * child's flags: without the runtime metrics of `Effect.runSync`'s default runtime,
 * so that reading what this module needs once counts no fiber in Effect's metrics.
 */
const runAside = <A>(effect: Effect.Effect<A>): A =>
  Runtime.runSync(Runtime.make({ context: Context.empty(), runtimeFlags: childFlags, fiberRefs: FiberRefs.empty() }))(
    effect
  )

/** Start the child at once, in the caller's turn. */
const immediately: Runtime.RunForkOptions = { immediate: true }

/**
 * The child's fiber refs: the caller's, forked as `Runtime.runFork` forks a
 * runtime's refs (`FiberRefs.forkAs`, as the child's own id), without making a
 * `Runtime` from them per call. Forking every ref per call, inside
 * `Runtime.runFork` and behind a `Runtime` made per call, was most of a fiber's
 * cost: a child that finishes at once took 5.0-5.3 µs, 1.6-1.7 µs without it (a
 * plain-node probe, 200,000 calls, median of 7).
 *
 * Fiber refs are immutable (setting one makes a new set), so the caller's set is
 * read as it is, where the fiber keeps it in `_fiberRefs` as Effect 3's
 * `FiberRuntime` does (elsewhere through `getFiberRefs()`, which copies it: a new
 * set each call), and synced first, as `getFiberRefs()` does, when the runtime
 * flags it holds are not the caller's.
 *
 * Each child's refs are the set forked as its own id, as before, unless every ref
 * of the set is one of Effect's own, whose forks are functions of their values
 * without effects ({@link forksPurely}). The first child from such a set is forked
 * from it; when that changed nothing, the next children get the set itself, which
 * is what forking would give them. A set with any other ref (a user's, whose fork
 * or differ may make a new value, read the time or count) is forked for every
 * child.
 *
 * A set that lacks this copy of Effect's context ref (the caller runs on an Effect
 * whose refs are not this one's) goes through `Runtime.make` with the caller's
 * context, as before.
 *
 * Children get the set {@link quiet}: with no level to log an unhandled error at.
 *
 * The set kept is the last caller's, and so is the runtime made from its context
 * when a child starts through `Runtime.runFork` (the context a supervisor's
 * `onStart` is given), until the event loop's next turn: what a caller's refs
 * hold (its services, its span) is not kept past it.
 */
let callerRefs: FiberRefs.FiberRefs | undefined = undefined
/** The runtime flags `callerRefs` holds (the caller's, when it was read). */
let callerFlags: RuntimeFlags.RuntimeFlags | undefined = undefined
/** `callerRefs` {@link quiet}, as the children get them; made for the first child. */
let quietRefs: FiberRefs.FiberRefs | undefined = undefined
/**
 * How children get `callerRefs`: not known before the first child (every ref forks as a
 * function of its value), the set itself, each a fork of it, or through `Runtime.make`.
 */
let refsMode: "first" | "shared" | "forked" | "foreign" = "first"
/** Whether `callerRefs` hold a supervisor, which is told of each child as `Runtime.runFork` tells it. */
let callerSupervised = false
let callerContext: Context.Context<never> | undefined = undefined
let childRuntime: Runtime.Runtime<never> | undefined = undefined
let forgetting = false

/** (`refsMode` and `callerSupervised` are read again with the next caller's refs.) */
const forget = (): void => {
  forgetting = false
  callerRefs = callerFlags = quietRefs = callerContext = childRuntime = undefined
}

/**
 * `refs` with no level to log an unhandled error at (Effect's
 * `unhandledErrorLogLevel`, `Debug` unless set): a fiber that ends failed logs
 * "Fiber terminated with an unhandled error" at that level, and an attempt's
 * failure is its caller's to take (a further attempt, or the call's error), as
 * with `Effect.timeout`, whose fibers never fail. Running the attempt under
 * `Effect.exit`, as `Effect.timeout` does, would be a step more in every child.
 * The fibers an attempt forks inherit it, as they inherit the rest of its refs.
 */
const quiet = (refs: FiberRefs.FiberRefs): FiberRefs.FiberRefs =>
  Option.isNone(FiberRefs.getOrDefault(refs, FiberRef.unhandledErrorLogLevel))
    ? refs
    : FiberRefs.updateAs(refs, {
        fiberId: FiberId.none,
        fiberRef: FiberRef.unhandledErrorLogLevel,
        value: Option.none()
      })

/** The fiber's refs as they are: immutable, so their identity says when they changed. */
const refsOf = (fiber: Fiber.RuntimeFiber<unknown, unknown>): FiberRefs.FiberRefs => {
  const own = (fiber as unknown as { readonly _fiberRefs?: FiberRefs.FiberRefs | undefined })._fiberRefs
  return typeof own === "object" && own !== null && own.locals instanceof Map ? own : fiber.getFiberRefs()
}

/** The runtime flags a set of refs holds, if any. */
const flagsIn = (refs: FiberRefs.FiberRefs): RuntimeFlags.RuntimeFlags | undefined =>
  refs.locals.get(FiberRef.currentRuntimeFlags)?.[0][1]

/**
 * Effect's own refs, whose forks are functions of their values without effects:
 * `identity` through the update differ, a differ's empty patch (the context, the
 * runtime flags, the supervisor, the loggers), the empty cause. Any other ref may
 * fork through user code: a `fork` of its own, or a custom differ's `patch`.
 */
export const forksPurely: ReadonlySet<unknown> = new Set<unknown>([
  FiberRef.currentContext,
  FiberRef.currentRuntimeFlags,
  FiberRef.currentSupervisor,
  FiberRef.currentScheduler,
  FiberRef.currentLoggers,
  FiberRef.currentLogAnnotations,
  FiberRef.currentLogLevel,
  FiberRef.currentMinimumLogLevel,
  FiberRef.currentLogSpan,
  FiberRef.currentConcurrency,
  FiberRef.currentMaxOpsBeforeYield,
  FiberRef.currentSchedulingPriority,
  FiberRef.currentRequestBatchingEnabled,
  FiberRef.currentRequestCache,
  FiberRef.currentRequestCacheEnabled,
  FiberRef.currentMetricLabels,
  FiberRef.currentTracerEnabled,
  FiberRef.currentTracerTimingEnabled,
  FiberRef.currentTracerSpanAnnotations,
  FiberRef.currentTracerSpanLinks,
  FiberRef.unhandledErrorLogLevel,
  FiberRef.versionMismatchErrorLogLevel,
  FiberRef.interruptedCause,
  DefaultServices.currentServices
])

const modeOf = (refs: FiberRefs.FiberRefs): typeof refsMode => {
  if (!refs.locals.has(FiberRef.currentContext)) return "foreign"
  for (const ref of refs.locals.keys()) if (!forksPurely.has(ref)) return "forked"
  return "first"
}

/** Whether `forked` holds every ref of `refs` as it was: no fork changed a value. */
const unchanged = (forked: FiberRefs.FiberRefs, refs: FiberRefs.FiberRefs): boolean => {
  for (const [ref, stack] of forked.locals) if (refs.locals.get(ref) !== stack) return false
  return true
}

/** The child's refs (given its id), in place of those `Runtime.runFork` made from the (empty) runtime's. */
const childRefs = (_: FiberRefs.FiberRefs, childId: FiberId.Runtime): FiberRefs.FiberRefs => {
  const refs = (quietRefs ??= quiet(callerRefs!))
  if (refsMode === "shared") return refs
  const forked = FiberRefs.forkAs(refs, childId)
  if (refsMode === "first") refsMode = unchanged(forked, refs) ? "shared" : "forked"
  return forked
}

const forkWithCallerRefs: Runtime.RunForkOptions = { immediate: true, updateRefs: childRefs }

/** A set of refs holds a supervisor other than none (the default). */
const supervisedBy = (refs: FiberRefs.FiberRefs): boolean => {
  const supervisor = refs.locals.get(FiberRef.currentSupervisor)?.[0][1]
  return supervisor !== undefined && supervisor !== Supervisor.none
}

/** Effect 3's fiber class, as `Runtime.runFork` makes and starts one. */
type FiberClass = new (
  id: FiberId.Runtime,
  refs: FiberRefs.FiberRefs,
  flags: RuntimeFlags.RuntimeFlags
) => StartableFiber<unknown, unknown>
interface StartableFiber<A, E> extends Fiber.RuntimeFiber<A, E> {
  readonly start: (effect: Effect.Effect<A, E, never>) => void
}

/**
 * Whether `candidate` makes and starts a fiber as `Runtime.runFork` does underneath
 * (Effect 3's `FiberRuntime`): a class of three parameters (an id, a set of refs,
 * runtime flags) with a `start` that runs an effect at once, checked by starting a
 * fiber that succeeds at once, as the child would be.
 */
export const startsFibers = (candidate: unknown): candidate is FiberClass => {
  if (typeof candidate !== "function" || candidate.length !== 3) return false
  const prototype: unknown = candidate.prototype
  if (typeof prototype !== "object" || prototype === null || !("start" in prototype)) return false
  if (typeof prototype.start !== "function") return false
  try {
    const id = FiberId.unsafeMake()
    const answer = {}
    const probe = new (candidate as FiberClass)(id, FiberRefs.empty(), childFlags)
    probe.start(Effect.succeed(answer))
    const exit = probe.unsafePoll()
    return probe.id() === id && exit !== null && Exit.isSuccess(exit) && exit.value === answer
  } catch {
    return false
  }
}

/** This copy of Effect's fiber class, when it passes {@link startsFibers}; read on first use. */
let ownFiberClass: FiberClass | null | undefined = undefined
/**
 * The class to make the child of `parent` with: this copy of Effect's own fiber
 * class, when the caller's fiber is one of it and the class passes
 * {@link startsFibers}. A caller on another copy (the CommonJS build beside the ESM
 * one, whose supervisor and runtime flags are refs of their own that this copy
 * does not read) or a class of another shape (a later Effect) gets `undefined`:
 * its child starts through `Runtime.runFork`, as before.
 */
export const fiberClassOf = (parent: Fiber.RuntimeFiber<unknown, unknown>): FiberClass | undefined => {
  if (ownFiberClass === undefined) {
    const own = runAside(Effect.withFiberRuntime((fiber) => Effect.succeed(fiber.constructor)))
    ownFiberClass = startsFibers(own) ? own : null
  }
  return ownFiberClass !== null && parent.constructor === ownFiberClass ? ownFiberClass : undefined
}

/**
 * `self` started at once in a child fiber of the caller `parent` (whose runtime flags
 * are `flags`), with the caller's refs and context.
 *
 * The child is made by this copy of Effect's fiber class (the caller's own) and
 * started, as `Runtime.runFork` makes and starts a fiber underneath, without what
 * `runFork` adds that an attempt has no use for: a map of the (empty) runtime's refs
 * that `childRefs` replaces, and the global scope's set of root fibers with its
 * observer (an attempt is its caller's, as a fiber forked with `Effect.fork` is:
 * `Fiber.roots` does not list it). A child started by `runFork` from one runtime per
 * caller context took 1355-1495 ns in a probe, 540-597 ns made this way; a retried
 * call's overhead went from 1554-3528 to 1066-2667 ns (fourteen runs of one process
 * timing both, interleaved). A caller under a supervisor (told of every fiber
 * started), a caller on another copy of Effect, and a fiber class that does not pass
 * {@link startsFibers} take `Runtime.runFork`.
 */
const forkChild = <A, E, R>(
  parent: Fiber.RuntimeFiber<unknown, unknown>,
  flags: RuntimeFlags.RuntimeFlags,
  self: Effect.Effect<A, E, R>
): Fiber.RuntimeFiber<A, E> => {
  const context = parent.currentContext
  let refs = refsOf(parent)
  // (the runtime is made and forgotten with the context it was made for)
  if (refs !== callerRefs || flags !== callerFlags || context !== callerContext) {
    if (refs !== callerRefs || flags !== callerFlags) {
      // the caller's flags, as `getFiberRefs()` records them (a fiber the child starts hands them back on join)
      if (flagsIn(refs) !== flags) refs = parent.getFiberRefs()
      callerRefs = refs
      callerFlags = flagsIn(refs)
      quietRefs = undefined
      refsMode = modeOf(refs)
      callerSupervised = supervisedBy(refs)
    }
    if (context !== callerContext) {
      childRuntime = undefined
      callerContext = context
    }
    if (!forgetting) {
      forgetting = true
      inNextTurn(forget)
    }
  }
  if (refsMode === "foreign") {
    const runtime = Runtime.make({ context, runtimeFlags: childFlags, fiberRefs: (quietRefs ??= quiet(refs)) })
    return Runtime.runFork(runtime as Runtime.Runtime<R>, self, immediately)
  }
  if (!callerSupervised) {
    const FiberClass = fiberClassOf(parent)
    if (FiberClass !== undefined) {
      const childId = FiberId.unsafeMake()
      const child = new FiberClass(childId, childRefs(callerRefs!, childId), childFlags) as StartableFiber<A, E>
      child.start(self as Effect.Effect<A, E>)
      return child
    }
  }
  childRuntime ??= Runtime.make({ context, runtimeFlags: childFlags, fiberRefs: FiberRefs.empty() })
  return Runtime.runFork(childRuntime as Runtime.Runtime<R>, self, forkWithCallerRefs)
}

/**
 * `self` started at once in a further child of the caller, after its child `prev`
 * failed: with `prev`'s refs as they ended, taken over as they are (not forked), so
 * that what one attempt set (a fiber ref) the next one sees, as when every attempt
 * ran in one fiber. Made as {@link forkChild} makes a child: by this copy's fiber
 * class when `prev` is one of it and no supervisor is to be told, else through
 * `Runtime.runFork`.
 */
const spawnAfter = <A, E>(
  prev: Fiber.RuntimeFiber<unknown, unknown>,
  self: Effect.Effect<A, E>
): Fiber.RuntimeFiber<A, E> => {
  const refs = prev.getFiberRefs()
  const FiberClass = supervisedBy(refs) ? undefined : fiberClassOf(prev)
  if (FiberClass !== undefined) {
    const child = new FiberClass(FiberId.unsafeMake(), refs, childFlags)
    child.start(self as Effect.Effect<unknown, unknown>)
    return child as Fiber.RuntimeFiber<A, E>
  }
  const runtime = Runtime.make({ context: prev.currentContext, runtimeFlags: childFlags, fiberRefs: FiberRefs.empty() })
  return Runtime.runFork(runtime, self, { immediate: true, updateRefs: () => refs })
}

/**
 * `self`, and when it fails `recover(cause)`, under one timeout, for a caller
 * running in its fiber `parent` (with the runtime flags `flags`), as in
 * `Effect.withFiberRuntime`: the effect for the caller to run in place of `self`.
 *
 * `self` runs in a child fiber by itself, with no frame around it to catch its
 * failure (a further step of Effect's run loop in every child); when it fails,
 * `recover` runs in a further child, under the same timer: at once when `self`
 * failed at once, else as soon as it failed (the caller still waits). Its failure
 * is the call's.
 *
 * The effect is started, and its timer armed, before this returns: a caller
 * interrupted before it waits for the effect (while it yields to other fibers)
 * leaves the effect to be interrupted at the deadline, not running on unwatched.
 */
export const timeoutFailIn = <A, E, R, E2, E3, C>(
  parent: Fiber.RuntimeFiber<unknown, unknown>,
  flags: RuntimeFlags.RuntimeFlags,
  self: Effect.Effect<A, E, R>,
  duration: Duration.Duration,
  onTimeout: (context: C) => E2,
  context: C,
  recover: (cause: Cause.Cause<E>, context: C) => Effect.Effect<A, E3>
): Effect.Effect<A, E2 | E3> => {
  let child: Fiber.RuntimeFiber<A, E | E3> = forkChild(parent, flags, self)
  let done = child.unsafePoll()
  let recovered = false
  if (done !== null && done._tag === "Failure") {
    recovered = true
    child = spawnAfter(child, recover(done.cause as Cause.Cause<E>, context))
    done = child.unsafePoll()
  }
  // (a failure of `self` is never the call's: it was recovered, or is recovered from once the caller waits)
  if (done !== null) return done as Exit.Exit<A, E3>
  const deadline = new Deadline<A, E | E3, E2>(parent.id(), child, () => onTimeout(context))
  if (!recovered) deadline.recover = (cause) => recover(cause as Cause.Cause<E>, context)
  const live = isLive(Context.get(parent.getFiberRef(DefaultServices.currentServices), Clock.Clock))
  deadline.arm(
    duration,
    live
      ? undefined
      : Runtime.make({ context: parent.currentContext, runtimeFlags: childFlags, fiberRefs: parent.getFiberRefs() })
  )
  return Effect.async<A, E | E3 | E2>((resume) => deadline.wait(resume)) as Effect.Effect<A, E2 | E3>
}

/**
 * One call's race between its effect (the child fiber) and its timer: a Node.js
 * timer when the caller's clock is the live one, else a fiber sleeping on that
 * clock. A class, and no named closures made per call: each costs a `__name`
 * call under keep-names transpilers (tsx). A timer fiber per call cost about
 * half of a call's time to an endpoint that answers after a promise (a fiber
 * forked, started, interrupted and its interruption run).
 *
 * The call is over when the child is: with the child's exit, or, when the
 * timer fired first (the child interrupted then), with the timeout's error;
 * either way only once the child's finalizers have run. A first child that
 * fails (in time, its caller not interrupted) is followed by the one that recovers
 * from its failure, which the deadline then watches under the same timer. The caller's
 * interruption interrupts the child and waits for it the same way. The child
 * is watched through its own observer, never through `Fiber.await`, whose
 * observer would hold the caller.
 *
 * The deadline never holds the caller's fiber, only its id: a caller
 * interrupted before it waits is gone at once, even while its attempt runs on
 * to the deadline. Once the child is over, the deadline lets go of all it
 * held: the child, the timeout's error maker and the caller's resumption. Effect keeps a fiber's observers in an array that V8 soon
 * allocates straight in the old generation (most fibers of a running
 * application live long), and such an array keeps what it points to through
 * every young collection until the next full one, our observer (this
 * deadline) included. Holding the call past its end made young collections
 * copy and promote megabytes: a retried call to an endpoint answering after a
 * promise cost 25-26 µs over the call, 16 once the deadline let go (two
 * alternating `BENCH_ONLY=6` pairs).
 */
class Deadline<A, E, E2> {
  private handle: ReturnType<typeof setTimeout> | undefined = undefined
  private timer: Fiber.RuntimeFiber<void> | undefined = undefined
  /** The timeout's error, made when the timer fired (what the call had done by then). */
  private timedOut: { readonly error: E2 } | undefined = undefined
  /** The call's outcome, once the child is over (kept: the effect, run again after it, answers it again). */
  private outcome: Effect.Effect<A, E | E2> | undefined = undefined
  /** The caller, waiting for the outcome. */
  private waiter: ((effect: Effect.Effect<A, E | E2>) => void) | undefined = undefined
  /** The caller's interruption, waiting for the child to be over. */
  private stopped: (() => void) | undefined = undefined
  /**
   * What runs when the child fails before the time is up and the caller is not
   * interrupted: the call goes on in a further child ({@link spawnAfter}), under the
   * same timer. Used once (the further child runs every later attempt).
   */
  recover: ((cause: Cause.Cause<E>) => Effect.Effect<A, E>) | undefined = undefined

  constructor(
    /** The caller's id: the interruptions it makes are the caller's. */
    private readonly callerId: FiberId.FiberId,
    private child: Fiber.RuntimeFiber<A, E> | undefined,
    private onTimeout: (() => E2) | undefined
  ) {}

  /**
   * Watches the child and starts the timer: a Node.js timer on the caller's live
   * clock, else a fiber of `sleeper` (the child's runtime) sleeping on its clock.
   */
  arm(duration: Duration.Duration, sleeper: Runtime.Runtime<never> | undefined): void {
    this.child!.addObserver((exit) => this.done(exit))
    if (this.outcome !== undefined) return
    if (sleeper === undefined) {
      this.handle = setTimeout(expire, Duration.toMillis(duration), this)
    } else {
      // another clock (TestClock): its sleep, in a fiber of its own
      const timer = Runtime.runFork(sleeper, Effect.sleep(duration), immediately)
      this.timer = timer
      timer.addObserver((exit) => {
        if (Exit.isSuccess(exit)) this.expire()
      })
    }
  }

  /** The caller waits for the outcome; the canceler is for its interruption meanwhile. */
  wait(resume: (effect: Effect.Effect<A, E | E2>) => void): Effect.Effect<void> | undefined {
    if (this.outcome !== undefined) {
      resume(this.outcome)
      return undefined
    }
    this.waiter = resume
    return Effect.suspend(() => this.interrupted())
  }

  /**
   * The child is over: the call's outcome is known, and the deadline holds nothing
   * more; or the child failed, and the call goes on in the next one.
   */
  done(exit: Exit.Exit<A, E>): void {
    const recover = this.recover
    if (recover !== undefined && exit._tag === "Failure" && this.timedOut === undefined && this.stopped === undefined) {
      this.recover = undefined
      const child = spawnAfter(this.child!, recover(exit.cause))
      this.child = child
      child.addObserver((exit) => this.done(exit))
      return
    }
    this.recover = undefined
    this.stopTimer()
    const outcome = this.timedOut === undefined ? exit : Effect.fail(this.timedOut.error)
    this.outcome = outcome
    const waiter = this.waiter
    const stopped = this.stopped
    this.child = this.onTimeout = this.timer = undefined
    this.waiter = this.stopped = this.timedOut = undefined
    if (stopped !== undefined) stopped()
    else if (waiter !== undefined) waiter(outcome)
  }

  /** The time is up: the child is interrupted; the call fails once it is over. */
  expire(): void {
    if (this.outcome !== undefined || this.timedOut !== undefined || this.stopped !== undefined) return
    this.timedOut = { error: this.onTimeout!() }
    this.child!.unsafeInterruptAsFork(this.callerId)
  }

  /**
   * The caller was interrupted while it waited: the child is too, and the
   * caller's interruption waits for it to be over. The child may have ended just
   * before (its exit and the interruption crossed): nothing is left to stop.
   */
  interrupted(): Effect.Effect<void> {
    this.waiter = undefined
    if (this.outcome !== undefined) return Effect.void
    this.stopTimer()
    // no further child once the caller is interrupted: its child's failure may come before
    // `stopped` is set below (the caller may yield to other fibers in between)
    this.recover = undefined
    return Effect.async<void>((resume) => {
      if (this.outcome !== undefined) return resume(Effect.void)
      this.stopped = () => resume(Effect.void)
      this.child!.unsafeInterruptAsFork(this.callerId)
    })
  }

  private stopTimer(): void {
    if (this.handle !== undefined) clearTimeout(this.handle)
    this.handle = undefined
    this.timer?.unsafeInterruptAsFork(this.callerId)
  }
}

const expire = (deadline: { expire(): void }): void => deadline.expire()
