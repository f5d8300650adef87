// A Tiptap editor on Hocuspocus' provider, as a Tiptap app builds it:
// StarterKit, the Collaboration extension on the provider's document and
// the named caret of each collaborator. Bundled by tiptap.test.js; the
// page's query names the server, the document and the user.
import { Editor } from '@tiptap/core'
import StarterKit from '@tiptap/starter-kit'
import Collaboration from '@tiptap/extension-collaboration'
import CollaborationCaret from '@tiptap/extension-collaboration-caret'
import { HocuspocusProvider } from '@hocuspocus/provider'

const params = new URLSearchParams(location.search)
const provider = new HocuspocusProvider({
  url: params.get('url'),
  name: params.get('doc'),
  token: params.get('token') || ''
})
const editor = new Editor({
  element: document.querySelector('#editor'),
  extensions: [
    // Collaboration brings its own undo, so StarterKit's is left out.
    StarterKit.configure({ undoRedo: false }),
    Collaboration.configure({ document: provider.document }),
    CollaborationCaret.configure({ provider, user: { name: params.get('user'), color: '#f783ac' } })
  ]
})
window.tiptap = { editor, provider }
