/**
 * Percentiles, the result rows and the printed table.
 */

/** The `p`-th percentile (0..100) of `xs`, nearest rank. */
export const percentile = (xs: ReadonlyArray<number>, p: number): number => {
  if (xs.length === 0) return Number.NaN
  const sorted = [...xs].sort((a, b) => a - b)
  const rank = Math.ceil((p / 100) * sorted.length)
  return sorted[Math.min(sorted.length - 1, Math.max(0, rank - 1))]!
}

/** The mean; 0 for no values. */
export const mean = (xs: ReadonlyArray<number>): number =>
  xs.length === 0 ? 0 : xs.reduce((sum, x) => sum + x, 0) / xs.length

export const median = (xs: ReadonlyArray<number>): number => {
  if (xs.length === 0) return Number.NaN
  const sorted = [...xs].sort((a, b) => a - b)
  const mid = sorted.length >> 1
  return sorted.length % 2 === 1 ? sorted[mid]! : (sorted[mid - 1]! + sorted[mid]!) / 2
}

/** One line of the results: a figure for ours and the raw baseline, and their ratio. */
export interface Row {
  readonly scenario: string
  readonly ours: number
  readonly raw: number
  /** ours / raw. */
  readonly ratio: number
  readonly unit: string
  /** The bar on the ratio, or on `ours` when `barOn` is `ours`; absent when there is none. */
  readonly bar?: number | undefined
  readonly barOn?: "ratio" | "ours" | undefined
  readonly met?: boolean | undefined
  readonly samples?: number | undefined
  /** Anything else worth keeping: the floor, other percentiles, ... */
  readonly extra?: Readonly<Record<string, number | string>> | undefined
}

export const row = (r: Omit<Row, "ratio" | "met">): Row => {
  const ratio = r.ours / r.raw
  const met = r.bar === undefined ? undefined : (r.barOn === "ours" ? r.ours : ratio) <= r.bar
  return { ...r, ratio, met }
}

const fmt = (x: number): string =>
  !Number.isFinite(x)
    ? String(x)
    : Math.abs(x) >= 1000
      ? x.toFixed(0)
      : Math.abs(x) >= 100
        ? x.toFixed(1)
        : Math.abs(x) >= 1
          ? x.toFixed(2)
          : x.toPrecision(3)

/** The results as a Markdown table. */
export const table = (rows: ReadonlyArray<Row>): string => {
  const header = ["scenario", "ours", "raw", "ours/raw", "unit", "bar", "met"]
  const lines = rows.map((r) => [
    r.scenario,
    fmt(r.ours),
    fmt(r.raw),
    fmt(r.ratio),
    r.unit,
    r.bar === undefined ? "" : `${r.barOn === "ours" ? "ours" : "ratio"} ≤ ${r.bar}`,
    r.met === undefined ? "" : r.met ? "yes" : "**no**"
  ])
  const widths = header.map((h, i) => Math.max(h.length, ...lines.map((l) => l[i]!.length)))
  const line = (cells: ReadonlyArray<string>) => `| ${cells.map((c, i) => c.padEnd(widths[i]!)).join(" | ")} |`
  return [line(header), `| ${widths.map((w) => "-".repeat(w)).join(" | ")} |`, ...lines.map(line)].join("\n")
}
