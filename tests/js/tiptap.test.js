// Tiptap in a real browser (Debian's Chromium, driven by playwright-core)
// on the unmodified @hocuspocus/provider against weft: two tabs type into
// one document and each shows the other's named caret, while a third tab,
// weft's own CodeMirror editor on y-websocket, edits another document
// beside them. The Tiptap page (pages/tiptap.js) is bundled with esbuild
// and served by a plain HTTP server of its own on loopback (lib/tiptap-app.js):
// an app on its own origin, connecting to weft as such apps do.
import { test, before, after } from 'node:test'
import assert from 'node:assert/strict'
import { chromium } from 'playwright-core'
import { Weft, waitFor } from './lib/weft.js'
import { startTiptapApp, tiptapTab as openTiptap } from './lib/tiptap-app.js'

const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium'
const FLAGS = ['--headless', '--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking',
  '--disable-component-update', '--disable-sync', '--disable-quic']

let browser
let app
const cleanups = []
before(async () => {
  app = await startTiptapApp()
  browser = await chromium.launch({ executablePath: CHROMIUM, args: FLAGS })
})
after(async () => {
  for (const c of cleanups.reverse()) await c()
  await browser?.close()
  app?.close()
})

/** A tab of its own (its own browser context) with the Tiptap page for `user`, on Hocuspocus' provider. */
const tiptapTab = (weft, doc, user) => openTiptap(browser, app, { url: `ws://${weft.addr}/hocuspocus` }, doc, user, cleanups)

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
