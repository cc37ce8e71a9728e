/**
 * What a subscriber worker knows about its subscriber's view, and the
 * conditions the benchmark waits on (an instance present / absent, N
 * instances, exactly a given set), each stamped with the monotonic clock at
 * the moment the subscriber's view first satisfies it.
 *
 * Both implementations feed the same tracker: ours from the endpoint factory,
 * its finalizer and the endpoints SubscriptionRef, the raw baseline from its
 * Map. Per change the tracker does O(1) work, so it costs both sides the same
 * and never grows with N.
 */
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

export class Tracker {
  private view: ViewSnapshot = { size: 0, has: () => false, values: () => [] }
  private readonly waiters = new Set<Waiter>()
  private expected: ReadonlySet<string> | undefined
  /** |view \ expected| + |expected \ view|, kept up to date by `added` / `removed` while a set is armed. */
  private mismatch = 0
  private setWaiter: { readonly resolve: (at: bigint) => void } | undefined

  /** An instance entered the subscriber's state (ours: the factory ran; raw: a Map entry was set). */
  added(value: string): void {
    if (this.expected === undefined) return
    this.mismatch += this.expected.has(value) ? -1 : 1
    if (this.mismatch === 0) this.checkSet()
  }

  /** An instance left the subscriber's state (ours: its endpoint's scope closed; raw: a Map entry was deleted). */
  removed(value: string): void {
    if (this.expected === undefined) return
    this.mismatch += this.expected.has(value) ? 1 : -1
    if (this.mismatch === 0) this.checkSet()
  }

  /** The subscriber published a new view (ours: the endpoints ref changed; raw: a watch batch was applied). */
  changed(view: ViewSnapshot): void {
    this.view = view
    if (this.waiters.size > 0) {
      for (const w of this.waiters) {
        if (w.test(view)) {
          this.waiters.delete(w)
          w.resolve(now())
        }
      }
    }
    if (this.mismatch === 0) this.checkSet()
  }

  private checkSet(): void {
    if (this.setWaiter !== undefined && this.expected !== undefined && this.view.size === this.expected.size) {
      const w = this.setWaiter
      this.setWaiter = undefined
      w.resolve(now())
    }
  }

  /** Resolves with the time the view first satisfies `test` (at once when it already does). */
  until(test: (view: ViewSnapshot) => boolean): Promise<bigint> {
    if (test(this.view)) return Promise.resolve(now())
    return new Promise((resolve) => this.waiters.add({ test, resolve }))
  }

  /**
   * Arms a wait for the view to equal `expected`: O(N) here, O(1) per change
   * afterwards. Resolves with the time the view first equals it.
   */
  untilSet(expected: ReadonlySet<string>): Promise<bigint> {
    this.expected = expected
    let mismatch = 0
    let inView = 0
    for (const v of this.view.values()) {
      if (expected.has(v)) inView++
      else mismatch++
    }
    this.mismatch = mismatch + (expected.size - inView)
    return new Promise((resolve) => {
      this.setWaiter = { resolve }
      if (this.mismatch === 0) this.checkSet()
    })
  }

  /** Disarms the set wait and says whether the current view is exactly the set (checked in full). */
  verifySet(): boolean {
    const expected = this.expected
    this.expected = undefined
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
