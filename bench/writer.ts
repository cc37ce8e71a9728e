/**
 * The writer of the benchmark (shared by both sides, not measured itself):
 * fills a prefix with instances in transactions under etcd's limits, and
 * plays a churn of puts and deletes with a fixed number in flight.
 */
import type { Etcd3 } from "etcd3"
import { instance, keyOf } from "./keys.js"

/** etcd's default `--max-txn-ops`. */
const maxTxnOps = 128

/** Runs `tasks` with at most `inflight` at a time. */
export const pool = async (inflight: number, count: number, task: (i: number) => Promise<unknown>): Promise<void> => {
  let next = 0
  const lane = async () => {
    while (next < count) await task(next++)
  }
  await Promise.all(Array.from({ length: Math.min(inflight, count) }, lane))
}

/** Puts instances `from` .. `from + n - 1` under `prefix` (plain keys), in transactions of 128 puts. */
export const populate = async (client: Etcd3, prefix: string, from: number, n: number): Promise<void> => {
  const batches = Math.ceil(n / maxTxnOps)
  await pool(8, batches, async (b) => {
    const success = []
    for (let i = from + b * maxTxnOps; i < Math.min(from + n, from + (b + 1) * maxTxnOps); i++) {
      const value = instance(i)
      success.push({ request_put: { key: Buffer.from(keyOf(prefix, value)), value: Buffer.from(value) } })
    }
    await client.kv.txn({ compare: [], success, failure: [] })
  })
}

/** One change of a churn. */
export interface Op {
  readonly put: boolean
  readonly key: string
  readonly value: string
}

/** Plays `ops` with `inflight` requests in flight. */
export const churn = async (client: Etcd3, ops: ReadonlyArray<Op>, inflight: number): Promise<void> =>
  pool(inflight, ops.length, (i) => {
    const op = ops[i]!
    return op.put ? client.put(op.key).value(op.value).exec() : client.delete().key(op.key).exec()
  })

/**
 * Puts `values` one after another under `prefix`, each once the last is
 * answered; returns the time just before each put.
 */
export const sequence = async (
  client: Etcd3,
  prefix: string,
  values: ReadonlyArray<string>
): Promise<Array<bigint>> => {
  const sent: Array<bigint> = []
  for (const value of values) {
    sent.push(process.hrtime.bigint())
    await client.put(keyOf(prefix, value)).value(value).exec()
  }
  return sent
}

/** Deletes every key under `prefix`. */
export const deletePrefix = async (client: Etcd3, prefix: string): Promise<void> => {
  await client.delete().prefix(prefix).exec()
}
