import { defineConfig } from "vitest/config"

/** npm run test:chaos: the long reliability soaks, kept out of npm test. */
export default defineConfig({
  test: {
    include: ["test/**/*.chaos.test.ts"],
    testTimeout: 300_000,
    hookTimeout: 60_000,
    pool: "forks",
    poolOptions: { forks: { maxForks: 1, minForks: 1 } },
    reporters: ["default"]
  }
})
