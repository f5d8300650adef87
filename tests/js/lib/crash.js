// One round of the crash-safety fault test, shared by the CI test and the
// soak script: real y-websocket editors type fast, observers record every
// change they are sent, the server is killed with SIGKILL at a random
// moment and restarted; every change an observer saw must be in the
// recovered document, and everyone must converge again.
import * as Y from 'yjs'
import { WebsocketProvider } from 'y-websocket'
import WebSocket from 'ws'
import { waitFor } from './weft.js'

function client (weft, room) {
  const doc = new Y.Doc()
  const provider = new WebsocketProvider(weft.wsUrl, room, doc, { WebSocketPolyfill: WebSocket, disableBc: true })
  return { doc, provider, text: doc.getText('t'), close () { provider.destroy(); doc.destroy() } }
}

const tokens = s => s.match(/<[^>]+>/g) || []

/**
 * Runs one round on `weft` (running; restarted on the same port and data
 * directory). Returns { seen, lost, typed }.
 */
export async function crashRound (weft, room, { editors = 3, observers = 2, rand = Math.random } = {}) {
  const writers = Array.from({ length: editors }, () => client(weft, room))
  const watchers = Array.from({ length: observers }, () => client(weft, room))
  const everyone = [...writers, ...watchers]
  try {
    await waitFor(() => everyone.every(c => c.provider.synced), 15000, 'clients to sync')
    const seen = new Set()
    for (const w of watchers) {
      w.text.observe(() => { for (const t of tokens(w.text.toString())) seen.add(t) })
    }
    let n = 0
    const typing = setInterval(() => {
      writers.forEach((w, i) => w.text.insert(w.text.length, `<${room}.${i}.${n}>`))
      n++
    }, 2)
    await new Promise(resolve => setTimeout(resolve, 100 + Math.floor(rand() * 900)))
    await weft.kill9()
    clearInterval(typing)
    const sawBeforeCrash = new Set(seen)

    await weft.start()
    const fresh = client(weft, room)
    everyone.push(fresh)
    await waitFor(() => fresh.provider.synced, 15000, 'a fresh client to load the recovered document')
    const recovered = new Set(tokens(fresh.text.toString()))
    const lost = [...sawBeforeCrash].filter(t => !recovered.has(t))

    // The editors reconnect by themselves and bring back what the server
    // never had; everyone converges.
    await waitFor(() => everyone.every(c => c.provider.wsconnected && c.provider.synced), 20000, 'clients to reconnect')
    const same = () => everyone.every(c => c.text.toString() === writers[0].text.toString())
    await waitFor(same, 20000, 'convergence after the restart')
    return { seen: sawBeforeCrash.size, lost, typed: n * editors }
  } finally {
    for (const c of everyone) c.close()
  }
}
