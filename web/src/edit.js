// /edit/{doc}: CodeMirror 6 bound to a Y.Text, synced by the unmodified
// y-websocket provider; remote cursors carry each user's name and colour;
// undo/redo are Yjs' own (only this user's changes are undone).
import * as Y from 'yjs'
import { WebsocketProvider } from 'y-websocket'
import { EditorView, basicSetup } from 'codemirror'
import { EditorState } from '@codemirror/state'
import { keymap } from '@codemirror/view'
import { yCollab, yUndoManagerKeymap } from 'y-codemirror.next'
import { authParams, docFromPath, showStatus, tokenSuffix, wsBase } from './page.js'
import { localUser, rename } from './user.js'
import './style.css'

const doc = docFromPath()
document.title = `${doc} · weft`
document.getElementById('doc-name').textContent = doc
document.getElementById('view-link').href = `/view/${encodeURIComponent(doc)}${tokenSuffix()}`
document.getElementById('history-link').href = `/history/${encodeURIComponent(doc)}${tokenSuffix()}`

const ydoc = new Y.Doc()
const ytext = ydoc.getText('content')
const provider = new WebsocketProvider(wsBase(), doc, ydoc, { params: authParams() })
let user = localUser()
provider.awareness.setLocalStateField('user', user)

const labels = { connecting: 'connecting…', connected: 'connected', disconnected: 'offline, reconnecting…' }
showStatus(labels.connecting, 'connecting')
provider.on('status', ({ status }) => showStatus(labels[status] || status, status))
provider.on('connection-close', event => {
  // 4401/4403: the token is missing, expired or for another document.
  if (event && (event.code === 4401 || event.code === 4403)) {
    provider.disconnect()
    showStatus(`refused: ${event.reason || 'access denied'}`, 'refused')
  }
})

const undoManager = new Y.UndoManager(ytext)
const view = new EditorView({
  state: EditorState.create({
    doc: ytext.toString(),
    extensions: [
      keymap.of([...yUndoManagerKeymap]),
      basicSetup,
      EditorView.lineWrapping,
      yCollab(ytext, provider.awareness, { undoManager })
    ]
  }),
  parent: document.getElementById('editor')
})

const nameInput = document.getElementById('user-name')
nameInput.value = user.name
nameInput.style.borderColor = user.color
nameInput.addEventListener('change', () => {
  user = rename(user, nameInput.value.trim() || user.name)
  provider.awareness.setLocalStateField('user', user)
})
document.getElementById('undo').addEventListener('click', () => { undoManager.undo(); view.focus() })
document.getElementById('redo').addEventListener('click', () => { undoManager.redo(); view.focus() })

// For people poking at the page (and for the browser tests).
Object.assign(window, { weft: { ydoc, ytext, provider, view, undoManager } })
