/**
 * The subscriber's rows (a persistent sorted sequence cut into leaves): every
 * read agrees with a sorted Map after any sequence of batches, and a snapshot
 * taken before a batch reads the same after it.
 */
import { describe, expect, it } from "@effect/vitest"
import { type RowEdits, Rows } from "../src/internal/rows.js"

/** A small deterministic generator (mulberry32), so a failure replays. */
const prng = (seed: number) => () => {
  seed = (seed + 0x6d2b79f5) | 0
  let t = Math.imul(seed ^ (seed >>> 15), 1 | seed)
  t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t
  return ((t ^ (t >>> 14)) >>> 0) / 4294967296
}

type Model = Map<string, { readonly value: string; readonly item: number | undefined }>

const sortedEntries = (model: Model) => [...model.entries()].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))

/** Every read of `rows` against the model it should equal. */
const expectEqual = (rows: Rows<number>, model: Model, probes: ReadonlyArray<string>) => {
  const entries = sortedEntries(model)
  const present = entries.filter(([, row]) => row.item !== undefined)
  expect(rows.size).toBe(entries.length)
  expect(rows.presentSize).toBe(present.length)
  expect(rows.keys()).toEqual(entries.map(([key]) => key))
  expect(rows.values()).toEqual(entries.map(([, row]) => row.value))
  expect(rows.items()).toEqual(entries.map(([, row]) => row.item))
  expect(rows.presentItems()).toEqual(present.map(([, row]) => row.item))
  expect(rows.presentKeys()).toEqual(present.map(([key]) => key))
  expect(Array.from({ length: present.length }, (_, i) => rows.presentAt(i))).toEqual(
    present.map(([, row]) => row.item)
  )
  const seen: Array<readonly [string, string, number | undefined]> = []
  rows.forEach((key, value, item) => seen.push([key, value, item]))
  expect(seen).toEqual(entries.map(([key, row]) => [key, row.value, row.item]))
  for (const key of probes) {
    const position = rows.find(key)
    const row = model.get(key)
    if (row === undefined) {
      expect(position).toBe(-1)
    } else {
      expect(position).toBeGreaterThanOrEqual(0)
      expect(rows.valueAt(position)).toBe(row.value)
      expect(rows.itemAt(position)).toBe(row.item)
    }
  }
}

/** A batch of edits in key order, applied to the model too. */
const batch = (model: Model, changes: ReadonlyArray<readonly [string, string | undefined, number | undefined]>) => {
  const byKey = new Map(changes.map(([key, value, item]) => [key, { value, item }]))
  const keys = [...byKey.keys()].sort()
  const edits: RowEdits<number> = {
    keys,
    values: keys.map((key) => byKey.get(key)!.value),
    items: keys.map((key) => byKey.get(key)!.item)
  }
  // what each edit replaces: the row its key had, by the edit's index
  const replaces = keys.flatMap((key, e) => {
    const row = model.get(key)
    return row === undefined ? [] : [[e, row.value, row.item] as const]
  })
  for (const key of keys) {
    const { item, value } = byKey.get(key)!
    if (value === undefined) model.delete(key)
    else model.set(key, { value, item })
  }
  return { edits, replaces }
}

/** `rows` with a batch applied, checking what `apply` says each edit replaced against the model. */
const applyBatch = (
  rows: Rows<number>,
  model: Model,
  changes: ReadonlyArray<readonly [string, string | undefined, number | undefined]>
) => {
  const { edits, replaces } = batch(model, changes)
  const replaced: Array<readonly [number, string, number | undefined]> = []
  const next = rows.apply(edits, (e, value, item) => replaced.push([e, value, item]))
  expect(replaced).toEqual(replaces)
  return next
}

const key = (n: number) => `/svc/${String(n).padStart(6, "0")}`

describe("Rows", () => {
  it("agrees with a sorted map through random batches, and a snapshot never changes", () => {
    const random = prng(7)
    let rows = Rows.empty<number>()
    const model: Model = new Map()
    let item = 0
    for (let round = 0; round < 300; round++) {
      const changes: Array<readonly [string, string | undefined, number | undefined]> = []
      // some batches are large and land in one narrow range (a leaf overflows many times over)
      const wide = random() < 0.8
      const count = random() < 0.1 ? 300 : 1 + Math.floor(random() * 40)
      const base = Math.floor(random() * 3000)
      for (let c = 0; c < count; c++) {
        const k = key(wide ? Math.floor(random() * 3000) : base + Math.floor(random() * 400) * 0.001)
        const r = random()
        // deletes outweigh puts now and then, so leaves shrink and merge as well as grow
        const deleting = round % 50 < 10 ? r < 0.9 : r < 0.35
        changes.push(deleting ? [k, undefined, undefined] : [k, `v${round}`, random() < 0.1 ? undefined : item++])
      }
      const before = rows
      const beforeModel: Model = new Map(model)
      rows = applyBatch(rows, model, changes)
      const probes = [...changes.map(([k]) => k), key(-1), key(999_999), ...[...model.keys()].slice(0, 20)]
      expectEqual(rows, model, probes)
      if (round % 25 === 0) expectEqual(before, beforeModel, probes)
    }
  })

  it("reads rows made from a listing, and a batch after it", () => {
    const n = 1000
    const keys = Array.from({ length: n }, (_, i) => key(i * 2))
    const values = keys.map((k) => `v:${k}`)
    const items = keys.map((_, i) => (i % 7 === 0 ? undefined : i))
    const rows = Rows.fromSorted(keys, values, items)
    const model: Model = new Map(keys.map((k, i) => [k, { value: values[i]!, item: items[i] }]))
    expectEqual(rows, model, [...keys, key(1), key(-1), key(5000)])
    // every other key removed, new ones in between
    const changes: Array<readonly [string, string | undefined, number | undefined]> = []
    for (let i = 0; i < n; i += 2) changes.push([key(i * 2), undefined, undefined])
    for (let i = 0; i < n; i += 3) changes.push([key(i * 2 + 1), "new", 10_000 + i])
    const next = applyBatch(rows, model, changes)
    expectEqual(next, model, [...keys, ...changes.map(([k]) => k)])
    // everything deleted, then one back
    const all = [...model.keys()].map((k): readonly [string, undefined, undefined] => [k, undefined, undefined])
    const empty = applyBatch(next, model, all)
    expectEqual(empty, model, keys.slice(0, 10))
    expectEqual(applyBatch(empty, model, [[key(3), "back", 1]]), model, [key(3), key(4)])
  })

  it("takes a delete of an absent key as a no-op, and an empty batch as no change", () => {
    const rows = Rows.fromSorted([key(1)], ["one"], [1])
    expect(rows.apply({ keys: [], values: [], items: [] })).toBe(rows)
    const model: Model = new Map([[key(1), { value: "one", item: 1 }]])
    expectEqual(applyBatch(rows, model, [[key(2), undefined, undefined]]), model, [key(1), key(2)])
    expectEqual(applyBatch(Rows.empty<number>(), new Map(), [[key(2), undefined, undefined]]), new Map(), [key(2)])
  })
})
