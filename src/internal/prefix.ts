/**
 * @internal
 */

/** A prefix that ends with `/`, so `/services/bar` never matches `/services/barsvc2/...`. */
export const normalizePrefix = (prefix: string): string => (prefix.endsWith("/") ? prefix : `${prefix}/`)
