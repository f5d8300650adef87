// /history/{doc}: a document's version history. A timeline of its changes
// grouped by author and minute (the newest CAP changes, from
// `GET /docs/{doc}/history`); a slider to any change, showing every text
// root as it was just after it (`GET /docs/{doc}?at=<event id>` applied to
// a fresh Y.Doc; other root types from `GET /docs/{doc}/json?at=`); a
// word-level diff of that point against the document now; and, with the
// admin key (kept in sessionStorage only), a live restore of that point
// (`POST /admin/docs/{doc}/restore`). Every failure is said on the page.
import * as Y from 'yjs'
import { diffLines, diffWordsWithSpace } from 'diff'
import { docFromPath, token, tokenSuffix } from './page.js'
import { kindOf as rootKind } from './roots.js'
import './style.css'

/** The most changes listed: the newest ones; the page says when older ones are left out. */
const CAP = 5000
/** The history API's largest page. */
const PAGE = 1000
/** Where the admin key is kept: this tab's session only, never localStorage. */
const KEY_STORE = 'weft-admin-key'
/** Longest a diff may compute before falling back to a coarser one. */
const DIFF_MS = 1000

const doc = docFromPath()
const docPath = `/docs/${encodeURIComponent(doc)}`
const $ = id => document.getElementById(id)
document.title = `${doc} (history) · weft`
$('doc-name').textContent = doc
$('edit-link').href = `/edit/${encodeURIComponent(doc)}${tokenSuffix()}`
$('view-link').href = `/view/${encodeURIComponent(doc)}${tokenSuffix()}`

const state = {
  /** Listed changes, oldest first, as the history API gives them. */
  changes: [],
  capped: false,
  /** The document now: `{ ydoc, id }`. */
  now: null,
  /** The chosen change's index in `changes`, and the point shown: `{ id, asked, ydoc }`. */
  index: -1,
  then: null
}

/** An HTTP failure, its message already a sentence for people. */
class Failure extends Error {
  constructor (message, status) {
    super(message)
    this.status = status
  }
}

/**
 * `fetch` of a weft path, with the page's `?token=` for document reads;
 * refusals become a [Failure] saying what happened and what to do.
 */
async function api (path, params = {}, init = {}, admin = false) {
  const url = new URL(path, location.origin)
  for (const [k, v] of Object.entries(params)) if (v != null) url.searchParams.set(k, v)
  if (!admin && token()) url.searchParams.set('token', token())
  let res
  try {
    res = await fetch(url, init)
  } catch (e) {
    throw new Failure(`weft is not reachable (${e.message}).`, 0)
  }
  if (res.ok) return res
  let body = {}
  try { body = await res.json() } catch { /* not JSON: the status says enough */ }
  throw new Failure(explain(res, body.error || '', body.message || `HTTP ${res.status}`, admin), res.status)
}

function explain (res, code, message, admin) {
  const status = res.status
  const retry = res.headers.get('retry-after')
  const later = `Try again${retry ? ` in ${retry} s` : ' shortly'}.`
  // 429 here: too many wrong keys from this address.
  if (admin && [401, 403, 429].includes(status)) return `The admin key was refused: ${message}.${status === 429 ? ` ${later}` : ''}`
  if (status === 503 || status === 429) return `weft is busy right now: ${message}. ${later}`
  if (code === 'document_not_found') return `There is no document “${doc}”: nothing has been written to it yet.`
  if (status === 401) {
    return `Not authorized to read “${doc}”: ${message}. Open this page with ?token=<a read token for it>.`
  }
  if (status === 403) return `Access to “${doc}” was denied: ${message}.`
  return `${message} (HTTP ${status}${code ? `, ${code}` : ''}).`
}

/** Shows `message` at the top of the page; `retry`, if given, is offered as a button. */
function showError (message, retry) {
  $('error').hidden = !message
  $('error-text').textContent = message || ''
  const button = $('error-retry')
  button.hidden = !retry
  button.onclick = retry ? () => { showError(''); retry() } : null
}

/** The document at `at` (an event id; now when absent), applied to a Y.Doc of its own. */
async function fetchState (at) {
  const res = await api(docPath, { at })
  const ydoc = new Y.Doc()
  Y.applyUpdate(ydoc, new Uint8Array(await res.arrayBuffer()))
  return { ydoc, id: res.headers.get('weft-event-id') || '' }
}

const seqOf = id => Number(String(id).split('-').pop()) || 0

/**
 * The newest CAP changes, oldest first, a page at a time. The first one
 * listed is the change after `newest - CAP`; whether older ones exist (the
 * list is capped) is one more request of a single change.
 */
async function loadHistory (newest) {
  const from = Math.max(0, newest - CAP)
  const page = async params => (await api(`${docPath}/history`, params)).json()
  let capped = false
  if (from > 0) {
    const first = await page({ limit: 1 })
    capped = first.changes.length > 0 && first.changes[0].seq <= from
  }
  const changes = []
  let cursor = from > 0 ? from : null
  // Bounded: a page is full unless it ends early (see the history API).
  for (let n = 0; n < CAP / PAGE + 20; n++) {
    const got = await page({ limit: PAGE, cursor })
    changes.push(...got.changes)
    if (got.next == null || got.next === cursor || changes.length >= CAP) break
    cursor = got.next
  }
  if (changes.length > CAP) {
    changes.splice(0, changes.length - CAP)
    capped = true
  }
  return { changes, capped }
}

// ---- root types ----

/**
 * A root's kind as this page shows it: 'text' (diffed as text), 'other'
 * (maps, arrays, XML: shown from the JSON endpoint), or 'empty' (only
 * deleted items). roots.js tells the kinds from the items.
 */
function kindOf (type) {
  const kind = rootKind(type)
  return kind === 'text' || kind === 'empty' ? kind : 'other'
}

/** Every root of either document, with its kind (text where either holds text). */
function roots (a, b) {
  const kinds = new Map()
  for (const ydoc of [a, b]) {
    for (const [name, type] of ydoc.share) {
      const kind = kindOf(type)
      const known = kinds.get(name)
      if (!known || known === 'empty' || kind === 'text') kinds.set(name, kind)
    }
  }
  return [...kinds].sort(([x], [y]) => x.localeCompare(y))
}

const textOf = (ydoc, name) => {
  const type = ydoc.share.get(name)
  return type && kindOf(type) !== 'other' ? ydoc.getText(name).toString() : ''
}

/** `value` of a non-text root in the JSON endpoint's answer, as indented JSON. */
const jsonOf = (json, name) => (name in json ? JSON.stringify(json[name], null, 2) : '')

// ---- diff ----

/**
 * `before` against `after` as spans: `<del>` for what `before` had and
 * `after` has not, `<ins>` for the reverse. Word by word (jsdiff's Myers
 * diff); a diff that takes too long falls back to lines, then to the whole.
 */
function diffNodes (before, after) {
  const parts = diffWordsWithSpace(before, after, { timeout: DIFF_MS }) ??
    diffLines(before, after, { timeout: DIFF_MS }) ??
    [{ removed: true, value: before }, { added: true, value: after }]
  return parts.filter(p => p.value).map(p => {
    const el = document.createElement(p.added ? 'ins' : p.removed ? 'del' : 'span')
    el.textContent = p.value
    return el
  })
}

// ---- rendering ----

const when = ms => new Date(ms).toLocaleString(undefined, { dateStyle: 'medium', timeStyle: 'short' })
const exactly = ms => new Date(ms).toLocaleString(undefined, { dateStyle: 'medium', timeStyle: 'medium' })
const authorName = change => change.author ?? 'unknown'
const plural = (n, one) => `${n.toLocaleString()} ${one}${n === 1 ? '' : 's'}`

/** A stable colour per author. */
function colour (author) {
  let h = 0
  for (const ch of author) h = (h * 31 + ch.codePointAt(0)) >>> 0
  return `hsl(${h % 360} 60% 45%)`
}

/** Runs of consecutive changes by one author within one minute, newest first. */
function groups (changes) {
  const out = []
  changes.forEach((change, index) => {
    const minute = Math.floor(change.at_ms / 60000)
    const last = out[out.length - 1]
    if (last && last.author === authorName(change) && last.minute === minute) last.items.push(index)
    else out.push({ author: authorName(change), minute, items: [index] })
  })
  return out.reverse()
}

function renderTimeline () {
  const { changes } = state
  const list = $('timeline')
  list.replaceChildren(...groups(changes).map(group => {
    const first = changes[group.items[0]]
    const inserted = group.items.reduce((n, i) => n + changes[i].inserted, 0)
    const deleted = group.items.reduce((n, i) => n + changes[i].deleted, 0)
    const li = document.createElement('li')
    li.className = 'group'
    li.dataset.author = group.author
    li.style.borderLeftColor = colour(group.author)
    li.innerHTML = '<button type="button" class="group-head"><b class="who"></b> <time></time><span class="meta"></span></button><ol class="changes"></ol>'
    li.querySelector('.who').textContent = group.author
    li.querySelector('time').textContent = when(first.at_ms)
    li.querySelector('time').dateTime = new Date(first.at_ms).toISOString()
    li.querySelector('.meta').textContent =
      `${plural(group.items.length, 'change')} · +${inserted} −${deleted}${first.via ? ` · via ${first.via}` : ''}`
    const newest = group.items[group.items.length - 1]
    li.querySelector('.group-head').addEventListener('click', () => choose(newest))
    li.querySelector('.changes').replaceChildren(...[...group.items].reverse().map(i => {
      const c = changes[i]
      const item = document.createElement('li')
      item.innerHTML = '<button type="button" class="change"></button>'
      const button = item.firstChild
      button.dataset.index = i
      button.dataset.id = c.id
      button.textContent = `#${c.seq} +${c.inserted} −${c.deleted}`
      button.title = `${c.id}: ${authorName(c)}${c.via ? ` via ${c.via}` : ''}, ${exactly(c.at_ms)}, ${c.bytes} bytes`
      button.addEventListener('click', () => choose(i))
      return item
    }))
    return li
  }))
}

function renderSummary () {
  const { changes, capped } = state
  const authors = new Set(changes.map(authorName))
  const [first, last] = [when(changes[0]?.at_ms), when(changes[changes.length - 1]?.at_ms)]
  $('summary').textContent = changes.length
    ? `${plural(changes.length, 'change')} by ${plural(authors.size, 'author')}, ${first === last ? `at ${first}` : `${first} to ${last}`}. Drag the slider to see the document after any of them, compared with the document as it was when this page loaded.`
    : 'The log holds no changes one by one (older changes are kept only in snapshots), so there is no point to go back to.'
  $('cap-note').hidden = !capped
  $('cap-note').textContent = capped
    ? `Only the newest ${CAP.toLocaleString()} changes are listed; older ones are left out here (weft history lists them all).`
    : ''
  const slider = $('scrub')
  slider.max = String(Math.max(0, changes.length - 1))
  for (const id of ['scrub', 'prev', 'next']) $(id).disabled = changes.length === 0
}

/** The chosen change in the slider, its label and the timeline. */
function renderChoice () {
  const c = state.changes[state.index]
  $('scrub').value = String(state.index)
  $('prev').disabled = state.index <= 0
  $('next').disabled = state.index >= state.changes.length - 1
  for (const el of document.querySelectorAll('#timeline .chosen')) el.classList.remove('chosen')
  const button = document.querySelector(`#timeline .change[data-index="${state.index}"]`)
  button?.classList.add('chosen')
  button?.closest('.group')?.classList.add('chosen')
  button?.scrollIntoView({ block: 'nearest' })
  const point = $('point')
  point.replaceChildren()
  if (!c) return
  point.append('After change ', code(c.id), ` (${state.index + 1} of ${state.changes.length}) by `)
  const who = document.createElement('b')
  who.textContent = authorName(c)
  point.append(who, `${c.via ? ` via ${c.via}` : ''}, ${exactly(c.at_ms)}: +${c.inserted} −${c.deleted}.`)
}

function code (text) {
  const el = document.createElement('code')
  el.textContent = text
  return el
}

/** Each root as it was at the point shown, and its diff against now. */
async function renderRoots () {
  const { then, now } = state
  if (!then || !now) return
  const kinds = roots(then.ydoc, now.ydoc)
  let json = null
  if (kinds.some(([, kind]) => kind === 'other')) {
    const get = async at => (await api(`${docPath}/json`, { at })).json()
    const [before, after] = await Promise.all([get(then.id), get()])
    json = { before, after }
  }
  const sections = kinds.map(([name, kind]) => {
    const isText = kind !== 'other'
    const before = isText ? textOf(then.ydoc, name) : jsonOf(json.before, name)
    const after = isText ? textOf(now.ydoc, name) : jsonOf(json.after, name)
    const section = document.createElement('section')
    section.className = 'root'
    section.dataset.root = name
    section.dataset.kind = isText ? 'text' : 'other'
    section.innerHTML = '<h3><code></code> <small></small></h3><div class="panes"><div><h4>Then</h4><pre class="then"></pre></div><div><h4>Then → now: <ins>added since</ins> <del>removed since</del></h4><pre class="diff"></pre></div></div>'
    section.querySelector('h3 code').textContent = name
    section.querySelector('h3 small').textContent = isText ? 'text' : 'map, array or XML (as JSON)'
    section.querySelector('.then').textContent = before
    const diff = section.querySelector('.diff')
    if (before === after) {
      diff.classList.add('same')
      diff.textContent = 'No differences: it is the same now.'
    } else {
      diff.replaceChildren(...diffNodes(before, after))
    }
    return section
  })
  const note = document.createElement('p')
  note.className = 'meta'
  note.textContent = kinds.length ? '' : 'The document was empty then, and is empty now.'
  if (then.id !== then.asked) {
    note.textContent = `The log no longer holds every change up to ${then.asked}: shown is the nearest earlier point it can be rebuilt at, ${then.id}.`
  }
  $('roots').replaceChildren(note, ...sections)
  $('roots').dataset.loaded = then.asked
}

// ---- choosing a point ----

let loading = 0
let timer = null

/** Chooses the change at `index`; its state is fetched once scrubbing pauses. */
function choose (index, delay = 0) {
  if (!state.changes.length) return
  state.index = Math.max(0, Math.min(index, state.changes.length - 1))
  renderChoice()
  updateRestore()
  clearTimeout(timer)
  timer = setTimeout(loadPoint, delay)
}

async function loadPoint () {
  const change = state.changes[state.index]
  if (!change) return
  if (state.then?.asked === change.id) return renderRoots().catch(failed(loadPoint))
  const mine = ++loading
  $('roots').dataset.loaded = ''
  $('roots').setAttribute('aria-busy', 'true')
  try {
    const then = await fetchState(change.id)
    if (mine !== loading) return
    state.then = { ...then, asked: change.id }
    await renderRoots()
  } catch (e) {
    if (mine === loading) failed(loadPoint)(e)
  } finally {
    if (mine === loading) $('roots').removeAttribute('aria-busy')
  }
}

const failed = retry => e => showError(e instanceof Failure ? e.message : `Something went wrong: ${e.message}`, retry)

// ---- restore ----

const keyInput = $('admin-key')
keyInput.value = sessionStorage.getItem(KEY_STORE) || ''
keyInput.addEventListener('input', () => {
  const key = keyInput.value.trim()
  if (key) sessionStorage.setItem(KEY_STORE, key)
  else sessionStorage.removeItem(KEY_STORE)
  updateRestore()
})

function updateRestore () {
  const key = keyInput.value.trim()
  const c = state.changes[state.index]
  const button = $('restore')
  button.disabled = !key || !c
  $('restore-note').textContent = !key
    ? 'Restoring needs weft’s admin key (weft serve --admin-key). Enter it above: it is kept in this tab’s session storage only, and sent only to restore.'
    : !c
        ? 'Choose a point to restore.'
        : `Makes the document as it was after ${c.id} again, as a new change that open editors receive live. It can be undone by restoring the point before it.`
}

function showRestore (message, kind) {
  const el = $('restore-status')
  el.textContent = message
  el.dataset.state = kind
}

$('restore').addEventListener('click', async () => {
  const c = state.changes[state.index]
  if (!c) return
  $('restore').disabled = true
  showRestore(`Restoring the point after ${c.id}…`, 'pending')
  try {
    const res = await api(`/admin${docPath}/restore`, {}, {
      method: 'POST',
      headers: { authorization: `Bearer ${keyInput.value.trim()}`, 'content-type': 'application/json' },
      body: JSON.stringify({ at: c.id })
    }, true)
    const done = await res.json()
    showRestore(done.change
      ? `Restored: the document is as it was after ${c.id} again (new change ${done.change}, snapshot ${done.snapshot}); open editors have it already.`
      : `Nothing to restore: the document is already as it was after ${c.id}.`, 'ok')
  } catch (e) {
    showRestore(`Restore failed. ${e.message}`, 'error')
    return
  } finally {
    updateRestore()
  }
  // The restore is a new change: list it, and compare the point with the new now.
  await refresh(c.id).catch(failed(() => refresh(c.id).catch(failed())))
})

// ---- loading ----

/** Loads the document now and its history, keeping the point `keep` (an event id) chosen if listed. */
async function refresh (keep) {
  const now = await fetchState()
  const { changes, capped } = await loadHistory(seqOf(now.id))
  Object.assign(state, { now, changes, capped })
  renderSummary()
  renderTimeline()
  const kept = changes.findIndex(c => c.id === keep)
  if (changes.length) choose(kept >= 0 ? kept : changes.length - 1)
  else $('roots').replaceChildren()
}

$('scrub').addEventListener('input', e => choose(Number(e.target.value), 150))
$('reload').addEventListener('click', () => {
  showError('')
  // At the newest change, stay at the newest; elsewhere, stay put.
  const newest = state.index === state.changes.length - 1
  refresh(newest ? null : state.changes[state.index]?.id).catch(failed())
})
$('prev').addEventListener('click', () => choose(state.index - 1, 150))
$('next').addEventListener('click', () => choose(state.index + 1, 150))

function start () {
  updateRestore()
  refresh(state.changes[state.index]?.id).catch(e => {
    $('summary').textContent = ''
    failed(start)(e)
  })
}
start()

// For people poking at the page (and for the browser tests).
Object.assign(window, { weft: { state, refresh } })
