// /follow?docs=a,b,c: one page following many documents, one event stream
// each. Over HTTP/1.1 a browser allows six connections per origin, so only
// six streams could be open; over HTTP/2 they all share one connection.
// Each card shows a short live preview of the document's main root
// (`content`, or else the largest, whatever its type), the size of the
// document's state, and its last change: from `GET /docs` when weft lets
// this page list documents, then as changes arrive.
import * as Y from 'yjs'
import { SseProvider } from './sse-provider.js'
import { authParams, renderLoop, tokenSuffix } from './page.js'
import { describe, preview, rootOrder, typedRoots } from './roots.js'
import { bytes, setTimeAgo } from './format.js'
import './style.css'

const names = (new URLSearchParams(location.search).get('docs') || '')
  .split(',').map(s => s.trim()).filter(Boolean)
const list = document.getElementById('docs')
document.getElementById('count').textContent = String(names.length)

const followed = names.map(name => {
  const card = document.createElement('article')
  card.className = 'card'
  card.dataset.doc = name
  card.innerHTML = '<header><a class="title"></a><span class="status" data-state="connecting">connecting…</span></header>' +
    '<p class="card-root meta"><code class="root-name"></code> <span class="root-kind"></span></p>' +
    '<pre class="content"></pre>' +
    '<footer>last event <code class="last-id">–</code> · <span class="size">–</span> · changed <time class="changed">–</time></footer>'
  const $ = selector => card.querySelector(selector)
  const title = $('.title')
  title.textContent = name
  title.href = `/view/${encodeURIComponent(name)}${tokenSuffix()}`
  list.appendChild(card)

  const ydoc = new Y.Doc()
  const provider = new SseProvider(location.origin, name, ydoc, { params: authParams() })
  const entry = { name, ydoc, provider, lastChange: null, size: null, changed: $('.changed') }
  const status = $('.status')
  provider.on('status', ({ status: s }) => {
    status.dataset.state = s
    status.textContent = s === 'connected' ? 'live' : s === 'connecting' ? 'reconnecting…' : 'disconnected'
  })
  // The main root, once chosen, stays while others grow.
  const order = rootOrder()
  entry.render = () => {
    const { main } = order(typedRoots(ydoc))
    $('.root-name').textContent = main ? main.name : ''
    $('.root-kind').textContent = main ? describe(main) : provider.synced ? 'empty' : ''
    let text = ''
    try {
      text = main ? preview(main) : ''
    } catch (e) {
      text = `This root can't be displayed: ${e?.message ?? e}`
    }
    $('.content').textContent = text
    $('.last-id').textContent = provider.lastEventId || '–'
    entry.size = Y.encodeStateAsUpdate(ydoc).length
    $('.size').textContent = bytes(entry.size)
    $('.size').title = `${entry.size.toLocaleString()} bytes: the document's state as a Yjs update`
    setTimeAgo(entry.changed, entry.lastChange)
  }
  const schedule = renderLoop(entry.render)
  ydoc.on('update', () => {
    // Before the first sync, an update is the snapshot: not a change now.
    if (provider.synced) entry.lastChange = Date.now()
    schedule()
  })
  provider.on('sync', schedule)
  return entry
})

// When weft lists documents to this page (it runs open), their last change
// as stored; with tokens on, the list needs the admin key and changes seen
// live are all there is.
fetch('/docs').then(res => (res.ok ? res.json() : [])).then(docs => {
  for (const d of docs) {
    const entry = followed.find(f => f.name === d.name)
    if (entry && d.last_change_ms != null && d.last_change_ms > (entry.lastChange ?? 0)) {
      entry.lastChange = d.last_change_ms
      entry.render()
    }
  }
}).catch(() => {})

// "5 s ago" grows old.
setInterval(() => {
  for (const { changed, lastChange } of followed) if (lastChange != null) setTimeAgo(changed, lastChange)
}, 5000)

Object.assign(window, { weft: { followed } })
