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
  // Strings, formatting and embeds make a text whatever else it holds (a
  // text's attributes are map entries, its embedded types nested types).
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
  if (type._map.size > 0) return 'map'
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

/** How deep walkers go into nested types and values; past it they show `… nested deeper`. */
export const MAX_DEPTH = 200

/**
 * How much a type holds, about in characters: text and string lengths,
 * JSON values as written, one per nested type or map entry besides what it
 * holds. Deleted content counts nothing. Looks at most `budget` items and
 * `MAX_DEPTH` levels down (without recursing), so any document measures.
 */
export function sizeOf (type, budget = 100000) {
  let n = 0
  const stack = [[type, 0]]
  const content = (c, depth) => {
    if (c instanceof Y.ContentType) {
      if (depth < MAX_DEPTH) stack.push([c.type, depth + 1])
      return 1
    }
    if (c instanceof Y.ContentString) return c.str.length
    if (c instanceof Y.ContentAny || c instanceof Y.ContentJSON) return jsonLength(c.arr)
    if (c instanceof Y.ContentEmbed) return jsonLength(c.embed)
    if (c instanceof Y.ContentBinary) return c.content.length
    return c instanceof Y.ContentFormat || c instanceof Y.ContentDeleted ? 0 : 1
  }
  while (stack.length > 0 && budget > 0) {
    const [t, depth] = stack.pop()
    for (let item = t._start; item !== null && budget > 0; item = item.right, budget--) {
      if (!item.deleted) n += content(item.content, depth)
    }
    for (const [key, item] of t._map) {
      if (budget-- <= 0) break
      if (!item.deleted) n += key.length + content(item.content, depth)
    }
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

/**
 * An ordering that holds still while people type: `order(typedRoots(ydoc))`
 * gives `{ roots, main }`, the roots known before in the order they were
 * first seen (new ones appended, as `ordered` puts them) and the main root,
 * which once chosen (and not empty) stays the main one while it exists.
 */
export function rootOrder () {
  let names = []
  let main = null
  return typed => {
    const byName = new Map(typed.map(r => [r.name, r]))
    const known = new Set(names)
    const fresh = ordered(typed.filter(r => !known.has(r.name)))
    names = [...names.filter(n => byName.has(n)), ...fresh.map(r => r.name)]
    const roots = names.map(n => byName.get(n))
    if (main === null || !byName.has(main)) {
      const pick = ordered(roots)[0]
      main = pick && pick.kind !== 'empty' ? pick.name : null
      return { roots, main: pick ?? null }
    }
    return { roots, main: byName.get(main) }
  }
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
  else if (kind === 'map' || kind === 'array') text = jsonLine(toJson(type), max + 1)
  return text.length > max ? `${text.slice(0, max)}…` : text
}

/** The text of an XML fragment, blocks on lines of their own, stopping past `max` (and `MAX_DEPTH` down). */
export function xmlText (type, max) {
  let out = ''
  const walk = (node, depth) => {
    if (depth > MAX_DEPTH) {
      out += '… nested deeper\n'
      return
    }
    for (let item = node._start; item !== null && out.length < max; item = item.right) {
      if (item.deleted || !(item.content instanceof Y.ContentType)) continue
      const child = item.content.type
      if (child instanceof Y.XmlText) {
        for (const op of child.toDelta()) if (typeof op.insert === 'string') out += op.insert
      } else if (child instanceof Y.XmlElement) {
        const name = child.nodeName.toLowerCase().replace(/[-_]/g, '')
        if (name === 'hardbreak' || name === 'br') out += '\n'
        else {
          walk(child, depth + 1)
          if (!out.endsWith('\n') && !hasElements(child)) out += '\n'
        }
      }
    }
  }
  walk(type, 0)
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

// ---- JSON, built without Yjs' own (recursive) toJSON ----

/** A value shown as it is said (a subdocument, what is nested too deep…): a leaf, its text in JSON. */
export class Leaf {
  constructor (text, className = 'json-other') {
    this.text = text
    this.className = className
  }

  toJSON () { return this.text }
}

const DEEPER = new Leaf('… nested deeper', 'json-other node-deeper')

/** Whether `v` is a plain object (its prototype Object's or none), as JSON values are. */
export function isPlainObject (v) {
  if (v === null || typeof v !== 'object') return false
  const proto = Object.getPrototypeOf(v)
  return proto === Object.prototype || proto === null
}

/** A JSON value copied `MAX_DEPTH` deep at most. */
function plain (v, depth) {
  if (!Array.isArray(v) && !isPlainObject(v)) return v
  if (depth > MAX_DEPTH) return DEEPER
  if (Array.isArray(v)) return v.map(x => plain(x, depth + 1))
  const out = Object.create(null)
  for (const key of Object.keys(v)) out[key] = plain(v[key], depth + 1)
  return out
}

function value (v, depth) {
  if (v instanceof Y.AbstractType) return toJson(v, depth + 1)
  if (v instanceof Y.Doc) return new Leaf(`‹subdocument ${v.guid}›`)
  return plain(v, depth + 1)
}

/**
 * A type as JSON, `MAX_DEPTH` levels down at most: maps as objects (without
 * a prototype, so a key `__proto__` is a key), arrays as arrays, texts as
 * strings, XML as a leaf of its text, subdocuments as a leaf naming them.
 */
export function toJson (type, depth = 0) {
  if (depth > MAX_DEPTH) return DEEPER
  if (type instanceof Y.Text) {
    let s = ''
    for (let item = type._start; item !== null; item = item.right) {
      if (!item.deleted && item.content instanceof Y.ContentString) s += item.content.str
    }
    return s
  }
  if (type instanceof Y.XmlElement || type instanceof Y.XmlFragment) {
    const text = xmlText(type, 201).replace(/\n+$/, '')
    return new Leaf(`‹xml› ${text.length > 200 ? `${text.slice(0, 200)}…` : text}`)
  }
  if (type instanceof Y.Map || (!(type instanceof Y.Array) && type._map.size > 0)) {
    const out = Object.create(null)
    for (const [key, item] of type._map) {
      if (item.deleted) continue
      const all = item.content.getContent()
      if (all.length > 0) out[key] = value(all[all.length - 1], depth)
    }
    return out
  }
  const out = []
  for (let item = type._start; item !== null; item = item.right) {
    if (item.deleted || !item.countable) continue
    for (const v of item.content.getContent()) out.push(value(v, depth))
  }
  return out
}
