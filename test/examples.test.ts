import { describe, expect, it } from "@effect/vitest"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Option from "effect/Option"
import { spawn } from "node:child_process"
import { fileURLToPath } from "node:url"
import * as EtcdClient from "../src/EtcdClient.js"
import * as EtcdServer from "../src/testing/EtcdServer.js"
import { BarSubscriber, BarSvc, FooRegistration, program } from "../examples/example.js"

describe("examples/example.ts (go-kit's Example, the Effect way)", () => {
  it.layer(EtcdServer.layer(), { timeout: "60 seconds" })((it) => {
    it.scoped("registers foosvc while it runs, calls barsvc through retry(roundRobin), deregisters after", () =>
      Effect.gen(function* () {
        const server = yield* EtcdServer.EtcdServer
        const client = yield* EtcdClient.make(server.clientOptions)
        yield* client.put("/services/barsvc/5.6.7.8:9090", "http://5.6.7.8:9090")
        const ClientLive = Layer.succeed(EtcdClient.EtcdClient, client)
        const during = yield* Effect.gen(function* () {
          // the subscriber has listed barsvc before the layer is built
          expect((yield* (yield* BarSvc).endpoints).length).toBe(1)
          const response = yield* program
          const foo = yield* client.get("/services/foosvc/1.2.3.4:8080")
          return { response, foo: Option.map(foo, (kv) => kv.value) }
        }).pipe(Effect.provide(Layer.merge(FooRegistration, BarSubscriber).pipe(Layer.provide(ClientLive))))
        expect(during).toEqual({ response: {}, foo: Option.some("http://1.2.3.4:8080") })
        expect(Option.isNone(yield* client.get("/services/foosvc/1.2.3.4:8080"))).toBe(true)
      })
    )
  })
})

describe("npm run demo", () => {
  it.live(
    "runs end to end on a spawned etcd: every call succeeds, the killed and stopped greeters leave, nothing is left",
    () =>
      Effect.gen(function* () {
        const demo = fileURLToPath(new URL("../examples/demo.ts", import.meta.url))
        const { code, output } = yield* Effect.async<{ code: number | null; output: string }>((resume) => {
          const env: NodeJS.ProcessEnv = { ...process.env }
          delete env["ETCD_ENDPOINTS"]
          const child = spawn(process.execPath, ["--import", "tsx", demo], { env, stdio: ["ignore", "pipe", "pipe"] })
          let output = ""
          child.stdout.on("data", (d: Buffer) => (output += d.toString()))
          child.stderr.on("data", (d: Buffer) => (output += d.toString()))
          child.on("exit", (code) => resume(Effect.succeed({ code, output })))
          return Effect.sync(() => child.kill("SIGKILL"))
        })
        expect(output).toMatch(/etcd\s+spawned at http:\/\/127\.0\.0\.1:\d+/)
        expect(output).toMatch(/subscriber \+ greeter-1 /)
        expect(output).toMatch(/greeter-1\s+gone from the subscriber [\d.]+ s after SIGKILL/)
        expect(output).toMatch(/greeter-2\s+gone from the subscriber [\d.]+ s after SIGTERM/)
        expect(output).toMatch(/greeter-2\s+exited with code 0/)
        expect(output).toMatch(/call\s+#\s*\d+ answered by greeter-4/)
        expect(output).toMatch(/summary\s+(\d+) calls, \1 succeeded, 0 failed/)
        expect(output).toMatch(/summary\s+0 keys left under \/services\/greeter\//)
        expect(output).not.toMatch(/FAILED|Error/)
        expect(code).toBe(0)
      }),
    120_000
  )
})
