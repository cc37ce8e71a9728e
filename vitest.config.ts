import { configDefaults, defineConfig } from "vitest/config"

export default defineConfig({
  test: {
    include: ["test/**/*.test.ts"],
    // the long soaks run with npm run test:chaos (vitest.chaos.config.ts)
    exclude: [...configDefaults.exclude, "test/**/*.chaos.test.ts"],
    // suites spawn real etcd servers; give them room on small shared machines
    testTimeout: 60_000,
    hookTimeout: 60_000,
    pool: "forks",
    poolOptions: { forks: { maxForks: 2, minForks: 1 } },
    reporters: ["default"]
  }
})
