// The history page (/history/{doc}) in Debian's Chromium, driven by
// playwright-core, against the real weft binary with tokens and an admin
// key: two authors edit over y-websocket; the page lists their changes,
// scrubs back to the text as it was, marks what changed since, and
// restores that point live into an open editor tab. Its errors (no such
// document, no token, a busy server, a wrong admin key) are said on the page.
// And reverting one author (POST /admin/docs/{doc}/revert): three
// y-websocket editors interleave edits of one paragraph and one map; every
// editor, still connected, converges to the paragraph without one author's
// words and with what that author deleted put back, the others' edits kept.
import { test, before, after } from 'node:test'
import assert from 'node:assert/strict'
import { createHmac } from 'node:crypto'
import { mkdirSync } from 'node:fs'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { chromium } from 'playwright-core'
import * as Y from 'yjs'
import { WebsocketProvider } from 'y-websocket'
import WebSocket from 'ws'
import { Weft, waitFor } from './lib/weft.js'

const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium'
const ARTIFACTS = join(dirname(fileURLToPath(import.meta.url)), '..', 'artifacts')
const FLAGS = ['--headless', '--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking',
  '--disable-component-update', '--disable-sync', '--disable-quic']
const SECRET = 'js-history-secret-0123456789abcdefghij'
const ADMIN = 'js-history-admin-key-0123456789abcdef'

let browser
const cleanups = []
before(async () => {
  mkdirSync(ARTIFACTS, { recursive: true })
  browser = await chromium.launch({ executablePath: CHROMIUM, args: FLAGS })
})
after(async () => {
  for (const c of cleanups.reverse()) await c()
  await browser?.close()
})

/** An HS256 JWT, as any backend that shares the secret would make it. */
function jwt (doc, mode, sub) {
  const b64 = obj => Buffer.from(JSON.stringify(obj)).toString('base64url')
  const claims = { doc, mode, sub, exp: Math.floor(Date.now() / 1000) + 600 }
  const body = `${b64({ alg: 'HS256', typ: 'JWT' })}.${b64(claims)}`
  return `${body}.${createHmac('sha256', SECRET).update(body).digest('base64url')}`
}

async function startWeft () {
  const weft = await new Weft(['--auth-secret', SECRET, '--admin-key', ADMIN]).start()
  cleanups.push(() => weft.cleanup())
  return weft
}

/** A y-websocket editor of `room` writing as `sub`. */
async function author (weft, room, sub) {
  const doc = new Y.Doc()
  const provider = new WebsocketProvider(weft.wsUrl, room, doc, {
    WebSocketPolyfill: WebSocket, disableBc: true, params: { token: jwt(room, 'write', sub) }
  })
  cleanups.push(() => { provider.destroy(); doc.destroy() })
  await waitFor(() => provider.synced, 10000, `${sub} to sync`)
  return { doc, text: doc.getText('content'), meta: doc.getMap('meta') }
}

/** The document's listed changes (a read token's view), once there are `n`. */
async function history (weft, room, n) {
  let changes = []
  await waitFor(async () => {
    const res = await fetch(`${weft.httpUrl}/docs/${room}/history?token=${jwt(room, 'read', 'test')}`)
    changes = res.ok ? (await res.json()).changes : []
    return changes.length === n
  }, 10000, () => `${n} changes listed (have ${changes.length})`)
  return changes
}

/** A page in a context of its own (its own session storage). */
async function open (url) {
  const context = await browser.newContext({ viewport: { width: 1280, height: 860 } })
  cleanups.push(() => context.close())
  const page = await context.newPage()
  await page.goto(url)
  return page
}

const shown = (page, root) => page.locator(`#roots [data-root="${root}"] .then`).textContent()
const marked = async (page, tag) => (await page.locator(`#roots [data-root="content"] .diff ${tag}`).allTextContents()).join('|')

test('history page: timeline, scrub to a point, diff against now, live restore', async () => {
  const weft = await startWeft()
  const ada = await author(weft, 'story', 'ada')
  const grace = await author(weft, 'story', 'grace')
  // Four changes, each stored before the next is made; the text after each.
  const texts = []
  const edits = [
    () => ada.text.insert(0, 'The quick fox.'),
    () => grace.doc.transact(() => {
      grace.text.insert(grace.text.length, ' It naps.')
      grace.meta.set('title', 'Fox')
    }),
    () => ada.text.insert(9, ' brown'),
    () => grace.doc.transact(() => {
      grace.text.delete(20, 9)
      grace.text.insert(20, ' It runs.')
      grace.meta.set('title', 'Running fox')
    })
  ]
  for (const [i, edit] of edits.entries()) {
    const by = i % 2 ? grace : ada
    await waitFor(() => by.text.toString() === (texts[i - 1] ?? ''), 10000, 'the previous edit to arrive')
    edit()
    texts.push(by.text.toString())
    await history(weft, 'story', i + 1)
  }
  assert.deepEqual(texts, ['The quick fox.', 'The quick fox. It naps.', 'The quick brown fox. It naps.',
    'The quick brown fox. It runs.'])
  const ids = (await history(weft, 'story', 4)).map(c => c.id)

  // An editor tab, open (and never reloaded) through the restore.
  const editor = await open(`${weft.httpUrl}/edit/story?token=${jwt('story', 'write', 'tab')}`)
  await editor.locator('#status[data-state="connected"]').waitFor({ timeout: 15000 })
  await waitFor(async () => (await editor.evaluate(() => window.weft.ytext.toString())) === texts[3], 15000,
    'the editor tab to show the text')
  assert.match(await editor.locator('#history-link').getAttribute('href'), /^\/history\/story\?token=/)

  // The page, with a read token: every change listed, grouped by author.
  const page = await open(`${weft.httpUrl}/history/story?token=${jwt('story', 'read', 'reader')}`)
  await waitFor(async () => (await page.locator('#timeline .change').count()) === 4, 15000, 'the timeline')
  assert.deepEqual(
    (await page.locator('#timeline .change').evaluateAll(els => els.map(e => e.dataset.id))).sort(), [...ids].sort())
  assert.deepEqual(await page.locator('#timeline .group').evaluateAll(els => els.map(e => e.dataset.author)),
    ['grace', 'ada', 'grace', 'ada'], 'groups by author, newest first')
  assert.match(await page.locator('#summary').innerText(), /4 changes by 2 authors/)
  assert.equal(await page.locator('#cap-note').isHidden(), true, 'nothing left out')
  // It opens at the newest change: the text as it is now, no differences.
  await page.locator(`#roots[data-loaded="${ids[3]}"]`).waitFor({ timeout: 15000 })
  assert.equal(await shown(page, 'content'), texts[3])

  // Scrub the slider back to the first change, then one step on.
  await page.locator('#scrub').focus()
  await page.keyboard.press('Home')
  await page.locator(`#roots[data-loaded="${ids[0]}"]`).waitFor({ timeout: 15000 })
  assert.equal(await shown(page, 'content'), texts[0])
  await page.keyboard.press('ArrowRight')
  await page.locator(`#roots[data-loaded="${ids[1]}"]`).waitFor({ timeout: 15000 })
  assert.equal(await shown(page, 'content'), texts[1])
  assert.match(await page.locator('#point').innerText(), new RegExp(`After change ${ids[1]} \\(2 of 4\\) by grace`))
  // The map root comes from the JSON endpoint.
  assert.equal(await page.locator('#roots [data-root="meta"]').getAttribute('data-kind'), 'other')
  assert.match(await shown(page, 'meta'), /"title": "Fox"/)
  // The diff against now: what came since is marked inserted, what went deleted.
  const inserted = await marked(page, 'ins')
  const deleted = await marked(page, 'del')
  assert.match(inserted, /brown/)
  assert.match(inserted, /runs/)
  assert.match(deleted, /naps/)
  assert.doesNotMatch(inserted + deleted, /quick|fox/, 'unchanged words are not marked')

  // Without the admin key, restoring is off and the page says why.
  assert.equal(await page.locator('#restore').isDisabled(), true)
  assert.match(await page.locator('#restore-note').innerText(), /needs weft’s admin key/)
  await page.locator('#admin-key').fill(ADMIN)
  assert.equal(await page.locator('#restore').isEnabled(), true)
  assert.deepEqual(await page.evaluate(() => [sessionStorage.getItem('weft-admin-key'), localStorage.length]),
    [ADMIN, 0], 'the key is kept in session storage only')
  await page.screenshot({ path: join(ARTIFACTS, 'history.png'), fullPage: true })

  await page.locator('#restore').click()
  await page.locator('#restore-status[data-state="ok"]').waitFor({ timeout: 15000 })
  assert.match(await page.locator('#restore-status').innerText(), /^Restored/)
  // The open editor tab and both authors converge on the point, live.
  await waitFor(async () => (await editor.evaluate(() => window.weft.ytext.toString())) === texts[1], 15000,
    'the editor tab to show the restored text')
  await waitFor(async () => (await editor.locator('.cm-content').innerText()) === texts[1], 15000, 'CodeMirror to show it')
  await waitFor(() => ada.text.toString() === texts[1] && grace.meta.get('title') === 'Fox', 15000, 'the authors')
  // The restore is listed as a change by admin; the point now equals now.
  await waitFor(async () => (await page.locator('#timeline .change').count()) === 5, 15000, 'the restore listed')
  assert.equal(await page.locator('#timeline .group').first().getAttribute('data-author'), 'admin')
  await waitFor(async () => (await page.locator('#roots [data-root="content"] .diff.same').count()) === 1, 15000,
    'no differences left')
  assert.equal(await shown(page, 'content'), texts[1])

  // Reload: a change made since is listed, and the point is compared with it.
  ada.text.insert(ada.text.length, ' The end.')
  await history(weft, 'story', 6)
  await page.locator('#reload').click()
  await waitFor(async () => (await page.locator('#timeline .change').count()) === 6, 15000, 'the new change listed')
  await waitFor(async () => (await marked(page, 'ins')) === ' The end.', 15000, 'the new change marked')
  assert.match(await page.locator('#point').innerText(), new RegExp(`After change ${ids[1]} `), 'the point kept')
})

test('history page: errors are said on the page', async () => {
  const weft = await startWeft()
  const ydoc = new Y.Doc()
  ydoc.getText('content').insert(0, 'one line')
  const post = await fetch(`${weft.httpUrl}/docs/errs/updates?token=${jwt('errs', 'write', 'bot')}`,
    { method: 'POST', body: Y.encodeStateAsUpdate(ydoc) })
  assert.equal(post.status, 200)
  const errorText = page => page.locator('#error-text').innerText()
  const visibleError = page => page.locator('#error:not([hidden])').waitFor({ timeout: 15000 })

  // A document never written.
  const missing = await open(`${weft.httpUrl}/history/nothing-here?token=${jwt('nothing-here', 'read', 'r')}`)
  await visibleError(missing)
  assert.match(await errorText(missing), /There is no document “nothing-here”/)

  // No token, where tokens are required.
  const anonymous = await open(`${weft.httpUrl}/history/errs`)
  await visibleError(anonymous)
  assert.match(await errorText(anonymous), /Not authorized to read “errs”.*\?token=/)

  // A busy server (the 503 a rebuild answers when two already run), then a retry.
  const context = await browser.newContext()
  cleanups.push(() => context.close())
  const busy = await context.newPage()
  const busyRoute = url => url.pathname === '/docs/errs' && url.searchParams.has('at')
  await busy.route(busyRoute, route => route.fulfill({
    status: 503,
    headers: { 'content-type': 'application/json', 'retry-after': '1' },
    body: JSON.stringify({ error: 'busy', message: 'too many rebuilds at once' })
  }))
  await busy.goto(`${weft.httpUrl}/history/errs?token=${jwt('errs', 'read', 'r')}`)
  await visibleError(busy)
  assert.match(await errorText(busy), /weft is busy right now: too many rebuilds at once\. Try again in 1 s/)
  await busy.unroute(busyRoute)
  await busy.locator('#error-retry').click()
  await busy.locator('#roots[data-loaded$="-1"]').waitFor({ timeout: 15000 })
  assert.equal(await shown(busy, 'content'), 'one line')
  assert.equal(await busy.locator('#error').isHidden(), true)

  // A wrong admin key: the restore is refused, and the page says so.
  await busy.locator('#admin-key').fill('not-the-admin-key-0123456789abcdef')
  await busy.locator('#restore').click()
  await busy.locator('#restore-status[data-state="error"]').waitFor({ timeout: 15000 })
  assert.match(await busy.locator('#restore-status').innerText(), /Restore failed\. The admin key was refused: the admin key is wrong/)
})

async function revert (weft, room, body) {
  const res = await fetch(`${weft.httpUrl}/admin/docs/${room}/revert`, {
    method: 'POST',
    headers: { authorization: `Bearer ${ADMIN}`, 'content-type': 'application/json' },
    body: JSON.stringify(body)
  })
  return { status: res.status, body: await res.json() }
}

test('reverting one author reaches every open editor and leaves the others\' work', async () => {
  const weft = await startWeft()
  const room = 'paragraph'
  const [ada, grace, mallory] = [
    await author(weft, room, 'ada'),
    await author(weft, room, 'grace'),
    await author(weft, room, 'mallory')
  ]
  const everyone = [ada, grace, mallory]
  let stored = 0
  // Each edit is made once everyone has the one before, as people typing.
  const step = async (who, change) => {
    who.doc.transact(() => change(who))
    stored += 1
    await history(weft, room, stored)
    const want = who.text.toString()
    await waitFor(() => everyone.every(e => e.text.toString() === want), 10000, `everyone to read "${want}"`)
  }
  await step(ada, e => { e.text.insert(0, 'The quick fox jumps over the dog.'); e.meta.set('title', 'Draft') })
  await step(grace, e => e.text.insert(9, ' brown'))
  await step(mallory, e => { e.text.delete(0, 4); e.text.insert(0, 'Some ') })
  await step(grace, e => e.text.insert(e.text.toString().indexOf('dog'), 'lazy '))
  await step(mallory, e => { e.text.delete(e.text.toString().indexOf('fox'), 3); e.meta.set('title', 'Spam') })
  await step(ada, e => e.text.insert(e.text.length, ' The end.'))
  await step(mallory, e => e.text.insert(e.text.toString().indexOf('jumps'), 'never '))
  assert.equal(ada.text.toString(), 'Some quick brown  never jumps over the lazy dog. The end.')

  const first = (await history(weft, room, stored))[0].id
  const { status, body } = await revert(weft, room, { author: 'mallory', since: first })
  assert.equal(status, 200, JSON.stringify(body))
  assert.equal(body.changes, 3)
  assert.equal(body.since, first)
  assert.ok(body.change, JSON.stringify(body))

  // Mallory's words go, "The " and "fox" come back, the title is ada's
  // again; grace's and ada's edits stay. No editor reloaded.
  const want = 'The quick brown fox jumps over the lazy dog. The end.'
  await waitFor(() => everyone.every(e => e.text.toString() === want), 10000,
    () => `every editor to converge (have ${everyone.map(e => JSON.stringify(e.text.toString())).join(', ')})`)
  for (const [i, e] of everyone.entries()) assert.equal(e.meta.get('title'), 'Draft', `editor ${i}`)
  stored += 1
  const listed = await history(weft, room, stored)
  assert.deepEqual([listed.at(-1).author, listed.at(-1).via], ['admin', 'revert:mallory'])

  // The editors go on editing the reverted text together.
  await step(grace, e => e.text.insert(0, '> '))
  assert.equal(mallory.text.toString(), `> ${want}`)

  // An author with nothing since the point changes nothing.
  const none = await revert(weft, room, { author: 'nobody', since: first })
  assert.equal(none.status, 200)
  assert.deepEqual([none.body.changes, none.body.change], [0, null])
})
