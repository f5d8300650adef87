// Writes the seed corpus: valid frames of every kind, made by the real
// yjs and y-protocols packages. Run from the repository root after `npm ci`:
//   node fuzz/seed.mjs
import * as Y from 'yjs'
import * as syncProtocol from 'y-protocols/sync'
import * as awarenessProtocol from 'y-protocols/awareness'
import * as encoding from 'lib0/encoding'
import { writeFileSync } from 'node:fs'

const frame = build => { const e = encoding.createEncoder(); build(e); return encoding.toUint8Array(e) }
const doc = new Y.Doc()
const text = doc.getText('t')
text.insert(0, 'Hello world')
text.format(0, 5, { bold: true })
doc.getMap('m').set('k', [1, 'two', { three: 3 }])
const p = new Y.XmlElement('p')
p.insert(0, [new Y.XmlText('para')])
doc.getXmlFragment('x').insert(0, [p])
text.delete(2, 3)
const awareness = new awarenessProtocol.Awareness(doc)
awareness.setLocalState({ user: { name: 'Ann', color: '#f00' }, cursor: { anchor: 1, head: 4 } })

const seeds = {
  step1: frame(e => { encoding.writeVarUint(e, 0); syncProtocol.writeSyncStep1(e, doc) }),
  step2: frame(e => { encoding.writeVarUint(e, 0); syncProtocol.writeSyncStep2(e, doc) }),
  update: frame(e => { encoding.writeVarUint(e, 0); syncProtocol.writeUpdate(e, Y.encodeStateAsUpdate(doc)) }),
  awareness: frame(e => { encoding.writeVarUint(e, 1); encoding.writeVarUint8Array(e, awarenessProtocol.encodeAwarenessUpdate(awareness, [doc.clientID])) }),
  query: frame(e => { encoding.writeVarUint(e, 3) }),
  auth: frame(e => { encoding.writeVarUint(e, 2); encoding.writeVarUint(e, 0); encoding.writeVarString(e, 'denied') })
}
for (const [name, bytes] of Object.entries(seeds)) {
  writeFileSync(`fuzz/corpus/decode_frame/${name}`, bytes)
}
// Room inputs: several frames, each after its length (u16, little-endian).
const join = (...frames) => Buffer.concat(frames.flatMap(f => {
  const len = Buffer.alloc(2)
  len.writeUInt16LE(f.length)
  return [len, Buffer.from(f)]
}))
writeFileSync('fuzz/corpus/room/session', join(seeds.step1, seeds.update, seeds.awareness, seeds.query))
writeFileSync('fuzz/corpus/room/reader', join(seeds.step2, seeds.update, seeds.update))
awareness.destroy()
