import { describe, expect, it } from "@effect/vitest"
import * as Effect from "effect/Effect"
import * as Redacted from "effect/Redacted"
import * as Schedule from "effect/Schedule"
import * as TestServices from "effect/TestServices"
import * as Fs from "node:fs"
import type { EtcdMember } from "../src/testing/index.js"
import { EtcdAuth, EtcdCluster } from "../src/testing/index.js"
import { etcd3, get, processesMentioning, processExists, put } from "./testing-helpers.js"

const pidOf = (member: EtcdMember.EtcdMember) =>
  Effect.flatMap(
    member.pid,
    Effect.orDieWith(() => "no pid")
  )

/** Waits until `member` has applied `revision` (its Maintenance status, polled: needs the live clock). */
const awaitRevision = (member: EtcdMember.EtcdMember, revision: number) =>
  member.status.pipe(
    Effect.filterOrFail((status) => status.revision >= revision),
    Effect.retry(Schedule.spaced("50 millis").pipe(Schedule.upTo("10 seconds"))),
    TestServices.provideLive
  )

describe("EtcdCluster", () => {
  it.layer(EtcdCluster.layer())("a running 3-member cluster", (it) => {
    it.scoped("has exactly one leader, which every member follows", () =>
      Effect.gen(function* () {
        const cluster = yield* EtcdCluster.EtcdCluster
        expect(cluster.members.map((member) => member.name)).toEqual(["etcd-0", "etcd-1", "etcd-2"])
        expect(cluster.clientUrls).toEqual(cluster.members.map((member) => member.clientUrl))
        expect(new Set(cluster.members.map((member) => member.dataDir)).size).toBe(3)
        const leader = yield* cluster.leader
        const followers = yield* cluster.followers
        expect(followers).toHaveLength(2)
        expect(followers).not.toContain(leader)
        const leaderStatus = yield* leader.status
        expect(leaderStatus.isLeader).toBe(true)
        for (const follower of followers) {
          const status = yield* follower.status
          expect(status.isLeader).toBe(false)
          expect(status.leaderId).toBe(leaderStatus.memberId)
        }
        const client = yield* etcd3(cluster.clientUrls)
        yield* put(client, "/kit/cluster", "up")
        expect(yield* get(client, "/kit/cluster")).toBe("up")
      })
    )

    it.scoped("killing the leader elects another one; the killed member rejoins on restart", () =>
      Effect.gen(function* () {
        const cluster = yield* EtcdCluster.EtcdCluster
        const old = yield* cluster.leader
        const oldPid = yield* pidOf(old)
        yield* old.kill
        expect(processExists(oldPid)).toBe(false)
        expect(yield* old.state).toBe("Stopped")

        const next = yield* cluster.leader
        expect(next).not.toBe(old)
        const client = yield* etcd3([next.clientUrl])
        const revision = yield* put(client, "/kit/failover", "while one member was down")

        yield* old.start
        expect(yield* old.state).toBe("Running")
        expect(old.clientUrl).toBe(cluster.members.find((member) => member === old)?.clientUrl)
        yield* awaitRevision(old, revision)
        const direct = yield* etcd3([old.clientUrl])
        expect(yield* get(direct, "/kit/failover")).toBe("while one member was down")
        expect((yield* cluster.followers).length).toBe(2)
      })
    )

    it.scoped("a paused follower stops answering and catches up after resume", () =>
      Effect.gen(function* () {
        const cluster = yield* EtcdCluster.EtcdCluster
        const leader = yield* cluster.leader
        const [follower] = yield* cluster.followers
        if (follower === undefined) return yield* Effect.dieMessage("no follower")
        const pid = yield* pidOf(follower)
        yield* follower.pause
        expect(yield* follower.state).toBe("Paused")
        expect(processExists(pid)).toBe(true)
        expect(yield* follower.isHealthy).toBe(false)

        const client = yield* etcd3([leader.clientUrl])
        const revision = yield* put(client, "/kit/paused", "written without one member")

        yield* follower.resume
        expect(yield* follower.state).toBe("Running")
        yield* awaitRevision(follower, revision)
        expect(yield* follower.isHealthy).toBe(true)
      })
    )

    it.effect("pausing the leader makes the others elect a new one", () =>
      Effect.gen(function* () {
        const cluster = yield* EtcdCluster.EtcdCluster
        const old = yield* cluster.leader
        yield* old.pause
        const next = yield* cluster.leader
        expect(next).not.toBe(old)
        yield* old.resume
        // once resumed, the old leader learns the newer term and follows
        const agreed = yield* cluster.leader
        expect((yield* cluster.followers).length).toBe(2)
        expect((yield* old.status).leaderId).toBe((yield* agreed.status).memberId)
      })
    )

    it.scoped("stopping and starting the whole cluster keeps the data and the ports", () =>
      Effect.gen(function* () {
        const cluster = yield* EtcdCluster.EtcdCluster
        const client = yield* etcd3(cluster.clientUrls)
        yield* put(client, "/kit/outage", "kept")
        const urls = cluster.members.map((member) => member.clientUrl)
        yield* cluster.stop
        for (const member of cluster.members) expect(yield* member.state).toBe("Stopped")
        yield* cluster.start
        for (const member of cluster.members) expect(yield* member.isHealthy).toBe(true)
        expect(cluster.members.map((member) => member.clientUrl)).toEqual(urls)
        const fresh = yield* etcd3(cluster.clientUrls)
        expect(yield* get(fresh, "/kit/outage")).toBe("kept")
      })
    )

    it.scoped("wipe empties the cluster and takes the revision back to 1", () =>
      Effect.gen(function* () {
        const cluster = yield* EtcdCluster.EtcdCluster
        const client = yield* etcd3(cluster.clientUrls)
        yield* put(client, "/kit/wiped", "x")
        const before = yield* cluster.leader
        expect((yield* before.status).revision).toBeGreaterThan(1)
        yield* cluster.wipe
        for (const member of cluster.members) expect((yield* member.status).revision).toBe(1)
        yield* cluster.leader
        const fresh = yield* etcd3(cluster.clientUrls)
        expect(yield* get(fresh, "/kit/wiped")).toBeNull()
      })
    )
  })

  it.scoped("in TLS mode with auth enabled, finds the leader and fails over", () =>
    Effect.gen(function* () {
      const cluster = yield* EtcdCluster.make({ tls: true })
      const tls = yield* Effect.fromNullable(cluster.tls)
      expect(cluster.clientUrls.every((url) => url.startsWith("https://127.0.0.1:"))).toBe(true)
      const rootPassword = Redacted.make("root-secret")
      yield* EtcdAuth.enable(cluster, rootPassword)
      const old = yield* cluster.leader
      yield* old.stop
      const next = yield* cluster.leader
      expect(next).not.toBe(old)
      const root = yield* etcd3([next.clientUrl], { tls, user: { name: "root", password: rootPassword } })
      yield* put(root, "/kit/tls-auth", "ok")
      expect(yield* get(root, "/kit/tls-auth")).toBe("ok")
    })
  )

  it.effect("leaves no process and no temp dir behind, paused members included", () =>
    Effect.gen(function* () {
      const { directory, pids } = yield* Effect.scoped(
        Effect.gen(function* () {
          const cluster = yield* EtcdCluster.make()
          const [first] = cluster.members
          if (first === undefined) return yield* Effect.dieMessage("no member")
          yield* first.pause
          const pids = yield* Effect.forEach(cluster.members, pidOf)
          for (const pid of pids) expect(processExists(pid)).toBe(true)
          return { directory: cluster.directory, pids }
        })
      )
      for (const pid of pids) expect(processExists(pid)).toBe(false)
      expect(Fs.existsSync(directory)).toBe(false)
      expect(yield* processesMentioning(directory)).toEqual([])
    })
  )
})
