// Many rounds of the crash-safety fault test (see tests/js/lib/crash.js).
//   node tests/soak/crash-soak.mjs [rounds]      (default 100; needs `cargo build` and `npm ci`)
// Prints one line per round and a summary; exits 1 if any seen change was lost.
import { Weft } from '../js/lib/weft.js'
import { crashRound } from '../js/lib/crash.js'

const rounds = Number(process.argv[2] || 100)
const weft = await new Weft().start()
let seen = 0
let lost = 0
let typed = 0
const started = Date.now()
try {
  for (let round = 0; round < rounds; round++) {
    const r = await crashRound(weft, `soak-${round}`)
    seen += r.seen
    typed += r.typed
    lost += r.lost.length
    console.log(`round ${round + 1}/${rounds}: typed ${r.typed}, seen ${r.seen}, lost ${r.lost.length}`)
  }
} finally {
  await weft.cleanup()
}
console.log(`\n${rounds} rounds in ${Math.round((Date.now() - started) / 1000)} s: ${typed} changes typed, ${seen} seen by observers before a kill -9, ${lost} lost`)
process.exit(lost === 0 ? 0 : 1)
