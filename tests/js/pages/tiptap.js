// A Tiptap editor as a Tiptap app builds it: StarterKit, the Collaboration
// extension on the provider's document and the named caret of each
// collaborator, on Hocuspocus' provider, or on y-websocket's when the query
// has `ws` (weft's /ws base URL). Bundled by tiptap.test.js and
// viewer.test.js; the page's query names the server, the document and the
// user.
import * as Y from 'yjs'
import { Editor } from '@tiptap/core'
import StarterKit from '@tiptap/starter-kit'
import Collaboration from '@tiptap/extension-collaboration'
import CollaborationCaret from '@tiptap/extension-collaboration-caret'
import { HocuspocusProvider } from '@hocuspocus/provider'
import { WebsocketProvider } from 'y-websocket'

const params = new URLSearchParams(location.search)
let provider
let document_
if (params.get('ws')) {
  document_ = new Y.Doc()
  const token = params.get('token')
  provider = new WebsocketProvider(params.get('ws'), params.get('doc'), document_, {
    disableBc: true,
    params: token ? { token } : {}
  })
} else {
  provider = new HocuspocusProvider({
    url: params.get('url'),
    name: params.get('doc'),
    token: params.get('token') || ''
  })
  document_ = provider.document
}
const editor = new Editor({
  element: document.querySelector('#editor'),
  extensions: [
    // Collaboration brings its own undo, so StarterKit's is left out.
    StarterKit.configure({ undoRedo: false }),
    Collaboration.configure({ document: document_ }),
    CollaborationCaret.configure({ provider, user: { name: params.get('user'), color: '#f783ac' } })
  ]
})
const synced = () => (provider instanceof WebsocketProvider ? provider.synced : provider.isSynced)
window.tiptap = { editor, provider, document: document_, synced }
