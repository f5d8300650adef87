// /view/{doc}: a read-only live view over Server-Sent Events (no
// WebSocket) of whatever the document holds: a tab per root type (the demo
// editor's `content`, or else the largest, first, and kept first while
// others grow; `?root=name` picks one),
// each Y.Text as formatted text, each XML fragment (Tiptap, ProseMirror)
// as rich text, maps and arrays as a JSON tree; editors' cursors and
// selections; a live/reconnecting indicator and the last event id.
// EventSource reconnects and resumes by itself.
import * as Y from 'yjs'
import { SseProvider } from './sse-provider.js'
import { authParams, docFromPath, renderLoop, showStatus, tokenSuffix } from './page.js'
import { describe, rootOrder, typedRoots } from './roots.js'
import { renderRoot } from './render.js'
import './style.css'

const doc = docFromPath()
const $ = id => document.getElementById(id)
document.title = `${doc} (view) · weft`
$('doc-name').textContent = doc
$('edit-link').href = `/edit/${encodeURIComponent(doc)}${tokenSuffix()}`
$('history-link').href = `/history/${encodeURIComponent(doc)}${tokenSuffix()}`

const ydoc = new Y.Doc()
const provider = new SseProvider(location.origin, doc, ydoc, { params: authParams() })
const lastId = $('last-event-id')

showStatus('connecting…', 'connecting')
provider.on('status', ({ status }) => {
  if (status === 'connected') showStatus('live', 'connected')
  else if (status === 'connecting') showStatus('reconnecting…', 'connecting')
  else showStatus('disconnected', 'disconnected')
})

/** The root asked for with `?root=`, or null for the main one. */
let chosen = new URLSearchParams(location.search).get('root')
/** Per root, the JSON tree's closed paths, kept across renders. */
const collapsed = new Map()
const schedule = renderLoop(render)
ydoc.on('update', schedule)
provider.on('sync', schedule)
provider.awareness.on('change', schedule)
schedule()

let tabsKey = ''
let shown = null
/** The tabs' order and the main root, which hold still as the roots grow. */
const order = rootOrder()

function render () {
  lastId.textContent = provider.lastEventId || '–'
  const { roots, main } = order(typedRoots(ydoc))
  const root = chosen == null ? main : roots.find(r => r.name === chosen)
  shown = root?.name ?? null
  renderTabs(roots)
  const view = $('root-view')
  view.dataset.root = root?.name ?? ''
  view.dataset.kind = root?.kind ?? ''
  if (!root) {
    $('root-note').textContent = !provider.synced
      ? 'Loading…'
      : chosen != null && roots.length
        ? `The document has no root named “${chosen}” (yet).`
        : 'The document is empty: nothing has been written to it yet.'
    view.replaceChildren()
    return
  }
  $('root-note').textContent = ''
  if (!collapsed.has(root.name)) collapsed.set(root.name, new Set())
  let content
  try {
    content = renderRoot(root, { ydoc, awareness: provider.awareness, collapsed: collapsed.get(root.name) })
  } catch (e) {
    // One root that can't be shown must not stop the page.
    content = document.createElement('p')
    content.className = 'meta cannot-display'
    content.textContent = `This root can't be displayed: ${e?.message ?? e}`
  }
  view.replaceChildren(content)
}

/** A tab per root, rebuilt only when the roots or their order change. */
function renderTabs (roots) {
  const tabs = $('roots')
  const key = JSON.stringify(roots.map(r => [r.name, r.kind]))
  if (key !== tabsKey) {
    tabsKey = key
    tabs.replaceChildren(...roots.map(r => {
      const tab = document.createElement('button')
      tab.type = 'button'
      tab.setAttribute('role', 'tab')
      tab.dataset.root = r.name
      const name = document.createElement('code')
      name.textContent = r.name
      const kind = document.createElement('small')
      tab.append(name, ' ', kind)
      tab.addEventListener('click', () => choose(r.name))
      return tab
    }))
  }
  tabs.hidden = roots.length === 0
  roots.forEach((r, i) => {
    const tab = tabs.children[i]
    tab.querySelector('small').textContent = describe(r)
    tab.setAttribute('aria-selected', String(r.name === shown))
  })
}

/** Shows the root `name`, and says so in the URL (`?root=`). */
function choose (name) {
  chosen = name
  const url = new URL(location.href)
  url.searchParams.set('root', name)
  history.replaceState(null, '', url)
  render()
}

// For people poking at the page (and for the browser tests).
Object.assign(window, {
  weft: {
    ydoc,
    provider,
    roots: () => order(typedRoots(ydoc)).roots.map(({ name, kind }) => ({ name, kind })),
    shown: () => shown
  }
})
