/**
 * The instances of the benchmark: instance `i` is `http://10.a.b.c:port`, and
 * its key is the prefix followed by `10.a.b.c:port`, so that either one gives
 * the other without a lookup table.
 */

const scheme = "http://"

/** The instance string (what a registration stores as its value) of instance number `i`. */
export const instance = (i: number): string =>
  `${scheme}10.${(i >>> 16) & 255}.${(i >>> 8) & 255}.${i & 255}:${8080 + Math.floor(i / 16777216)}`

/** The key of `instance` under `prefix` (which ends with `/`). */
export const keyOf = (prefix: string, instance: string): string => prefix + instance.slice(scheme.length)
