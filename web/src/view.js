// /view/{doc}: a read-only live view over Server-Sent Events (no
// WebSocket): the text, editors' cursors, a live/reconnecting indicator and
// the last event id. EventSource reconnects and resumes by itself.
import * as Y from 'yjs'
import { EditorView, basicSetup } from 'codemirror'
import { EditorState } from '@codemirror/state'
import { yCollab } from 'y-codemirror.next'
import { SseProvider } from './sse-provider.js'
import { authParams, docFromPath, showStatus, tokenSuffix } from './page.js'
import './style.css'

const doc = docFromPath()
document.title = `${doc} (view) · weft`
document.getElementById('doc-name').textContent = doc
document.getElementById('edit-link').href = `/edit/${encodeURIComponent(doc)}${tokenSuffix()}`
document.getElementById('history-link').href = `/history/${encodeURIComponent(doc)}${tokenSuffix()}`

const ydoc = new Y.Doc()
const ytext = ydoc.getText('content')
const provider = new SseProvider(location.origin, doc, ydoc, { params: authParams() })
const lastId = document.getElementById('last-event-id')

showStatus('connecting…', 'connecting')
provider.on('status', ({ status }) => {
  if (status === 'connected') showStatus('live', 'connected')
  else if (status === 'connecting') showStatus('reconnecting…', 'connecting')
  else showStatus('disconnected', 'disconnected')
})
ydoc.on('update', () => { lastId.textContent = provider.lastEventId || '–' })
provider.on('sync', () => { lastId.textContent = provider.lastEventId || '–' })

const view = new EditorView({
  state: EditorState.create({
    doc: ytext.toString(),
    extensions: [
      basicSetup,
      EditorView.lineWrapping,
      EditorState.readOnly.of(true),
      EditorView.editable.of(false),
      yCollab(ytext, provider.awareness)
    ]
  }),
  parent: document.getElementById('editor')
})

Object.assign(window, { weft: { ydoc, ytext, provider, view } })
