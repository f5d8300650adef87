// /follow?docs=a,b,c: one page following many documents, one event stream
// each. Over HTTP/1.1 a browser allows six connections per origin, so only
// six streams could be open; over HTTP/2 they all share one connection.
import * as Y from 'yjs'
import { SseProvider } from './sse-provider.js'
import { authParams, tokenSuffix } from './page.js'
import './style.css'

const names = (new URLSearchParams(location.search).get('docs') || '')
  .split(',').map(s => s.trim()).filter(Boolean)
const list = document.getElementById('docs')
document.getElementById('count').textContent = String(names.length)

const followed = names.map(name => {
  const card = document.createElement('article')
  card.className = 'card'
  card.dataset.doc = name
  card.innerHTML = '<header><a class="title"></a><span class="status" data-state="connecting">connecting…</span></header><pre class="content"></pre><footer>last event <code class="last-id">–</code></footer>'
  const title = card.querySelector('.title')
  title.textContent = name
  title.href = `/view/${encodeURIComponent(name)}${tokenSuffix()}`
  list.appendChild(card)

  const ydoc = new Y.Doc()
  const ytext = ydoc.getText('content')
  const provider = new SseProvider(location.origin, name, ydoc, { params: authParams() })
  const status = card.querySelector('.status')
  provider.on('status', ({ status: s }) => {
    status.dataset.state = s
    status.textContent = s === 'connected' ? 'live' : s === 'connecting' ? 'reconnecting…' : 'disconnected'
  })
  const render = () => {
    card.querySelector('.content').textContent = ytext.toString()
    card.querySelector('.last-id').textContent = provider.lastEventId || '–'
  }
  ydoc.on('update', render)
  provider.on('sync', render)
  return { name, ydoc, ytext, provider }
})

Object.assign(window, { weft: { followed } })
