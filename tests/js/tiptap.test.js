// Tiptap in a real browser (Debian's Chromium, driven by playwright-core)
// on the unmodified @hocuspocus/provider against weft: two tabs type into
// one document and each shows the other's named caret, while a third tab,
// weft's own CodeMirror editor on y-websocket, edits another document
// beside them. The Tiptap page (pages/tiptap.js) is bundled with esbuild
// here and served by a plain HTTP server of its own on loopback: an app on
// its own origin, connecting to weft as such apps do.
import { test, before, after } from 'node:test'
import assert from 'node:assert/strict'
import { createServer } from 'node:http'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { build } from 'esbuild'
import { chromium } from 'playwright-core'
import { Weft, waitFor } from './lib/weft.js'

const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium'
const FLAGS = ['--headless', '--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking',
  '--disable-component-update', '--disable-sync', '--disable-quic']
const here = dirname(fileURLToPath(import.meta.url))

let browser
let bundle
let app
const cleanups = []
before(async () => {
  const built = await build({
    entryPoints: [join(here, 'pages', 'tiptap.js')],
    bundle: true,
    format: 'esm',
    write: false,
    logLevel: 'error'
  })
  bundle = built.outputFiles[0].text
  app = await serveApp()
  browser = await chromium.launch({ executablePath: CHROMIUM, args: FLAGS })
})
after(async () => {
  for (const c of cleanups.reverse()) await c()
  await browser?.close()
  app?.server.close()
})

/** The app's own server: the page and its script, on 127.0.0.1. */
async function serveApp () {
  const server = createServer((req, res) => {
    const isScript = req.url.startsWith('/app.js')
    res.writeHead(200, { 'content-type': isScript ? 'text/javascript' : 'text/html; charset=utf-8' })
    res.end(isScript ? bundle : PAGE)
  })
  await new Promise(resolve => server.listen(0, '127.0.0.1', resolve))
  return { server, url: `http://127.0.0.1:${server.address().port}` }
}

const PAGE = '<!doctype html><meta charset="utf-8"><title>Tiptap on weft</title>' +
  '<style>.collaboration-carets__caret{border-left:1px solid;margin:0 -1px;position:relative}' +
  '.collaboration-carets__label{position:absolute;top:-1.4em;left:-1px;font-size:12px}</style>' +
  '<div id="editor"></div><script type="module" src="/app.js"></script>'

/** A tab of its own (its own browser context) with the Tiptap page for `user`. */
async function tiptapTab (weft, doc, user) {
  const context = await browser.newContext()
  cleanups.push(() => context.close())
  const page = await context.newPage()
  const errors = []
  page.on('pageerror', e => errors.push(e.message))
  const query = new URLSearchParams({ url: `ws://${weft.addr}/hocuspocus`, doc, user })
  await page.goto(`${app.url}/?${query}`)
  await waitFor(() => page.evaluate(() => window.tiptap?.provider.isSynced === true), 15000,
    () => `${user}'s editor to sync (page errors: ${errors.join('; ') || 'none'})`)
  return page
}

const text = page => page.evaluate(() => window.tiptap.editor.getText())

test('two Tiptap tabs type together with named carets, beside a CodeMirror tab', async () => {
  const weft = await new Weft().start()
  cleanups.push(() => weft.cleanup())
  const ada = await tiptapTab(weft, 'story', 'Ada')
  const grace = await tiptapTab(weft, 'story', 'Grace')

  await ada.locator('.ProseMirror').click()
  await ada.keyboard.type('Hello from Ada.')
  await waitFor(async () => (await text(grace)) === 'Hello from Ada.', 15000, 'Grace to see Ada\'s text')
  await grace.locator('.ProseMirror').click()
  await grace.keyboard.press('End')
  await grace.keyboard.type(' And Grace.')
  await waitFor(async () => (await text(ada)) === 'Hello from Ada. And Grace.', 15000, 'Ada to see Grace\'s text')

  // Each shows the other's caret, labelled with the name.
  await grace.locator('.collaboration-carets__label', { hasText: 'Ada' }).waitFor({ state: 'attached', timeout: 15000 })
  await ada.locator('.collaboration-carets__label', { hasText: 'Grace' }).waitFor({ state: 'attached', timeout: 15000 })

  // weft's CodeMirror page, on y-websocket, edits another document beside them.
  const context = await browser.newContext()
  cleanups.push(() => context.close())
  const codemirror = await context.newPage()
  await codemirror.goto(`${weft.httpUrl}/edit/notes`)
  await codemirror.locator('#status[data-state="connected"]').waitFor({ timeout: 15000 })
  await codemirror.locator('.cm-content').click()
  await codemirror.keyboard.type('CodeMirror beside Tiptap')
  await waitFor(() => codemirror.evaluate(() => window.weft.ytext.toString() === 'CodeMirror beside Tiptap'),
    15000, 'the CodeMirror text')

  // Both documents are stored as typed, each apart from the other.
  await waitFor(async () => {
    const story = await (await fetch(`${weft.httpUrl}/docs/story/json`)).text()
    return story.includes('Hello from Ada. And Grace.')
  }, 15000, 'the Tiptap document in the HTTP API')
  const notes = await (await fetch(`${weft.httpUrl}/docs/notes/json`)).json()
  assert.deepEqual(Object.values(notes), ['CodeMirror beside Tiptap'])
  assert.equal(await text(ada), 'Hello from Ada. And Grace.')
})
