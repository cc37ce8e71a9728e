/**
 * A program written as a user would write it, against the packed library
 * (`effect-sd-etcd` and `effect-sd-etcd/testing` as installed from the
 * tarball), type-checked against its published declarations and run with
 * node: a registration and a subscriber called through round robin + retry,
 * once on the in-memory etcd and once on a real etcd spawned by the test kit.
 * Run by scripts/check-package.sh.
 */
import { Effect, Layer, Option } from "effect"
import { Balancer, EtcdClient, Registrar, Retry, Subscriber, TtlOption } from "effect-sd-etcd"
import type { Endpoint } from "effect-sd-etcd"
import { EtcdServer, MemoryEtcd } from "effect-sd-etcd/testing"

class Echo extends Subscriber.Tag<Echo, string, string>()("package-smoke/Echo") {}

const factory = (instance: string) =>
  Effect.succeed<Endpoint.Endpoint<string, string>>((request) => Effect.succeed(`${instance}: ${request}`))

const program = Effect.gen(function* () {
  const echo = yield* Echo
  const call = yield* Retry.retry(Balancer.roundRobin(echo), { max: 3, timeout: "3 seconds" })
  const answer = yield* call("hello")
  const state = yield* Registrar.Registrar.pipe(Effect.flatMap(Registrar.state))
  return { answer, state: state._tag }
})

const registration = Layer.unwrapEffect(
  Effect.map(TtlOption.make({ heartbeat: "1 second", ttl: "3 seconds" }), (ttl) =>
    Registrar.layer({ key: "/services/echo/one", value: "one", ttl })
  )
)

const app = Layer.provideMerge(Subscriber.layer(Echo, { prefix: "/services/echo", factory }), registration)

const expect = (where: string, result: { readonly answer: string; readonly state: string }) => {
  if (result.answer !== "one: hello") throw new Error(`${where}: answered ${JSON.stringify(result.answer)}`)
  process.stdout.write(`package smoke, ${where}: "${result.answer}", registration ${result.state}\n`)
}

const main = Effect.gen(function* () {
  expect("in-memory etcd", yield* program.pipe(Effect.provide(Layer.provide(app, MemoryEtcd.layer))))
  const server = yield* EtcdServer.make()
  const pid = yield* server.pid
  const client = EtcdClient.layer({ endpoints: server.clientUrls })
  expect(
    `etcd ${server.clientUrls.join(", ")} (pid ${Option.getOrElse(pid, () => 0)})`,
    yield* program.pipe(Effect.provide(Layer.provide(app, client)))
  )
}).pipe(Effect.scoped)

Effect.runPromise(main).then(
  () => process.exit(0),
  (error: unknown) => {
    process.stderr.write(`package smoke failed: ${String(error)}\n`)
    process.exit(1)
  }
)
