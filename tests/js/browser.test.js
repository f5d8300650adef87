// The pages in a real browser: Debian's Chromium, driven by playwright-core,
// against the real weft binary.
import { test, before, after } from 'node:test'
import assert from 'node:assert/strict'
import { execFileSync } from 'node:child_process'
import { mkdirSync, mkdtempSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { request as httpsRequest } from 'node:https'
import { chromium } from 'playwright-core'
import * as Y from 'yjs'
import { Weft, waitFor } from './lib/weft.js'

const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium'
const ARTIFACTS = join(dirname(fileURLToPath(import.meta.url)), '..', 'artifacts')
const FLAGS = ['--headless', '--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking',
  '--disable-component-update', '--disable-sync', '--disable-quic']

let browser
const cleanups = []
before(async () => {
  mkdirSync(ARTIFACTS, { recursive: true })
  browser = await chromium.launch({ executablePath: CHROMIUM, args: [...FLAGS, '--ignore-certificate-errors'] })
})
after(async () => {
  for (const c of cleanups.reverse()) await c()
  await browser?.close()
})

async function startWeft (args) {
  const weft = await new Weft(args).start()
  cleanups.push(() => weft.cleanup())
  return weft
}

/** A page in a context of its own (its own tab session, its own user). */
async function open (url) {
  const context = await browser.newContext()
  cleanups.push(() => context.close())
  const page = await context.newPage()
  await page.goto(url)
  return { context, page }
}

/** POSTs to the test's TLS server, trusting its self-signed certificate. */
function postOverTls (addr, path, body) {
  const [host, port] = addr.split(':')
  return new Promise((resolve, reject) => {
    const req = httpsRequest({ host, port, path, method: 'POST', rejectUnauthorized: false }, res => {
      res.resume()
      res.on('end', () => resolve(res.statusCode))
    })
    req.on('error', reject)
    req.end(Buffer.from(body))
  })
}

const text = page => page.evaluate(() => window.weft.ytext.toString())
/** The viewer's rendering of the text `content`, its lines joined, without editors' carets. */
const viewerText = page => page.evaluate(() => {
  const root = document.querySelector('#root-view[data-root="content"] .text-root')
  if (!root) return null
  const copy = root.cloneNode(true)
  for (const caret of copy.querySelectorAll('.caret')) caret.remove()
  return [...copy.children].map(line => line.textContent).join('\n')
})

test('two editors and a viewer: text, named cursors, read-only view', async () => {
  const weft = await startWeft()
  const a = await open(`${weft.httpUrl}/edit/together`)
  const b = await open(`${weft.httpUrl}/edit/together`)
  const v = await open(`${weft.httpUrl}/view/together`)
  for (const { page } of [a, b]) {
    await page.locator('#status[data-state="connected"]').waitFor({ timeout: 15000 })
  }
  await v.page.locator('#status[data-state="connected"]').waitFor({ timeout: 15000 })

  const nameA = await a.page.locator('#user-name').inputValue()
  await a.page.locator('.cm-content').click()
  await a.page.keyboard.type('Hello from the first editor.')
  await waitFor(async () => (await text(b.page)) === 'Hello from the first editor.', 15000, 'the other editor')
  await waitFor(async () => (await viewerText(v.page)) === 'Hello from the first editor.', 15000, 'the viewer')

  // The other editor shows the first one's cursor, labelled with its name.
  const label = b.page.locator('.cm-ySelectionInfo', { hasText: nameA })
  await label.waitFor({ state: 'attached', timeout: 15000 })
  // And so does the viewer.
  await v.page.locator('#root-view .caret-label', { hasText: nameA }).waitFor({ state: 'attached', timeout: 15000 })
  await b.page.hover('.cm-ySelectionCaret')
  await b.page.screenshot({ path: join(ARTIFACTS, 'editor.png') })

  // The viewer cannot be edited.
  assert.equal(await v.page.locator('[contenteditable]:not([contenteditable="false"])').count(), 0)
  await v.page.locator('#root-view').click()
  await v.page.keyboard.type('nope')
  assert.equal(await viewerText(v.page), 'Hello from the first editor.')
  assert.equal(await v.page.evaluate(() => window.weft.ydoc.getText('content').toString()), 'Hello from the first editor.')
  assert.match(await v.page.locator('#last-event-id').innerText(), /^[0-9a-f]{16}-\d+$/)

  // Undo through Yjs' UndoManager removes only this editor's own typing.
  await b.page.locator('.cm-content').click()
  await b.page.keyboard.press('End')
  await b.page.keyboard.type(' And the second.')
  await waitFor(async () => (await text(a.page)).endsWith('And the second.'), 15000, 'the second edit')
  await b.page.locator('#undo').click()
  await waitFor(async () => (await text(a.page)) === 'Hello from the first editor.', 15000, 'undo to reach everyone')

  await v.page.screenshot({ path: join(ARTIFACTS, 'viewer.png') })
})

test('an editor that goes offline keeps typing and converges when back', async () => {
  const weft = await startWeft()
  const a = await open(`${weft.httpUrl}/edit/offline`)
  const b = await open(`${weft.httpUrl}/edit/offline`)
  for (const { page } of [a, b]) await page.locator('#status[data-state="connected"]').waitFor({ timeout: 15000 })

  await a.context.setOffline(true)
  // Browsers may keep an open socket through an offline switch; drop it, as
  // a lost network would, and let the provider's reconnects fail.
  await a.page.evaluate(() => window.weft.provider.ws?.close())
  await a.page.locator('#status[data-state="disconnected"]').waitFor({ timeout: 15000 })
  await a.page.locator('.cm-content').click()
  await a.page.keyboard.type('typed offline. ')
  await b.page.locator('.cm-content').click()
  await b.page.keyboard.type('typed online. ')
  assert.equal(await text(b.page), 'typed online. ', 'nothing from the offline editor yet')

  await a.context.setOffline(false)
  await a.page.locator('#status[data-state="connected"]').waitFor({ timeout: 20000 })
  await waitFor(async () => {
    const [ta, tb] = [await text(a.page), await text(b.page)]
    return ta === tb && ta.includes('typed offline.') && ta.includes('typed online.')
  }, 20000, 'both editors to converge')
})

test('the viewer keeps following across a server restart', async () => {
  const weft = await startWeft(['--sse-retry-ms', '200'])
  const ed = await open(`${weft.httpUrl}/edit/restart`)
  const v = await open(`${weft.httpUrl}/view/restart`)
  await ed.page.locator('#status[data-state="connected"]').waitFor({ timeout: 15000 })
  await v.page.locator('#status[data-state="connected"]').waitFor({ timeout: 15000 })
  await ed.page.locator('.cm-content').click()
  await ed.page.keyboard.type('before the restart. ')
  await waitFor(async () => (await viewerText(v.page)) === 'before the restart. ', 15000, 'the viewer')
  const idBefore = await v.page.locator('#last-event-id').innerText()

  await weft.kill9()
  await v.page.locator('#status[data-state="connecting"]').waitFor({ timeout: 15000 })
  await weft.start()
  await ed.page.locator('#status[data-state="connected"]').waitFor({ timeout: 20000 })
  await v.page.locator('#status[data-state="connected"]').waitFor({ timeout: 20000 })
  await ed.page.keyboard.type('after it.')
  await waitFor(async () => (await viewerText(v.page)) === 'before the restart. after it.', 20000, 'the viewer after the restart')
  const idAfter = await v.page.locator('#last-event-id').innerText()
  const seq = id => Number(id.split('-')[1])
  assert.equal(idAfter.split('-')[0], idBefore.split('-')[0], 'same document incarnation')
  assert.ok(seq(idAfter) > seq(idBefore), `${idAfter} follows ${idBefore}`)
})

test('/follow follows 20 documents at once over HTTP/2 with TLS', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'weft-tls-'))
  const [cert, key] = [join(dir, 'cert.pem'), join(dir, 'key.pem')]
  execFileSync('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes',
    '-keyout', key, '-out', cert, '-days', '1', '-subj', '/CN=127.0.0.1', '-addext', 'subjectAltName=IP:127.0.0.1'],
  { stdio: 'ignore' })
  // One client creates all 20 documents at once, past the default limit on
  // new documents per address (10 at once).
  const weft = await startWeft(['--tls-cert', cert, '--tls-key', key, '--max-new-docs-per-minute', '0'])
  const docs = Array.from({ length: 20 }, (_, i) => `followed-${i}`)
  const base = `https://${weft.addr}`
  const { page } = await open(`${base}/follow?docs=${docs.join(',')}`)
  const protocol = await page.evaluate(() => performance.getEntriesByType('navigation')[0].nextHopProtocol)
  assert.equal(protocol, 'h2')
  await waitFor(async () => (await page.locator('.card .status[data-state="connected"]').count()) === 20, 20000,
    'all 20 streams to be live at once (HTTP/1.1 would allow six)')

  // A change to each document; every card must show its own.
  for (const name of docs) {
    const ydoc = new Y.Doc()
    ydoc.getText('content').insert(0, `live text of ${name}`)
    assert.equal(await postOverTls(weft.addr, `/docs/${name}/updates`, Y.encodeStateAsUpdate(ydoc)), 200)
  }
  for (const name of docs) {
    const card = page.locator(`.card[data-doc="${name}"]`)
    await waitFor(async () => (await card.locator('.content').innerText()) === `live text of ${name}`,
      15000, `the card of ${name}`)
    assert.match(await card.locator('.last-id').innerText(), /^[0-9a-f]{16}-1$/, 'the id of the change shown')
  }
  await page.screenshot({ path: join(ARTIFACTS, 'follow.png') })
})
