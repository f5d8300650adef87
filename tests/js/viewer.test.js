// The read-only viewer (/view/{doc}), the follower (/follow) and the home
// page's list in Debian's Chromium, driven by playwright-core, against the
// real weft binary, on documents no demo editor wrote: a real Tiptap editor's
// (StarterKit and Collaboration on y-websocket, an XML fragment named
// `default`), a formatted Y.Text named `t` and a map beside an array and a
// text, both written by y-websocket clients in Node. The viewer shows what
// each holds, live, with the editors' carets and selections; hostile content
// stays inert text; the follower previews each document's main root; the
// home list says sizes, last changes and who is connected, newest first.
// Screenshots: tests/artifacts/viewer-{tiptap,text,map}.png, follow-roots.png
// and home.png.
import { test, before, after, afterEach } from 'node:test'
import assert from 'node:assert/strict'
import { mkdirSync } from 'node:fs'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { chromium } from 'playwright-core'
import * as Y from 'yjs'
import { WebsocketProvider } from 'y-websocket'
import WebSocket from 'ws'
import { Weft, waitFor } from './lib/weft.js'
import { startTiptapApp, tiptapTab } from './lib/tiptap-app.js'

const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium'
const ARTIFACTS = join(dirname(fileURLToPath(import.meta.url)), '..', 'artifacts')
const FLAGS = ['--headless', '--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking',
  '--disable-component-update', '--disable-sync', '--disable-quic']
/** A 2×2 red PNG. */
const PNG = 'data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAIAAAACCAIAAAD91JpzAAAAEElEQVR4nGN4YGgIRAwQCgAmAgUJuG8OPwAAAABJRU5ErkJggg=='

let browser
let app
const cleanups = []
before(async () => {
  mkdirSync(ARTIFACTS, { recursive: true })
  app = await startTiptapApp()
  browser = await chromium.launch({ executablePath: CHROMIUM, args: FLAGS })
})
after(async () => {
  for (const c of cleanups.reverse()) await c()
  await browser?.close()
  app?.close()
})
/** Errors thrown on weft's pages: none may be. */
const pageErrors = []
afterEach(() => assert.deepEqual(pageErrors.splice(0), [], 'errors on weft\'s pages'))

async function startWeft () {
  const weft = await new Weft().start()
  cleanups.push(() => weft.cleanup())
  return weft
}

/** A page of its own (its own browser context), once its stream is live; page errors fail the test. */
async function open (url, { live = true } = {}) {
  const context = await browser.newContext({ viewport: { width: 1000, height: 720 } })
  cleanups.push(() => context.close())
  const page = await context.newPage()
  page.on('pageerror', e => pageErrors.push(`${url}: ${e.message}`))
  await page.goto(url)
  if (live) await page.locator('#status[data-state="connected"]').waitFor({ timeout: 15000 })
  return page
}

/** A y-websocket client in Node on `room`, synced. */
async function client (weft, room) {
  const doc = new Y.Doc()
  const provider = new WebsocketProvider(weft.wsUrl, room, doc, { WebSocketPolyfill: WebSocket, disableBc: true })
  cleanups.push(() => { provider.destroy(); doc.destroy() })
  await waitFor(() => provider.synced, 10000, `a client of ${room} to sync`)
  return { doc, provider }
}

/** POSTs `doc` whole to weft as one change. */
async function post (weft, room, doc) {
  const res = await fetch(`${weft.httpUrl}/docs/${room}/updates`, { method: 'POST', body: Y.encodeStateAsUpdate(doc) })
  assert.equal(res.status, 200, await res.text())
}

const shown = page => page.locator('#root-view')
const innerText = locator => locator.innerText()
/** Waits until `locator` (one element) has text `want` (a string or a RegExp). */
async function waitText (locator, want, what) {
  let last = ''
  await waitFor(async () => {
    last = (await locator.count()) === 1 ? await locator.innerText() : `(${await locator.count()} elements)`
    return typeof want === 'string' ? last === want : want.test(last)
  }, 15000, () => `${what}: want ${want}, have ${JSON.stringify(last)}`)
}

const TIPTAP_HTML = '<h2>Meeting notes</h2>' +
  '<p>Plain, <strong>bold</strong>, <em>italic</em>, <s>struck</s>, <code>code</code> and a ' +
  '<a href="https://example.com/weft">link</a>.<br>After a hard break.</p>' +
  '<ul><li><p>First point</p></li><li><p>Second point</p></li></ul>' +
  '<ol><li><p>One</p></li><li><p>Two</p></li></ol>' +
  '<blockquote><p>Quoted words.</p></blockquote>' +
  '<pre><code>const answer = 42</code></pre>' +
  '<hr><p>Last paragraph.</p>'

test('a Tiptap document shows as rich text, live, with the editor\'s caret and selection', async () => {
  const weft = await startWeft()
  const ada = await tiptapTab(browser, app, { ws: weft.wsUrl }, 'tiptap-notes', 'Ada', cleanups)
  await ada.evaluate(html => window.tiptap.editor.chain().focus().setContent(html).run(), TIPTAP_HTML)
  // It is Tiptap's document: an XML fragment named `default`.
  await waitFor(async () => {
    const json = await (await fetch(`${weft.httpUrl}/docs/tiptap-notes/json`)).json().catch(() => ({}))
    return typeof json.default === 'string' && json.default.includes('Last paragraph.')
  }, 15000, 'the Tiptap document to be stored')

  const v = await open(`${weft.httpUrl}/view/tiptap-notes`)
  const view = shown(v)
  await waitText(view.locator('h2'), 'Meeting notes', 'the heading (level 2)')
  assert.equal(await v.locator('#roots [role="tab"]').count(), 1)
  assert.match(await v.locator('#roots [role="tab"][aria-selected="true"]').innerText(), /^default rich text · \d+ blocks$/)
  assert.equal(await view.getAttribute('data-kind'), 'xml')
  assert.equal(await innerText(view.locator('p strong')), 'bold')
  assert.equal(await innerText(view.locator('p em')), 'italic')
  assert.equal(await innerText(view.locator('p s')), 'struck')
  assert.equal(await innerText(view.locator('p code')), 'code')
  const link = view.locator('a')
  assert.equal(await link.innerText(), 'link')
  assert.equal(await link.getAttribute('href'), 'https://example.com/weft')
  assert.equal(await view.locator('p br').count(), 1, 'the hard break')
  assert.deepEqual(await view.locator('ul > li').allInnerTexts(), ['First point', 'Second point'])
  assert.deepEqual(await view.locator('ol > li').allInnerTexts(), ['One', 'Two'])
  assert.equal(await innerText(view.locator('blockquote')), 'Quoted words.')
  assert.equal(await innerText(view.locator('pre > code')), 'const answer = 42')
  assert.equal(await view.locator('hr').count(), 1)
  assert.equal(await view.locator('.node-unknown').count(), 0, 'every node Tiptap wrote is known')

  // Live: what Ada types appears, with her caret after it.
  await ada.evaluate(() => window.tiptap.editor.commands.focus('end'))
  await ada.keyboard.type(' Typed live.')
  await waitText(view.locator('p').last(), /^Last paragraph\. Typed live\.\s*Ada$/, 'the typing, then Ada\'s caret')
  await v.locator('p:last-child .caret[data-user="Ada"] .caret-label', { hasText: 'Ada' }).waitFor({ timeout: 15000 })
  // Her selection shows where she makes it.
  await ada.evaluate(() => {
    const { editor } = window.tiptap
    let from = null
    editor.state.doc.descendants((node, pos) => {
      if (from === null && node.isText && node.text.includes('Quoted')) from = pos + node.text.indexOf('Quoted')
    })
    editor.chain().focus().setTextSelection({ from, to: from + 'Quoted'.length }).run()
  })
  await waitText(view.locator('.selection[data-user="Ada"]'), 'Quoted', 'Ada\'s selection')
  await v.locator('blockquote .caret[data-user="Ada"]').waitFor({ timeout: 15000 })
  await v.screenshot({ path: join(ARTIFACTS, 'viewer-tiptap.png') })
})

test('a formatted text in `t` shows with its headings, lists, marks, links and image, live, with a cursor', async () => {
  const weft = await startWeft()
  const { doc, provider } = await client(weft, 'release-notes')
  const t = doc.getText('t')
  t.applyDelta([
    { insert: 'Release notes' }, { insert: '\n', attributes: { header: 1 } },
    { insert: 'Ships with ' }, { insert: 'bold', attributes: { bold: true } }, { insert: ', ' },
    { insert: 'italic', attributes: { italic: true } }, { insert: ' and a ' },
    { insert: 'link', attributes: { link: 'https://example.com/notes' } }, { insert: ', not a ' },
    { insert: 'script', attributes: { link: 'javascript:window.pwned=1' } }, { insert: '.\n' },
    { insert: 'first item' }, { insert: '\n', attributes: { list: 'bullet' } },
    { insert: 'second item' }, { insert: '\n', attributes: { list: 'bullet' } },
    { insert: 'An image: ' }, { insert: { image: PNG } }, { insert: { image: 'javascript:window.pwned=2' } }, { insert: '\n' }
  ])

  const v = await open(`${weft.httpUrl}/view/release-notes`)
  const view = shown(v)
  await waitText(view.locator('h1'), 'Release notes', 'the heading')
  assert.match(await v.locator('#roots [role="tab"][aria-selected="true"]').innerText(), /^t text · \d+ characters$/)
  assert.equal(await view.getAttribute('data-kind'), 'text')
  assert.equal(await innerText(view.locator('strong')), 'bold')
  assert.equal(await innerText(view.locator('em')), 'italic')
  assert.equal(await view.locator('a').count(), 1, 'only the http(s) link is a link')
  assert.equal(await view.locator('a').getAttribute('href'), 'https://example.com/notes')
  assert.equal(await innerText(view.locator('.link-unsafe')), 'script')
  assert.deepEqual(await view.locator('ul > li').allInnerTexts(), ['first item', 'second item'])
  assert.equal(await view.locator('img').count(), 1, 'only the data:image URL is an image')
  assert.equal(await view.locator('img').getAttribute('src'), PNG)
  await waitFor(() => view.locator('img').evaluate(img => img.complete && img.naturalWidth === 2), 15000, 'the image to load')
  assert.equal(await view.locator('.embed').count(), 1, 'the other image is shown as what it is')

  // Live: a new line, then made a heading by its newline's attributes.
  t.insert(t.length, 'Known issues')
  await waitText(view.locator('.line').last(), 'Known issues', 'the new line')
  t.insert(t.length, '\n', { header: 2 })
  await waitText(view.locator('h2'), 'Known issues', 'the line made a heading')

  // A cursor as y-codemirror.next sets it: the text selected is shown, and the caret.
  const at = t.toString().indexOf('bold')
  provider.awareness.setLocalState({
    user: { name: 'Node bot', color: '#1971c2' },
    cursor: { anchor: Y.createRelativePositionFromTypeIndex(t, at), head: Y.createRelativePositionFromTypeIndex(t, at + 4) }
  })
  await waitText(view.locator('.selection[data-user="Node bot"]'), 'bold', 'the selection')
  await v.locator('.caret-label', { hasText: 'Node bot' }).waitFor({ timeout: 15000 })
  assert.equal(await v.evaluate(() => window.pwned), undefined)
  await v.screenshot({ path: join(ARTIFACTS, 'viewer-text.png') })
})

test('a map beside an array and a text: a tab each, the largest first, a JSON tree that stays as folded, ?root=', async () => {
  const weft = await startWeft()
  const { doc } = await client(weft, 'project')
  const settings = doc.getMap('settings')
  doc.transact(() => {
    settings.set('title', 'Quarterly plan')
    settings.set('owner', { name: 'Ada', team: 'core' })
    settings.set('tags', ['planning', 'q3'])
    settings.set('published', false)
    settings.set('budget', 12000)
    settings.set('limits', new Y.Map([['max', 10]]))
    doc.getArray('items').push([{ id: 1, label: 'draft' }, { id: 2, label: 'review' }])
    doc.getText('notes').insert(0, 'Short notes.')
  })

  const v = await open(`${weft.httpUrl}/view/project`)
  const view = shown(v)
  const entry = key => view.locator(`.json-root > .json-entry[data-key="${key}"]`)
  await waitText(entry('title').locator('.json-string'), '"Quarterly plan"', 'the title')
  assert.deepEqual(await v.locator('#roots [role="tab"] code').allInnerTexts(), ['settings', 'items', 'notes'])
  assert.match(await v.locator('#roots [role="tab"][aria-selected="true"]').innerText(), /^settings map · 6 keys$/)
  assert.equal(await entry('published').locator('.json-boolean').innerText(), 'false')
  assert.equal(await entry('budget').locator('.json-number').innerText(), '12000')
  assert.equal(await entry('owner').locator('summary .json-count').innerText(), '{2}')
  assert.equal(await entry('owner').locator('.json-children > [data-key="name"] .json-string').innerText(), '"Ada"')
  assert.deepEqual(await entry('tags').locator('.json-children .json-string').allInnerTexts(), ['"planning"', '"q3"'])

  // Folding the owner survives live changes, which show.
  await entry('owner').locator('summary').click()
  assert.equal(await entry('owner').getAttribute('open'), null)
  settings.set('status', 'approved')
  await waitText(entry('status').locator('.json-string'), '"approved"', 'the new key')
  settings.get('limits').set('max', 20)
  await waitText(entry('limits').locator('[data-key="max"] .json-number'), '20', 'the nested map\'s change')
  assert.equal(await entry('owner').getAttribute('open'), null, 'still folded')
  await v.screenshot({ path: join(ARTIFACTS, 'viewer-map.png') })

  // Another tab, named in the URL; and ?root= opens on one.
  await v.locator('#roots [role="tab"][data-root="items"]').click()
  await waitText(view.locator('.json-entry').first().locator('summary .json-count'), '{2}', 'the first item')
  assert.equal(new URL(v.url()).searchParams.get('root'), 'items')
  assert.match(await view.innerText(), /label: "draft"[\s\S]*label: "review"/)
  const n = await open(`${weft.httpUrl}/view/project?root=notes`)
  await waitText(shown(n).locator('.line'), 'Short notes.', 'the text chosen by ?root=')
  assert.equal(await n.locator('#roots [role="tab"][aria-selected="true"] code').innerText(), 'notes')
  const missing = await open(`${weft.httpUrl}/view/project?root=nothing-here`)
  await waitText(missing.locator('#root-note'), 'The document has no root named “nothing-here” (yet).', 'the note')
})

test('hostile and unknown XML stays inert text, shown, never dropped', async () => {
  const weft = await startWeft()
  const doc = new Y.Doc()
  const fragment = doc.getXmlFragment('default')
  const para = (...nodes) => { const p = new Y.XmlElement('paragraph'); p.insert(0, nodes); return p }
  const text = (s, attrs) => { const t = new Y.XmlText(); t.insert(0, s, attrs); return t }
  const image = new Y.XmlElement('image')
  image.setAttribute('src', 'javascript:window.pwned=1')
  image.setAttribute('alt', 'not an image')
  const script = new Y.XmlElement('script')
  script.insert(0, [text('window.pwned=2')])
  const mention = new Y.XmlElement('mention')
  mention.setAttribute('label', 'Grace')
  const callout = new Y.XmlElement('callout')
  callout.insert(0, [para(text('Inside a callout.'))])
  // Names that are properties of every JavaScript object.
  const constructor = new Y.XmlElement('constructor')
  constructor.insert(0, [text('Still shown.', { toString: {}, constructor: {} })])
  fragment.insert(0, [
    para(text('<img src=x onerror="window.pwned=3">', { link: { href: 'javascript:window.pwned=4' } })),
    para(text('Hello '), mention, text('!')),
    image, script, callout, constructor
  ])
  await post(weft, 'hostile', doc)

  const v = await open(`${weft.httpUrl}/view/hostile`)
  const view = shown(v)
  await waitText(view.locator('.node-unknown[data-node="callout"]'), 'Inside a callout.', 'the unknown block\'s content')
  assert.equal(await innerText(view.locator('p').first()), '<img src=x onerror="window.pwned=3">')
  assert.equal(await view.locator('a, img, script').count(), 0)
  assert.equal(await innerText(view.locator('p').nth(1)), 'Hello ‹mention: Grace›!')
  assert.equal(await innerText(view.locator('.node-unknown[data-node="script"]')), 'window.pwned=2')
  assert.equal(await innerText(view.locator('.node-unknown').filter({ hasText: 'not an image' })), '[image: not an image]')
  assert.equal(await innerText(view.locator('.node-unknown[data-node="constructor"]')), 'Still shown.')
  assert.equal(await v.evaluate(() => window.pwned), undefined)
})

test('/follow previews each document\'s main root; the home list shows size, last change and connections, newest first', async () => {
  const weft = await startWeft()
  const rich = new Y.Doc()
  const heading = new Y.XmlElement('heading')
  heading.setAttribute('level', 1)
  heading.insert(0, [new Y.XmlText('Plan')])
  const paragraph = new Y.XmlElement('paragraph')
  paragraph.insert(0, [new Y.XmlText('Write the viewer.')])
  rich.getXmlFragment('default').insert(0, [heading, paragraph])
  await post(weft, 'rich', rich)
  const plain = new Y.Doc()
  plain.getText('t').insert(0, 'Text in t.')
  await post(weft, 'plain', plain)
  const config = new Y.Doc()
  config.getMap('config').set('theme', 'dark')
  await post(weft, 'config', config)

  const f = await open(`${weft.httpUrl}/follow?docs=rich,plain,config`, { live: false })
  const card = name => f.locator(`.card[data-doc="${name}"]`)
  await waitText(card('rich').locator('.content'), 'Plan\nWrite the viewer.', 'the rich text\'s preview')
  await waitText(card('plain').locator('.content'), 'Text in t.', 'the text\'s preview')
  await waitText(card('config').locator('.content'), '{"theme":"dark"}', 'the map\'s preview')
  assert.equal(await card('rich').locator('.root-name').innerText(), 'default')
  assert.equal(await card('rich').locator('.root-kind').innerText(), 'rich text · 2 blocks')
  assert.equal(await card('config').locator('.root-kind').innerText(), 'map · 1 key')
  for (const name of ['rich', 'plain', 'config']) {
    assert.match(await card(name).locator('.size').innerText(), /^\d+ B$/)
    await waitText(card(name).locator('.changed'), /just now|ago/, `${name}'s last change`)
    assert.match(await card(name).locator('.changed').getAttribute('datetime'), /^\d{4}-\d\d-\d\dT/)
  }
  // Live.
  plain.getText('t').insert(10, ' And more.')
  await post(weft, 'plain', plain)
  await waitText(card('plain').locator('.content'), 'Text in t. And more.', 'the live preview')
  await f.screenshot({ path: join(ARTIFACTS, 'follow-roots.png') })

  // The home list: newest change first, and it refreshes itself.
  const editor = await client(weft, 'config')
  const home = await open(`${weft.httpUrl}/`, { live: false })
  const rows = () => home.locator('#documents tbody tr').evaluateAll(trs => trs.map(tr => tr.dataset.doc))
  await waitFor(async () => JSON.stringify(await rows()) === '["plain","config","rich"]', 15000, 'newest first')
  const row = name => home.locator(`#documents tr[data-doc="${name}"]`)
  await waitFor(async () => (await row('config').locator('.editors').innerText()) === '1', 15000, 'the editor counted')
  for (const name of ['rich', 'plain', 'config']) {
    assert.match(await row(name).locator('.size').innerText(), /^\d+ B$/)
    assert.match(await row(name).locator('.changed').innerText(), /just now|ago/)
    assert.equal(await row(name).locator('.viewers').innerText(), '1', `the follower's stream of ${name}`)
  }
  editor.doc.getMap('config').set('theme', 'light')
  await waitFor(async () => (await rows())[0] === 'config', 15000, 'the changed document to move first without a reload')
  await home.screenshot({ path: join(ARTIFACTS, 'home.png') })
  await waitText(card('config').locator('.content'), '{"theme":"light"}', 'the follower')
})

test('deep nesting, subdocuments and object attributes: each root shows capped or says it can\'t, and the page stays live', async () => {
  const weft = await startWeft()
  const doc = new Y.Doc()
  const hostile = { toString: 1 }
  doc.transact(() => {
    // An XML fragment 20,000 elements deep, and a map 5,000 maps deep.
    let node = doc.getXmlFragment('deepxml')
    for (let i = 0; i < 20000; i++) {
      const child = new Y.XmlElement('div')
      node.insert(0, [child])
      node = child
    }
    node.insert(0, [new Y.XmlText('at the bottom')])
    let map = doc.getMap('deepmap')
    for (let i = 0; i < 5000; i++) {
      const child = new Y.Map()
      map.set('k', child)
      map = child
    }
    // A subdocument in a map and in an array; a key named __proto__.
    const subdocs = doc.getMap('subdocs')
    subdocs.set('s', new Y.Doc({ guid: 'sub-one' }))
    subdocs.set('list', new Y.Array())
    subdocs.get('list').push([new Y.Doc({ guid: 'sub-two' })])
    subdocs.set('__proto__', 'a key like any other')
    // Attributes that are objects where strings and numbers are expected.
    const heading = new Y.XmlElement('heading')
    heading.setAttribute('level', hostile)
    heading.insert(0, [new Y.XmlText('Odd heading')])
    const list = new Y.XmlElement('orderedList')
    list.setAttribute('start', hostile)
    const item = new Y.XmlElement('listItem')
    item.insert(0, [new Y.XmlText('Only item')])
    list.insert(0, [item])
    const link = new Y.XmlText()
    link.insert(0, 'odd link', { link: { href: hostile } })
    const para = new Y.XmlElement('paragraph')
    para.insert(0, [link])
    const mention = new Y.XmlElement('mention')
    mention.setAttribute('label', hostile)
    doc.getXmlFragment('attrs').insert(0, [heading, list, para, mention])
    doc.getText('quill').applyDelta([
      { insert: 'odd line', attributes: { link: hostile } }, { insert: '\n', attributes: { header: hostile } }
    ])
    doc.getText('notes').insert(0, 'Normal notes.')
  })
  await post(weft, 'deep', doc)

  const v = await open(`${weft.httpUrl}/view/deep`)
  const view = shown(v)
  const tab = name => v.locator(`#roots [role="tab"][data-root="${name}"]`)
  await waitFor(async () => (await v.locator('#roots [role="tab"]').count()) === 6, 15000, 'a tab per root')
  const capped = view.locator('.node-deeper, .cannot-display').first()

  await tab('notes').click()
  await waitText(view.locator('.line'), 'Normal notes.', 'the normal root')
  for (const name of ['deepxml', 'deepmap']) {
    await tab(name).click()
    await capped.waitFor({ timeout: 15000 })
    assert.equal(await view.getAttribute('data-root'), name)
  }
  assert.match(await view.innerText(), /k[\s\S]*k[\s\S]*… nested deeper|can't be displayed/)

  await tab('subdocs').click()
  const entry = key => view.locator(`.json-root > .json-entry[data-key="${key}"]`)
  await waitText(entry('s').locator('.json-other'), '‹subdocument sub-one›', 'the subdocument, a leaf')
  assert.equal(await entry('list').locator('.json-children .json-other').innerText(), '‹subdocument sub-two›')
  assert.equal(await entry('__proto__').locator('.json-string').innerText(), '"a key like any other"')

  await tab('attrs').click()
  await waitText(view.locator('h1'), 'Odd heading', 'the heading, level 1 when its level is not a number')
  assert.deepEqual(await view.locator('ol > li').allInnerTexts(), ['Only item'])
  assert.equal(await view.locator('ol').evaluate(ol => ol.start), 1)
  assert.equal(await innerText(view.locator('.link-unsafe')), 'odd link')
  assert.match(await innerText(view.locator('.node-unknown[data-node="mention"]')), /^‹mention: \{"toString":1\}›$/)

  await tab('quill').click()
  await waitText(view.locator('.line'), 'odd line', 'the line whose header is not a number')

  // Not frozen: a change after all that still shows, with the deep root shown too.
  await tab('deepxml').click()
  await capped.waitFor({ timeout: 15000 })
  doc.getText('notes').insert(13, ' And later.')
  await post(weft, 'deep', doc)
  await waitFor(async () => /\b24 characters\b/.test(await tab('notes').innerText()), 15000, 'the live change counted')
  await tab('notes').click()
  await waitText(view.locator('.line'), 'Normal notes. And later.', 'the live change')

  // The follower's card previews the main root (whichever it is) without failing.
  const f = await open(`${weft.httpUrl}/follow?docs=deep`, { live: false })
  await waitText(f.locator('.card[data-doc="deep"] .content'), /\S/, 'the deep document\'s preview')
})

test('the main root stays shown, and the tabs in order, while another root grows larger', async () => {
  const weft = await startWeft()
  const { doc } = await client(weft, 'growing')
  doc.getText('first').insert(0, 'The first root, shown first.')
  const v = await open(`${weft.httpUrl}/view/growing`)
  const f = await open(`${weft.httpUrl}/follow?docs=growing`, { live: false })
  const view = shown(v)
  await waitText(view.locator('.line'), 'The first root, shown first.', 'the first root')
  await waitText(f.locator('.card .root-name'), 'first', 'the follower\'s main root')

  const second = doc.getText('second')
  second.insert(0, 'x'.repeat(500))
  await waitFor(async () => /\b500 characters\b/.test(await v.locator('#roots').innerText()), 15000, 'the second root')
  second.insert(500, 'y'.repeat(2000))
  await waitFor(async () => /\b2,500 characters\b/.test(await v.locator('#roots').innerText()), 15000, 'the second root, grown')
  doc.getText('first').insert(0, 'Still ')
  await waitText(view.locator('.line'), 'Still The first root, shown first.', 'the first root, still shown and live')
  assert.equal(await v.evaluate(() => window.weft.shown()), 'first')
  assert.deepEqual(await v.locator('#roots [role="tab"] code').allInnerTexts(), ['first', 'second'])
  assert.equal(await v.locator('#roots [role="tab"][aria-selected="true"] code').innerText(), 'first')
  await waitText(f.locator('.card .content'), 'Still The first root, shown first.', 'the follower, still on the first root')
  assert.equal(await f.locator('.card .root-name').innerText(), 'first')
})
