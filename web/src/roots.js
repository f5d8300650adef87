// A document's root types, whatever application wrote them. After
// Y.applyUpdate a fresh Y.Doc knows its roots only by name (untyped
// AbstractTypes); this module tells their kind from their items, gives
// each the type it was written as (the right getter, once its kind is
// known: the wrong one would mistype it for good), picks the main root, and
// measures and previews a root. Used by the viewer, the follower and the
// history page.
import * as Y from 'yjs'

/**
 * A root's kind: 'text' (Y.Text), 'xml' (Y.XmlFragment: Tiptap,
 * ProseMirror), 'map', 'array', or 'empty' when only deleted items tell
 * nothing of what it was. Typed roots answer by their class; untyped ones
 * by their items: map entries (`_map`) make a map; strings, formatting or
 * embeds a text; XML elements or XML text an XML fragment; any other
 * content (JSON values, binaries, nested types, subdocuments) an array.
 */
export function kindOf (type) {
  if (type instanceof Y.XmlFragment) return 'xml'
  if (type instanceof Y.Text) return 'text'
  if (type instanceof Y.Map) return 'map'
  if (type instanceof Y.Array) return 'array'
  if (type._map.size > 0) return 'map'
  let kind = 'empty'
  for (let item = type._start; item !== null; item = item.right) {
    const c = item.content
    if (c instanceof Y.ContentString || c instanceof Y.ContentFormat || c instanceof Y.ContentEmbed) return 'text'
    if (c instanceof Y.ContentType && (c.type instanceof Y.XmlElement || c.type instanceof Y.XmlText || c.type instanceof Y.XmlHook)) {
      kind = 'xml'
    } else if (!(c instanceof Y.ContentDeleted) && kind === 'empty') {
      kind = 'array'
    }
  }
  return kind
}

const getters = {
  text: (ydoc, name) => ydoc.getText(name),
  xml: (ydoc, name) => ydoc.getXmlFragment(name),
  map: (ydoc, name) => ydoc.getMap(name),
  array: (ydoc, name) => ydoc.getArray(name)
}

/**
 * Every root of `ydoc` as `{ name, kind, type }`, each typed as what it
 * holds (roots still empty stay untyped, so a later change can type them).
 * Call it after each update, before reading any root.
 */
export function typedRoots (ydoc) {
  const out = []
  for (const name of [...ydoc.share.keys()]) {
    const kind = kindOf(ydoc.share.get(name))
    const type = kind === 'empty' ? ydoc.share.get(name) : getters[kind](ydoc, name)
    out.push({ name, kind, type })
  }
  return out
}

/**
 * How much a type holds, about in characters: text and string lengths,
 * JSON values as written, one per nested type or map entry besides what it
 * holds. Deleted content counts nothing.
 */
export function sizeOf (type) {
  let n = 0
  const content = c => {
    if (c instanceof Y.ContentType) return 1 + sizeOf(c.type)
    if (c instanceof Y.ContentString) return c.str.length
    if (c instanceof Y.ContentAny || c instanceof Y.ContentJSON) return jsonLength(c.arr)
    if (c instanceof Y.ContentEmbed) return jsonLength(c.embed)
    if (c instanceof Y.ContentBinary) return c.content.length
    return c instanceof Y.ContentFormat || c instanceof Y.ContentDeleted ? 0 : 1
  }
  for (let item = type._start; item !== null; item = item.right) {
    if (!item.deleted) n += content(item.content)
  }
  for (const [key, item] of type._map) {
    if (!item.deleted) n += key.length + content(item.content)
  }
  return n
}

function jsonLength (value) {
  try {
    return JSON.stringify(value)?.length ?? 1
  } catch {
    return 1
  }
}

/**
 * The roots in the order to show them: `content` (the demo editor's) or
 * else the largest first, then the others by name; empty ones last.
 */
export function ordered (roots) {
  const sized = roots.map(r => ({ ...r, size: r.kind === 'empty' ? -1 : sizeOf(r.type) }))
  const main = sized.find(r => r.name === 'content' && r.kind !== 'empty') ??
    sized.reduce((best, r) => (!best || r.size > best.size ? r : best), null)
  const rest = sized.filter(r => r !== main)
    .sort((a, b) => (a.kind === 'empty') - (b.kind === 'empty') || a.name.localeCompare(b.name))
  return main ? [main, ...rest] : rest
}

/** What kind of root it is, in words. */
export function describe ({ kind, type }) {
  switch (kind) {
    case 'text': return `text · ${plural(type.length, 'character')}`
    case 'xml': return `rich text · ${plural(type.length, 'block')}`
    case 'map': return `map · ${plural(type.size, 'key')}`
    case 'array': return `array · ${plural(type.length, 'item')}`
    default: return 'empty'
  }
}

const plural = (n, one) => `${n.toLocaleString()} ${one}${n === 1 ? '' : 's'}`

/**
 * A root's content as plain text, at most about `max` characters: text as
 * it reads, rich text with a line per block, maps and arrays as JSON.
 */
export function preview ({ kind, type }, max = 280) {
  let text = ''
  if (kind === 'text') text = type.toString().slice(0, max + 1)
  else if (kind === 'xml') text = xmlText(type, max + 1).replace(/\n+$/, '')
  else if (kind === 'map' || kind === 'array') text = jsonLine(type.toJSON(), max + 1)
  return text.length > max ? `${text.slice(0, max)}…` : text
}

/** The text of an XML fragment, blocks on lines of their own, stopping past `max`. */
function xmlText (type, max) {
  let out = ''
  const walk = node => {
    for (let item = node._start; item !== null && out.length < max; item = item.right) {
      if (item.deleted || !(item.content instanceof Y.ContentType)) continue
      const child = item.content.type
      if (child instanceof Y.XmlText) {
        for (const op of child.toDelta()) if (typeof op.insert === 'string') out += op.insert
      } else if (child instanceof Y.XmlElement) {
        const name = child.nodeName.toLowerCase().replace(/[-_]/g, '')
        if (name === 'hardbreak' || name === 'br') out += '\n'
        else {
          walk(child)
          if (!out.endsWith('\n') && !hasElements(child)) out += '\n'
        }
      }
    }
  }
  walk(type)
  return out
}

const hasElements = el => {
  for (let item = el._start; item !== null; item = item.right) {
    if (!item.deleted && item.content instanceof Y.ContentType && item.content.type instanceof Y.XmlElement) return true
  }
  return false
}

function jsonLine (value, max) {
  try {
    return (JSON.stringify(value, (k, v) => (v instanceof Uint8Array ? `<${v.length} bytes>` : v)) ?? '').slice(0, max)
  } catch {
    return ''
  }
}
