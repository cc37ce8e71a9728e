/**
 * The event loop's next turn.
 *
 * @internal
 */
import { setImmediate as timersSetImmediate } from "node:timers"

/**
 * Node's own `setImmediate`, as `node:timers` exports it: a test that fakes
 * timers (vitest's `useFakeTimers`, sinon's) replaces the global one, and what
 * waits for it (an uninterruptible deregistration, a retry's turn) would wait
 * until the test restores it. Elsewhere the global one, else a timer.
 */
const realSetImmediate = typeof timersSetImmediate === "function" ? timersSetImmediate : globalThis.setImmediate

/** Runs `f` in a later turn of the event loop (after the promise jobs queued, timers and I/O). */
export const inNextTurn: (f: () => void) => void =
  typeof realSetImmediate === "function" ? (f) => void realSetImmediate(f) : (f) => void setTimeout(f, 0)
