// SseProvider: follow a weft document read-only over Server-Sent Events.
//
// No WebSocket and no Yjs sync handshake: the browser's EventSource opens
// GET /sse/{doc}, the first event is a snapshot of the whole document (or,
// after a reconnect, exactly the changes missed since the last event id,
// which EventSource sends by itself), then live updates and presence.
//
//   import * as Y from 'yjs'
//   import { SseProvider } from 'weft-web/sse-provider'
//   const ydoc = new Y.Doc()
//   const provider = new SseProvider('https://weft.example.com', 'my-doc', ydoc)
//   provider.on('sync', synced => ...)   // like y-websocket's provider
//   provider.on('status', ({ status }) => ...)  // 'connecting' | 'connected' | 'disconnected'
//
// Changes made to `ydoc` locally are never sent anywhere: the viewer is
// read-only by construction.

import * as Y from 'yjs'
import { Observable } from 'lib0/observable'
import { fromBase64 } from 'lib0/buffer'
import * as awarenessProtocol from 'y-protocols/awareness'

export class SseProvider extends Observable {
  /**
   * @param {string} baseUrl the server, e.g. 'https://weft.example.com'
   * @param {string} doc the document name
   * @param {Y.Doc} ydoc the document to keep up to date
   * @param {object} [opts]
   * @param {awarenessProtocol.Awareness} [opts.awareness] receives editors' presence
   * @param {Record<string, string>} [opts.params] extra query parameters (e.g. { token })
   * @param {boolean} [opts.connect] connect at once (default true)
   * @param {boolean} [opts.withCredentials] send cookies cross-origin
   * @param {typeof EventSource} [opts.EventSourcePolyfill] for environments without EventSource
   */
  constructor (baseUrl, doc, ydoc, { awareness, params = {}, connect = true, withCredentials = false, EventSourcePolyfill } = {}) {
    super()
    const query = new URLSearchParams(params).toString()
    this.url = `${baseUrl.replace(/\/+$/, '')}/sse/${encodeURIComponent(doc)}${query ? `?${query}` : ''}`
    this.doc = ydoc
    this.awareness = awareness || new awarenessProtocol.Awareness(ydoc)
    // A viewer shows others' presence; it has none of its own.
    this.awareness.setLocalState(null)
    this.status = 'disconnected'
    this.synced = false
    /** The id of the last change applied; EventSource resumes from it. */
    this.lastEventId = null
    this._EventSource = EventSourcePolyfill || globalThis.EventSource
    this._withCredentials = withCredentials
    this._source = null
    if (connect) this.connect()
  }

  connect () {
    if (this._source) return
    const source = new this._EventSource(this.url, { withCredentials: this._withCredentials })
    this._source = source
    this._setStatus('connecting')
    source.onopen = () => this._setStatus('connected')
    source.onerror = () => {
      // EventSource reconnects by itself (with Last-Event-ID) unless the
      // server refused outright, in which case it is CLOSED.
      this._setStatus(source.readyState === 2 ? 'disconnected' : 'connecting')
      if (source.readyState === 2) this._source = null
    }
    // The id is set first, so 'update' listeners on the Y.Doc already see it.
    source.addEventListener('snapshot', event => {
      this.lastEventId = event.lastEventId
      Y.applyUpdate(this.doc, fromBase64(event.data), this)
      this._setSynced(true)
    })
    source.addEventListener('update', event => {
      this.lastEventId = event.lastEventId
      Y.applyUpdate(this.doc, fromBase64(event.data), this)
      // A resumed stream starts with updates, not a snapshot.
      this._setSynced(true)
    })
    source.addEventListener('awareness', event => {
      awarenessProtocol.applyAwarenessUpdate(this.awareness, fromBase64(event.data), this)
    })
  }

  disconnect () {
    if (this._source) {
      this._source.close()
      this._source = null
    }
    this._setSynced(false)
    this._setStatus('disconnected')
    // Without a stream, others' presence would only go stale.
    const others = Array.from(this.awareness.getStates().keys()).filter(id => id !== this.doc.clientID)
    awarenessProtocol.removeAwarenessStates(this.awareness, others, this)
  }

  destroy () {
    this.disconnect()
    super.destroy()
  }

  _setStatus (status) {
    if (this.status !== status) {
      this.status = status
      this.emit('status', [{ status }])
    }
  }

  _setSynced (synced) {
    if (this.synced !== synced) {
      this.synced = synced
      this.emit('sync', [synced])
      this.emit('synced', [synced])
    }
  }
}
