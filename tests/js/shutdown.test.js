// Graceful shutdown: on SIGTERM or SIGINT weft closes WebSockets with 1001,
// stores and snapshots every document, and exits 0; editors typing through
// it reconnect by themselves and nothing they typed is lost.
import { test, after } from 'node:test'
import assert from 'node:assert/strict'
import { execFileSync } from 'node:child_process'
import * as Y from 'yjs'
import { WebsocketProvider } from 'y-websocket'
import WebSocket from 'ws'
import { Weft, WEFT_BIN, waitFor } from './lib/weft.js'

const cleanups = []
after(async () => { for (const c of cleanups.reverse()) await c() })

function editor (weft, room) {
  const doc = new Y.Doc()
  const provider = new WebsocketProvider(weft.wsUrl, room, doc, { WebSocketPolyfill: WebSocket, disableBc: true })
  const closes = []
  provider.on('connection-close', e => closes.push(e?.code))
  cleanups.push(() => { provider.destroy(); doc.destroy() })
  return { doc, provider, closes, text: doc.getText('t') }
}

for (const signal of ['SIGTERM', 'SIGINT']) {
  test(`${signal}: clean exit, nothing lost, clients come back by themselves`, async () => {
    const weft = await new Weft(['--shutdown-timeout', '10s']).start()
    cleanups.push(() => weft.cleanup())
    const room = `bye-${signal}`
    const editors = [editor(weft, room), editor(weft, room)]
    await waitFor(() => editors.every(e => e.provider.synced), 10000, 'editors synced')

    let n = 0
    const typing = setInterval(() => { editors.forEach((e, i) => e.text.insert(e.text.length, `<${i}.${n}>`)); n++ }, 3)
    await new Promise(resolve => setTimeout(resolve, 300))
    const started = Date.now()
    const { code } = await weft.signal(signal) // edits are in flight right now
    clearInterval(typing)
    assert.equal(code, 0, 'exit status 0')
    assert.ok(Date.now() - started < 10000, 'within the shutdown deadline')
    await waitFor(() => editors.every(e => e.closes.length > 0), 5000, 'editors to see the close')
    assert.deepEqual(editors.map(e => e.closes[0]), [1001, 1001], 'closed with 1001 going away')

    // Everything was snapshotted on the way out.
    const history = JSON.parse(execFileSync(WEFT_BIN, ['snapshot', 'list', room, '--data-dir', weft.dataDir, '--json']))
    assert.equal(history.at(-1).reason, 'shutdown')

    const typed = editors.map(e => e.text.toString())
    await weft.start()
    await waitFor(() => editors.every(e => e.provider.wsconnected && e.provider.synced), 20000, 'editors to reconnect')
    await waitFor(() => editors[0].text.toString() === editors[1].text.toString(), 10000, 'convergence')
    const merged = editors[0].text.toString()
    for (const t of typed.flatMap(s => s.match(/<[^>]+>/g))) {
      assert.ok(merged.includes(t), `${t} typed before the shutdown is there after it`)
    }
  })
}
