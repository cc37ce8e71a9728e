/**
 * The subscriber's instances as a persistent sorted sequence: rows of (key,
 * value, item) in key order, cut into leaves of about {@link target} rows.
 *
 * A batch of changes makes a new `Rows` that shares every leaf it did not
 * touch: it copies the leaves it changes and the list of leaves, O(changed
 * leaves × leaf size + N / leaf size) per batch instead of O(N). Flat arrays
 * rebuilt per batch were what made a subscriber's CPU under churn grow with
 * the number of instances (issue 7: the copies, and the young collections
 * they caused). A published snapshot is a `Rows` as it is, never changed.
 *
 * `item` is the endpoint of the row, or `undefined` when its factory failed;
 * `present` counts and indexes the rows that have one.
 *
 * @internal
 */

/** The size of a leaf made from a listing, and of the pieces a leaf that grew past {@link maxLeaf} is cut into. */
const target = 64
/** A leaf that grows past this is cut into pieces of about {@link target}. */
const maxLeaf = 128
/** A leaf that shrinks below this is joined to the one before it (the first may stay small). */
const minLeaf = 16

/** How many arrays one `concat` call joins at most (it takes its parts as arguments). */
const maxConcatParts = 4096

const noItems: ReadonlyArray<never> = []

/** Up to {@link maxLeaf} rows in key order, never changed once made. */
class Leaf<V> {
  private presentItems: ReadonlyArray<V> | undefined = undefined
  constructor(
    readonly keys: ReadonlyArray<string>,
    readonly values: ReadonlyArray<string>,
    readonly items: ReadonlyArray<V | undefined>,
    /** How many rows have no item. */
    readonly missing: number
  ) {}
  /** The defined items, in order: `items` itself when every row has one. */
  get present(): ReadonlyArray<V> {
    if (this.missing === 0) return this.items as ReadonlyArray<V>
    return (this.presentItems ??= this.items.filter((item): item is V => item !== undefined))
  }
  get presentCount(): number {
    return this.keys.length - this.missing
  }
  get lastKey(): string {
    return this.keys[this.keys.length - 1]!
  }
}

/** How many of `items` are `undefined`. */
const countMissing = (items: ReadonlyArray<unknown>): number => {
  let missing = 0
  for (let i = 0; i < items.length; i++) if (items[i] === undefined) missing++
  return missing
}

/** Index of `key` in the sorted array, or of where it would be inserted. */
const search = (sorted: ReadonlyArray<string>, key: string): number => searchFrom(sorted, key, 0)

/** {@link search} among the elements from index `from` on. */
const searchFrom = (sorted: ReadonlyArray<string>, key: string, from: number): number => {
  let lo = from
  let hi = sorted.length
  while (lo < hi) {
    const mid = (lo + hi) >>> 1
    if (sorted[mid]! < key) lo = mid + 1
    else hi = mid
  }
  return lo
}

/**
 * A position in a `Rows` (see {@link Rows.find}): the leaf's index times this
 * plus the offset in the leaf. Leaves never hold more than {@link maxLeaf} rows.
 */
const positionScale = 256

/**
 * Edits to apply to a `Rows`, in ascending key order: each key's new value and
 * item, or a delete (value `undefined`).
 */
export interface RowEdits<V> {
  readonly keys: ReadonlyArray<string>
  readonly values: ReadonlyArray<string | undefined>
  readonly items: ReadonlyArray<V | undefined>
}

/** @internal */
export class Rows<V> {
  /**
   * `presentStarts[l]`: the rows with an item before leaf `l`, made by the
   * first {@link presentAt} (a balancer's pick), not by every batch.
   */
  private presentStarts: Array<number> | undefined = undefined

  private constructor(
    private readonly leaves: ReadonlyArray<Leaf<V>>,
    /**
     * The last key of each leaf, in one array: a search among the leaves reads
     * this array and the keys, not every leaf it passes (each a cache miss on
     * its own when a batch comes after other work).
     */
    private readonly lastKeys: ReadonlyArray<string>,
    /** How many rows. */
    readonly size: number,
    /** How many rows have an item. */
    readonly presentSize: number
  ) {}

  static empty<V>(): Rows<V> {
    return new Rows<V>([], [], 0, 0)
  }

  /** Rows from sorted keys and their values and items (the arrays are not kept). */
  static fromSorted<V>(
    keys: ReadonlyArray<string>,
    values: ReadonlyArray<string>,
    items: ReadonlyArray<V | undefined>
  ): Rows<V> {
    const leaves: Array<Leaf<V>> = []
    let missing = 0
    // up to a full leaf's rows make one leaf
    const size = keys.length <= maxLeaf ? maxLeaf : target
    for (let from = 0; from < keys.length; from += size) {
      const to = Math.min(from + size, keys.length)
      const leafItems = items.slice(from, to)
      const leaf = new Leaf(keys.slice(from, to), values.slice(from, to), leafItems, countMissing(leafItems))
      missing += leaf.missing
      leaves.push(leaf)
    }
    return new Rows(
      leaves,
      leaves.map((leaf) => leaf.lastKey),
      keys.length,
      keys.length - missing
    )
  }

  /** How many leaves: with one, the arrays of every row are that leaf's own, built by no copy. */
  get leafCount(): number {
    return this.leaves.length
  }

  /** The index of the first leaf whose last key is not below `key` (the number of leaves when none is). */
  private leafOf(key: string): number {
    return search(this.lastKeys, key)
  }

  /** The position of `key` (see {@link positionScale}), or -1 when there is no such row. */
  find(key: string): number {
    const leaves = this.leaves
    const lo = this.leafOf(key)
    if (lo === leaves.length) return -1
    const keys = leaves[lo]!.keys
    const offset = search(keys, key)
    return keys[offset] === key ? lo * positionScale + offset : -1
  }

  /** The value of the row at `position` (from {@link find}). */
  valueAt(position: number): string {
    return this.leaves[(position / positionScale) | 0]!.values[position % positionScale]!
  }

  /** The item of the row at `position` (from {@link find}). */
  itemAt(position: number): V | undefined {
    return this.leaves[(position / positionScale) | 0]!.items[position % positionScale]
  }

  /** The `i`th defined item, `0 <= i < presentSize`. */
  presentAt(i: number): V {
    const starts = (this.presentStarts ??= this.starts())
    // the last leaf starting at or before i (a leaf without items starts where the next does)
    let lo = 0
    let hi = this.leaves.length - 1
    while (lo < hi) {
      const mid = (lo + hi + 1) >>> 1
      if (starts[mid]! <= i) lo = mid
      else hi = mid - 1
    }
    return this.leaves[lo]!.present[i - starts[lo]!]!
  }

  /** Runs `f` on every row, in key order. */
  forEach(f: (key: string, value: string, item: V | undefined) => void): void {
    for (const leaf of this.leaves) {
      const { items, keys, values } = leaf
      for (let i = 0; i < keys.length; i++) f(keys[i]!, values[i]!, items[i])
    }
  }

  /** Every key, in order, in an array (the leaf's own when there is one leaf). */
  keys(): ReadonlyArray<string> {
    return join(this.leaves.map((leaf) => leaf.keys))
  }

  /** Every value, in key order, in an array (the leaf's own when there is one leaf). */
  values(): ReadonlyArray<string> {
    return join(this.leaves.map((leaf) => leaf.values))
  }

  /** Every item (`undefined` where a row has none), in key order, in an array (the leaf's own when there is one leaf). */
  items(): ReadonlyArray<V | undefined> {
    return join(this.leaves.map((leaf) => leaf.items))
  }

  /** The defined items, in key order, in an array (the leaf's own when there is one leaf). */
  presentItems(): ReadonlyArray<V> {
    return join(this.leaves.map((leaf) => leaf.present))
  }

  /** The keys of the rows with an item, in order, in an array (the leaf's own when there is one leaf). */
  presentKeys(): ReadonlyArray<string> {
    return join(
      this.leaves.map((leaf) =>
        leaf.present === leaf.items ? leaf.keys : leaf.keys.filter((_, i) => leaf.items[i] !== undefined)
      )
    )
  }

  private starts(): Array<number> {
    const starts: Array<number> = []
    let present = 0
    for (const leaf of this.leaves) {
      starts.push(present)
      present += leaf.presentCount
    }
    return starts
  }

  /**
   * These rows with `edits` applied (keys in ascending order; a delete of a key
   * that has no row is a no-op). Leaves no edit falls in are shared: a batch
   * costs a binary search per leaf it changes, a copy of those leaves, and a
   * copy of the list of leaves. `replaced` is called with each edit (by index)
   * whose key had a row, and that row's value and item, as the edit is applied:
   * the caller learns what it replaced without a search of its own.
   */
  apply(edits: RowEdits<V>, replaced?: (edit: number, value: string, item: V | undefined) => void): Rows<V> {
    const n = edits.keys.length
    if (n === 0) return this
    const leaves = this.leaves
    const lastKeys = this.lastKeys
    const out: Array<Leaf<V>> = []
    const outLastKeys: Array<string> = []
    let size = this.size
    let presentSize = this.presentSize
    if (leaves.length === 0) {
      const merged = merge(undefined, edits, 0, n, replaced)
      if (merged.keys.length > 0) pushCut(out, outLastKeys, merged)
      return new Rows(out, outLastKeys, merged.keys.length, merged.keys.length - merged.missing)
    }
    const lastLeaf = leaves.length - 1
    // leaves before `copied` are in `out`
    let copied = 0
    let e = 0
    while (e < n) {
      // the leaf of the next edit (the last leaf takes the keys past it), and the edits in it
      const l = Math.min(this.leafOf(edits.keys[e]!), lastLeaf)
      const leaf = leaves[l]!
      let end = e + 1
      if (l === lastLeaf) {
        end = n
      } else {
        const lastKey = lastKeys[l]!
        while (end < n && edits.keys[end]! <= lastKey) end++
      }
      for (; copied < l; copied++) {
        out.push(leaves[copied]!)
        outLastKeys.push(lastKeys[copied]!)
      }
      copied = l + 1
      let merged = merge(leaf, edits, e, end, replaced)
      e = end
      size += merged.keys.length - leaf.keys.length
      presentSize += merged.keys.length - merged.missing - leaf.presentCount
      if (merged.keys.length === 0) continue
      // a leaf that shrank too much joins the one before it
      if (merged.keys.length < minLeaf && out.length > 0) {
        const before = out.pop()!
        outLastKeys.pop()
        merged = {
          keys: before.keys.concat(merged.keys),
          values: before.values.concat(merged.values),
          items: before.items.concat(merged.items),
          missing: before.missing + merged.missing
        }
      }
      pushCut(out, outLastKeys, merged)
    }
    for (; copied < leaves.length; copied++) {
      out.push(leaves[copied]!)
      outLastKeys.push(lastKeys[copied]!)
    }
    return new Rows(out, outLastKeys, size, presentSize)
  }
}

interface Merged<V> {
  readonly keys: ReadonlyArray<string>
  readonly values: ReadonlyArray<string>
  readonly items: ReadonlyArray<V | undefined>
  readonly missing: number
}

/**
 * The rows of `leaf` with the edits from `from` to `to` applied: slices of the unchanged runs and the new rows,
 * joined by native copies into exact-size arrays.
 */
const merge = <V>(
  leaf: Leaf<V> | undefined,
  edits: RowEdits<V>,
  from: number,
  to: number,
  replaced: ((edit: number, value: string, item: V | undefined) => void) | undefined
): Merged<V> => {
  if (leaf !== undefined && to - from === 1) return mergeOne(leaf, edits, from, replaced)
  const keyParts: Array<ReadonlyArray<string>> = []
  const valueParts: Array<ReadonlyArray<string>> = []
  const itemParts: Array<ReadonlyArray<V | undefined>> = []
  let missing = 0
  const leafKeys = leaf?.keys ?? noItems
  const leafValues = leaf?.values ?? noItems
  const leafItems = leaf?.items ?? noItems
  if (leaf !== undefined) missing += leaf.missing
  // a run of new rows, added as one part before the next slice of the leaf
  let newKeys: Array<string> | undefined = undefined
  let newValues: Array<string> = []
  let newItems: Array<V | undefined> = []
  const addNew = () => {
    if (newKeys === undefined) return
    keyParts.push(newKeys)
    valueParts.push(newValues)
    itemParts.push(newItems)
    newKeys = undefined
  }
  let i = 0
  for (let e = from; e < to; e++) {
    const key = edits.keys[e]!
    const at = searchFrom(leafKeys, key, i)
    if (at > i) {
      addNew()
      keyParts.push(leafKeys.slice(i, at))
      valueParts.push(leafValues.slice(i, at))
      itemParts.push(leafItems.slice(i, at))
      i = at
    }
    // the edit replaces (or deletes) the row of the same key
    if (i < leafKeys.length && leafKeys[i] === key) {
      if (leafItems[i] === undefined) missing--
      if (replaced !== undefined) replaced(e, leafValues[i]!, leafItems[i])
      i++
    }
    const value = edits.values[e]
    if (value !== undefined) {
      const item = edits.items[e]
      if (newKeys === undefined) {
        newKeys = []
        newValues = []
        newItems = []
      }
      newKeys.push(key)
      newValues.push(value)
      newItems.push(item)
      if (item === undefined) missing++
    }
  }
  addNew()
  if (i < leafKeys.length) {
    keyParts.push(i === 0 ? leafKeys : leafKeys.slice(i))
    valueParts.push(i === 0 ? leafValues : leafValues.slice(i))
    itemParts.push(i === 0 ? leafItems : leafItems.slice(i))
  }
  return { keys: join(keyParts), values: join(valueParts), items: join(itemParts), missing }
}

/**
 * {@link merge} of a single edit, the common case under churn (a batch's few
 * changes fall in different leaves): one native copy per array that changes
 * (`toSpliced`, `with`; about a third of slices joined by `concat` in a probe),
 * and a changed value keeps the leaf's keys as they are.
 */
const mergeOne = <V>(
  leaf: Leaf<V>,
  edits: RowEdits<V>,
  e: number,
  replaced: ((edit: number, value: string, item: V | undefined) => void) | undefined
): Merged<V> => {
  const { items, keys, values } = leaf
  const key = edits.keys[e]!
  const at = search(keys, key)
  const value = edits.values[e]
  const item = edits.items[e]
  if (at < keys.length && keys[at] === key) {
    const old = items[at]
    if (replaced !== undefined) replaced(e, values[at]!, old)
    const missing = leaf.missing - (old === undefined ? 1 : 0)
    if (value === undefined) {
      return { keys: keys.toSpliced(at, 1), values: values.toSpliced(at, 1), items: items.toSpliced(at, 1), missing }
    }
    return {
      keys,
      values: values.with(at, value),
      items: items.with(at, item),
      missing: missing + (item === undefined ? 1 : 0)
    }
  }
  // a delete of a key that has no row changes nothing
  if (value === undefined) return leaf
  return {
    keys: keys.toSpliced(at, 0, key),
    values: values.toSpliced(at, 0, value),
    items: items.toSpliced(at, 0, item),
    missing: leaf.missing + (item === undefined ? 1 : 0)
  }
}

/** Adds the rows (and their last keys to `lastKeys`) as one leaf, or as pieces of about {@link target} rows when there are more than {@link maxLeaf}. */
const pushCut = <V>(out: Array<Leaf<V>>, lastKeys: Array<string>, rows: Merged<V>): void => {
  const { items, keys, values } = rows
  const n = keys.length
  if (n <= maxLeaf) {
    out.push(new Leaf(keys, values, items, rows.missing))
    lastKeys.push(keys[n - 1]!)
    return
  }
  const pieces = Math.ceil(n / target)
  for (let p = 0; p < pieces; p++) {
    const from = Math.floor((p * n) / pieces)
    const to = Math.floor(((p + 1) * n) / pieces)
    const pieceItems = items.slice(from, to)
    out.push(new Leaf(keys.slice(from, to), values.slice(from, to), pieceItems, countMissing(pieceItems)))
    lastKeys.push(keys[to - 1]!)
  }
}

/** The arrays joined into one array, by native copies (the one array itself when there is one: arrays here are never changed). */
const join = <A>(parts: ReadonlyArray<ReadonlyArray<A>>): ReadonlyArray<A> => {
  if (parts.length === 1) return parts[0]!
  if (parts.length <= maxConcatParts) return ([] as Array<A>).concat(...parts)
  let out: Array<A> = []
  for (let p = 0; p < parts.length; p += maxConcatParts) out = out.concat(...parts.slice(p, p + maxConcatParts))
  return out
}
