// Crash safety: SIGKILL at a random moment never loses a change any client
// was sent. A few rounds here; tests/soak/crash-soak.mjs runs many more.
import { test, after } from 'node:test'
import assert from 'node:assert/strict'
import { Weft } from './lib/weft.js'
import { crashRound } from './lib/crash.js'

const ROUNDS = Number(process.env.CRASH_ROUNDS || 5)
const cleanups = []
after(async () => { for (const c of cleanups.reverse()) await c() })

test(`${ROUNDS} rounds of kill -9 under fast editing lose nothing anyone saw`, async () => {
  const weft = await new Weft().start()
  cleanups.push(() => weft.cleanup())
  let seen = 0
  for (let round = 0; round < ROUNDS; round++) {
    const result = await crashRound(weft, `crash-${round}`)
    assert.deepEqual(result.lost, [], `round ${round}: ${result.lost.length} of ${result.seen} seen changes lost`)
    assert.ok(result.seen > 0, `round ${round}: observers saw changes before the kill`)
    seen += result.seen
  }
  console.log(`# crash rounds: ${ROUNDS}, changes seen before the kills: ${seen}, lost: 0`)
})
