/**
 * What a subscriber worker knows about its subscriber's view, and the
 * conditions the benchmark waits on (an instance present / absent, N
 * instances, exactly a given set), each stamped with the monotonic clock at
 * the moment the subscriber's view first satisfies it.
 *
 * Both implementations feed the same tracker: ours from the endpoint factory
 * and the endpoints SubscriptionRef, the raw baseline from its Map. Per change
 * the tracker does O(1) work, so it costs both sides the same and never grows
 * with N.
 */
import * as Fs from "node:fs"
import { constants, PerformanceObserver, type PerformanceEntry } from "node:perf_hooks"
import { now } from "./ipc.js"

/** The subscriber's view at one moment. */
export interface ViewSnapshot {
  readonly size: number
  readonly has: (value: string) => boolean
  readonly values: () => Iterable<string>
}

interface Waiter {
  readonly test: (view: ViewSnapshot) => boolean
  readonly resolve: (at: bigint) => void
}

/**
 * Feeds: `added(instance)` when an instance enters the subscriber's state
 * (ours: the endpoint factory ran; raw: a Map entry was set), `changed(view)`
 * when the subscriber publishes a view (ours: the endpoints ref changed; raw: a
 * watch batch was applied).
 *
 * The set wait is O(1) per change: a churn only adds new instances and deletes
 * present ones, so the view equals the expected set exactly when every
 * expected newcomer has been added and the view has the expected size. The
 * full comparison (`verifySet`) runs once, after the measurement.
 */
export class Tracker {
  private view: ViewSnapshot = { size: 0, has: () => false, values: () => [] }
  private readonly waiters = new Set<Waiter>()
  private newcomers: Set<string> | undefined
  private expectedSize = 0
  private expected: ReadonlySet<string> | undefined
  private setWaiter: ((at: bigint) => void) | undefined
  // the sequence wait: values expected to appear in this order, when each did, and its resolve
  private sequence: ReadonlyArray<string> = []
  private seenAt: Array<bigint> = []
  private sequenceWaiter: ((at: ReadonlyArray<bigint>) => void) | undefined
  /** How many views the subscriber published since the last `untilSet`. */
  views = 0

  added(value: string): void {
    if (this.newcomers !== undefined && this.newcomers.delete(value) && this.newcomers.size === 0) this.checkSet()
  }

  changed(view: ViewSnapshot): void {
    this.view = view
    this.views++
    if (this.waiters.size > 0) {
      for (const w of this.waiters) {
        if (w.test(view)) {
          this.waiters.delete(w)
          w.resolve(now())
        }
      }
    }
    if (this.newcomers !== undefined && this.newcomers.size === 0) this.checkSet()
    if (this.sequenceWaiter !== undefined) this.checkSequence()
  }

  private checkSequence(): void {
    const at = now()
    while (this.seenAt.length < this.sequence.length && this.view.has(this.sequence[this.seenAt.length]!)) {
      this.seenAt.push(at)
    }
    if (this.seenAt.length === this.sequence.length) {
      const resolve = this.sequenceWaiter!
      this.sequenceWaiter = undefined
      resolve(this.seenAt)
    }
  }

  /**
   * Arms a wait for `values` to appear in this order (each put after the last
   * was answered, so the watch delivers them in order). Resolves with the time
   * each first appeared in the view. O(1) per change and value, whatever the
   * number of values.
   */
  untilEach(values: ReadonlyArray<string>): Promise<ReadonlyArray<bigint>> {
    this.sequence = values
    this.seenAt = []
    return new Promise((resolve) => {
      this.sequenceWaiter = resolve
      this.checkSequence()
    })
  }

  private checkSet(): void {
    if (this.setWaiter !== undefined && this.view.size === this.expectedSize) {
      const resolve = this.setWaiter
      this.setWaiter = undefined
      resolve(now())
    }
  }

  /** Resolves with the time the view first satisfies `test` (at once when it already does). */
  until(test: (view: ViewSnapshot) => boolean): Promise<bigint> {
    if (test(this.view)) return Promise.resolve(now())
    return new Promise((resolve) => this.waiters.add({ test, resolve }))
  }

  /**
   * Arms a wait for the view to equal `expected` (the present instances minus
   * some, plus `newcomers`). Resolves with the time the view first equals it.
   */
  untilSet(expected: ReadonlySet<string>, newcomers: ReadonlyArray<string>): Promise<bigint> {
    this.expected = expected
    this.expectedSize = expected.size
    this.views = 0
    this.newcomers = new Set(newcomers)
    return new Promise((resolve) => {
      this.setWaiter = resolve
      if (this.newcomers?.size === 0) this.checkSet()
    })
  }

  /** Disarms the set wait and says whether the current view is exactly the set (checked in full). */
  verifySet(): boolean {
    const expected = this.expected
    this.expected = undefined
    this.newcomers = undefined
    this.setWaiter = undefined
    if (expected === undefined) return false
    let n = 0
    for (const v of this.view.values()) {
      if (!expected.has(v)) return false
      n++
    }
    return n === expected.size
  }

  get size(): number {
    return this.view.size
  }
}

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms))

/**
 * CPU time of this process's main thread (the JavaScript thread) in
 * microseconds, from Linux's per-thread scheduler statistics; `undefined`
 * where there are none. The rest of the process's CPU is V8's own threads
 * (garbage collection, compilation) and libuv's.
 */
export const mainThreadCpuMicros = (): number | undefined => {
  try {
    return Number(Fs.readFileSync(`/proc/self/task/${process.pid}/schedstat`, "utf8").split(" ")[0]) / 1000
  } catch {
    return undefined
  }
}

/** Garbage collections in a window: how many young ones (scavenges), their pauses' sum, and the other collections' (ms, wall time). */
export interface GcWindow {
  readonly young: number
  readonly youngMs: number
  readonly otherMs: number
}

/**
 * Counts this process's garbage collections from `reset` on, from a `gc`
 * performance observer (one entry per collection, delivered a task later:
 * read after the process has idled). Young collections are where a
 * subscriber's churn garbage shows: their pause grows with what survives
 * them, not with what was allocated.
 */
export class GcCounter {
  private young = 0
  private youngMs = 0
  private otherMs = 0
  constructor() {
    new PerformanceObserver((list) => {
      for (const entry of list.getEntries()) {
        // the gc entry's `detail` is missing from @types/node 20's PerformanceEntry
        const kind = (entry as PerformanceEntry & { readonly detail?: { readonly kind?: number } }).detail?.kind
        if (kind === constants.NODE_PERFORMANCE_GC_MINOR) {
          this.young++
          this.youngMs += entry.duration
        } else {
          this.otherMs += entry.duration
        }
      }
    }).observe({ entryTypes: ["gc"] })
  }
  reset(): void {
    this.young = 0
    this.youngMs = this.otherMs = 0
  }
  read(): GcWindow {
    return { young: this.young, youngMs: this.youngMs, otherMs: this.otherMs }
  }
}

/** CPU time (user + system) of this process in microseconds. */
export const cpuMicros = (): number => {
  const u = process.cpuUsage()
  return u.user + u.system
}

/**
 * Waits until this process is idle: `windows` consecutive windows of
 * `windowMillis` in which it used less than `thresholdMicros` of CPU. Returns
 * the CPU reading at the start of the first idle window.
 */
export const untilIdle = async (windowMillis = 25, windows = 3, thresholdMicros = 1500): Promise<number> => {
  let quiet = 0
  let mark = cpuMicros()
  let idleSince = mark
  for (;;) {
    await sleep(windowMillis)
    const c = cpuMicros()
    if (c - mark < thresholdMicros) {
      if (quiet === 0) idleSince = mark
      quiet++
      if (quiet >= windows) return idleSince
    } else {
      quiet = 0
    }
    mark = c
  }
}
