// The viewer's rendering of one root type as read-only DOM: a Y.Text as
// text with its formatting attributes (Quill's and ProseMirror's names: bold,
// italic, links, headings and lists on the line's newline…), an XML
// fragment as rich text (ProseMirror/Tiptap node and mark names; unknown
// nodes as their text content, marked, never dropped), maps and arrays as
// a collapsible JSON tree; and editors' cursors and selections (awareness
// `cursor.anchor`/`head`, relative positions, as y-codemirror.next and
// y-prosemirror/Tiptap set them) drawn into text and rich text.
//
// Content is untrusted: the DOM is built with createElement and
// textContent only; links keep http(s) and mailto URLs only, images
// http(s) and data:image URLs only, and colours must be #rgb or #rrggbb.
import * as Y from 'yjs'
import { Leaf, MAX_DEPTH, isPlainObject, toJson } from './roots.js'

// ---- untrusted values ----

function url (value, allowed) {
  if (typeof value !== 'string' || value.length > 8192) return null
  try {
    const parsed = new URL(value.trim())
    return allowed(parsed) ? parsed.href : null
  } catch {
    return null
  }
}

/** `value` as a link's href if it is an absolute http(s) or mailto URL, else null. */
const safeHref = value => url(value, u => ['http:', 'https:', 'mailto:'].includes(u.protocol))

/** `value` as an image source if it is an absolute http(s) URL or a data:image URL, else null. */
const safeImage = value => url(value, u => ['http:', 'https:'].includes(u.protocol) ||
  (u.protocol === 'data:' && /^image\/[a-z0-9.+-]+[;,]/i.test(u.pathname)))

/** A user's colour and its light shade: their own if #rgb/#rrggbb, else one from their id. */
function colours (color, id) {
  if (typeof color === 'string' && /^#([0-9a-f]{3}|[0-9a-f]{6})$/i.test(color)) {
    const hex = color.length === 4 ? `#${[...color.slice(1)].map(c => c + c).join('')}` : color
    return { solid: hex, light: `${hex}40` }
  }
  const hue = (Number(id) * 47) % 360
  return { solid: `hsl(${hue} 65% 45%)`, light: `hsl(${hue} 65% 45% / .25)` }
}

/**
 * An untrusted value as text: strings as they are; finite numbers,
 * booleans and bigints written out; anything else `fallback` (never a
 * conversion that could throw, as an object's `toString` could).
 */
export function safeString (v, fallback = '') {
  if (typeof v === 'string') return v
  if ((typeof v === 'number' && Number.isFinite(v)) || typeof v === 'boolean' || typeof v === 'bigint') return String(v)
  return fallback
}

/** An untrusted value as a finite number (a number, or a string of one), else `fallback`. */
export function safeNumber (v, fallback) {
  const n = typeof v === 'number' ? v : typeof v === 'string' && v.trim() !== '' ? Number(v) : NaN
  return Number.isFinite(n) ? n : fallback
}

/** What a shared type is, in words (class names are minified away). */
function typeName (v) {
  if (v instanceof Y.XmlElement || v instanceof Y.XmlFragment) return 'xml'
  if (v instanceof Y.Text) return 'text'
  if (v instanceof Y.Map) return 'map'
  if (v instanceof Y.Array) return 'array'
  if (v instanceof Y.Doc) return 'subdocument'
  return 'type'
}

const deeper = () => el('span', 'node-deeper meta', '… nested deeper')

/** A lookup by untrusted names: a Map, so `constructor` or `__proto__` find nothing. */
const table = object => new Map(Object.entries(object))

function el (tag, className, text) {
  const node = document.createElement(tag)
  if (className) node.className = className
  if (text != null) node.textContent = text
  return node
}

// ---- positions and cursors ----

/**
 * Every position of `root` on one line: a text's characters and embeds
 * count one each; an XML element counts one to open and one to close, its
 * children in between (as ProseMirror counts). Gives each text its start
 * and each container the position before each child (and its end).
 */
function layout (root) {
  const map = new Map()
  const walk = (type, pos, depth = 0) => {
    if (type instanceof Y.Text) {
      map.set(type, { start: pos })
      return pos + type.length
    }
    const kids = []
    // Past MAX_DEPTH nothing is shown, so no cursor is placed there.
    for (let item = depth > MAX_DEPTH ? null : type._start; item !== null; item = item.right) {
      if (item.deleted || !(item.content instanceof Y.ContentType)) continue
      kids.push(pos)
      const child = item.content.type
      if (child instanceof Y.XmlText) pos = walk(child, pos, depth + 1)
      else if (child instanceof Y.XmlElement) pos = walk(child, pos + 1, depth + 1) + 1
      else pos += 1
    }
    kids.push(pos)
    map.set(type, { kids })
    return pos
  }
  walk(root, 0)
  return map
}

function resolve (ydoc, json) {
  const rel = Y.createRelativePositionFromJSON(json)
  // Resolving by name would create a root the document does not have.
  if (rel.tname != null && !ydoc.share.has(rel.tname)) return null
  return Y.createAbsolutePositionFromRelativePosition(rel, ydoc)
}

/**
 * Other clients' cursors inside the root laid out as `positions` (from
 * `layout`), as `{ id, name, colour, from, to, head }` positions there.
 * Malformed ones, and those in other roots, are left out.
 */
function cursorsIn (ydoc, awareness, positions) {
  const at = abs => {
    const entry = abs && positions.get(abs.type)
    if (!entry) return null
    if (entry.kids) return entry.kids[Math.max(0, Math.min(abs.index, entry.kids.length - 1))]
    return entry.start + Math.max(0, Math.min(abs.index, abs.type.length))
  }
  const out = []
  for (const [id, state] of awareness.getStates()) {
    const cursor = state?.cursor
    if (id === ydoc.clientID || !cursor?.anchor || !cursor?.head) continue
    let anchor, head
    try {
      anchor = at(resolve(ydoc, cursor.anchor))
      head = at(resolve(ydoc, cursor.head))
    } catch {
      continue
    }
    if (head == null) continue
    const user = state.user || {}
    const name = typeof user.name === 'string' && user.name.trim() ? user.name.slice(0, 60) : `User ${id}`
    out.push({
      id,
      name,
      colour: colours(user.color, id),
      from: Math.min(anchor ?? head, head),
      to: Math.max(anchor ?? head, head),
      head
    })
  }
  return out
}

/** Where carets and selections go while a root is rendered, position by position. */
class Marks {
  constructor (cursors) {
    this.cursors = cursors
    this.placed = new Set()
    this.points = [...new Set(cursors.flatMap(c => [c.from, c.to, c.head]))].sort((a, b) => a - b)
  }

  /** Positions strictly inside (start, end) where a mark begins or ends. */
  cuts (start, end) {
    return this.points.filter(p => p > start && p < end)
  }

  /** Caret elements for the cursors at `pos` not shown yet. */
  caretsAt (pos) {
    const out = []
    for (const c of this.cursors) {
      if (c.head !== pos || this.placed.has(c.id)) continue
      this.placed.add(c.id)
      const caret = el('span', 'caret')
      caret.style.borderColor = c.colour.solid
      caret.dataset.user = c.name
      const label = el('span', 'caret-label', c.name)
      label.style.backgroundColor = c.colour.solid
      caret.append(label)
      out.push(caret)
    }
    return out
  }

  /** `node` (covering [a, b)) inside a highlight per selection covering it. */
  select (node, a, b) {
    for (const c of this.cursors) {
      if (c.from <= a && b <= c.to && c.from < c.to) {
        const span = el('span', 'selection')
        span.style.backgroundColor = c.colour.light
        span.dataset.user = c.name
        span.append(node)
        node = span
      }
    }
    return node
  }
}

const NO_MARKS = new Marks([])

// ---- inline formatting ----

/** Mark and attribute names (lower case) to the element showing them. */
const MARKS = table({
  bold: 'strong',
  strong: 'strong',
  b: 'strong',
  italic: 'em',
  em: 'em',
  i: 'em',
  underline: 'u',
  u: 'u',
  strike: 's',
  s: 's',
  strikethrough: 's',
  code: 'code',
  subscript: 'sub',
  superscript: 'sup',
  highlight: 'mark',
  mark: 'mark'
})

/** `node` inside an element per formatting attribute it has (unknown ones are not shown). */
function format (node, attrs) {
  if (!attrs) return node
  for (const [raw, value] of Object.entries(attrs)) {
    if (value == null || value === false) continue
    // y-prosemirror names overlapping marks of one type `name--hash`.
    const key = raw.replace(/--.*$/, '').toLowerCase()
    let wrapper = null
    if (key === 'link' || key === 'a') {
      const target = typeof value === 'string' ? value : value?.href
      const href = safeHref(target)
      wrapper = el(href ? 'a' : 'span', href ? null : 'link-unsafe')
      if (href) Object.assign(wrapper, { href, rel: 'nofollow noopener noreferrer', target: '_blank' })
      else wrapper.title = `not followed: ${safeString(target, short(target)).slice(0, 200)}`
    } else if (key === 'script' && (value === 'sub' || value === 'super')) {
      wrapper = el(value === 'sub' ? 'sub' : 'sup')
    } else if (MARKS.has(key)) {
      wrapper = el(MARKS.get(key))
    }
    if (wrapper) {
      wrapper.append(node)
      node = wrapper
    }
  }
  return node
}

/** A run of text from `start`, cut where carets and selections begin and end. */
function appendRun (parent, text, attrs, start, marks) {
  const end = start + text.length
  const bounds = [start, ...marks.cuts(start, end), end]
  for (let i = 0; i + 1 < bounds.length; i++) {
    const [a, b] = [bounds[i], bounds[i + 1]]
    parent.append(...marks.caretsAt(a))
    parent.append(format(marks.select(document.createTextNode(text.slice(a - start, b - start)), a, b), attrs))
  }
}

/** An embed in a text: an image if it is one with a safe URL, else what it holds. */
function embed (value, attrs) {
  if (value instanceof Y.AbstractType) {
    return el('span', 'embed', `[${typeName(value)}: ${short(toJson(value))}]`)
  }
  const src = safeImage(value?.image)
  if (src) {
    const img = el('img')
    Object.assign(img, { src, alt: typeof attrs?.alt === 'string' ? attrs.alt : '', loading: 'lazy', referrerPolicy: 'no-referrer' })
    return img
  }
  return el('span', 'embed', `[${short(value)}]`)
}

function short (value) {
  let text
  try {
    text = JSON.stringify(value)
  } catch {}
  if (text === undefined) text = safeString(value, typeof value)
  return text.length > 120 ? `${text.slice(0, 120)}…` : text
}

// ---- Y.Text ----

/** The block a line's newline attributes make it (Quill's names; `heading` too). */
function lineBlock (attrs = {}) {
  const level = safeNumber(attrs.header ?? attrs.heading, NaN)
  if (Number.isInteger(level) && level >= 1 && level <= 6) return { tag: `h${level}` }
  if (attrs.list === 'ordered') return { tag: 'li', list: 'ol' }
  if (attrs.list) return { tag: 'li', list: 'ul', check: attrs.list === 'checked' ? '☑ ' : attrs.list === 'unchecked' ? '☐ ' : '' }
  if (attrs['code-block']) return { tag: 'code', code: true }
  if (attrs.blockquote) return { tag: 'blockquote' }
  return { tag: 'div', className: 'line' }
}

/**
 * The text's lines: the runs on each, where its newline is, and that
 * newline's attributes; and whether anything in it is formatted.
 */
function lines (ytext) {
  const out = []
  let runs = []
  let pos = 0
  let formatted = false
  for (const op of ytext.toDelta()) {
    if (op.attributes) formatted = true
    if (typeof op.insert !== 'string') {
      formatted = true
      runs.push({ embed: op.insert, attrs: op.attributes, start: pos++ })
      continue
    }
    op.insert.split('\n').forEach((part, i) => {
      if (i > 0) {
        out.push({ runs, attrs: op.attributes, end: pos++ })
        runs = []
      }
      if (part) {
        runs.push({ text: part, attrs: op.attributes, start: pos })
        pos += part.length
      }
    })
  }
  // A text with line formatting (Quill's) ends with a newline that ends
  // its last line, not one that starts an empty line.
  if (runs.length > 0 || !out.some(line => line.attrs)) out.push({ runs, attrs: null, end: pos })
  return { lines: out, formatted }
}

function renderText (ytext, marks) {
  const text = lines(ytext)
  // Plain text (the demo editor's, code…) keeps a fixed-width font.
  const root = el('div', text.formatted ? 'text-root formatted' : 'text-root')
  let list = null
  let code = null
  for (const line of text.lines) {
    const block = lineBlock(line.attrs ?? {})
    const node = el(block.tag, block.className)
    if (block.check) node.append(block.check)
    for (const run of line.runs) {
      node.append(...marks.caretsAt(run.start))
      if (run.embed !== undefined) node.append(embed(run.embed, run.attrs))
      else appendRun(node, run.text, run.attrs, run.start, marks)
    }
    node.append(...marks.caretsAt(line.end))
    if (block.list) {
      if (list?.tagName.toLowerCase() !== block.list) root.append(list = el(block.list))
      list.append(node)
    } else list = null
    if (block.code) {
      if (!code) root.append(code = el('pre'))
      if (code.childNodes.length) code.append('\n')
      code.append(node)
    } else code = null
    if (!block.list && !block.code) root.append(node)
  }
  return root
}

// ---- XML (ProseMirror, Tiptap) ----

/** Node names (lower case, without `_` and `-`) to what shows them. */
const NODES = table({
  paragraph: 'p',
  p: 'p',
  heading: 'heading',
  bulletlist: 'ul',
  ul: 'ul',
  tasklist: 'ul',
  orderedlist: 'ol',
  ol: 'ol',
  listitem: 'li',
  li: 'li',
  taskitem: 'li',
  blockquote: 'blockquote',
  codeblock: 'pre',
  pre: 'pre',
  hardbreak: 'br',
  br: 'br',
  horizontalrule: 'hr',
  hr: 'hr',
  image: 'img',
  img: 'img',
  h1: 'h1',
  h2: 'h2',
  h3: 'h3',
  h4: 'h4',
  h5: 'h5',
  h6: 'h6'
})

function renderXml (fragment, marks) {
  const root = el('div', 'rich-root')
  children(fragment, root, 0, marks, 0)
  return root
}

/** `type`'s children into `parent`, the first at position `pos`; returns the position after them. */
function children (type, parent, pos, marks, depth) {
  if (depth > MAX_DEPTH) {
    parent.append(deeper())
    return pos
  }
  for (let item = type._start; item !== null; item = item.right) {
    if (item.deleted || !(item.content instanceof Y.ContentType)) continue
    const child = item.content.type
    parent.append(...marks.caretsAt(pos))
    if (child instanceof Y.XmlText) {
      for (const op of child.toDelta()) {
        if (typeof op.insert === 'string') {
          appendRun(parent, op.insert, op.attributes, pos, marks)
          pos += op.insert.length
        } else {
          parent.append(...marks.caretsAt(pos))
          parent.append(embed(op.insert, op.attributes))
          pos += 1
        }
      }
    } else if (child instanceof Y.XmlElement) {
      pos = element(child, parent, pos, marks, depth)
    } else {
      parent.append(el('span', 'node-unknown', `[${typeName(child)}: ${short(toJson(child))}]`))
      pos += 1
    }
  }
  parent.append(...marks.caretsAt(pos))
  return pos
}

const hasElements = type => {
  for (let item = type._start; item !== null; item = item.right) {
    if (!item.deleted && item.content instanceof Y.ContentType && item.content.type instanceof Y.XmlElement) return true
  }
  return false
}

/** An XML element at `pos` into `parent`; returns the position after it. */
function element (node, parent, pos, marks, depth) {
  const name = node.nodeName
  const attrs = node.getAttributes()
  let tag = NODES.get(name.toLowerCase().replace(/[-_]/g, ''))
  let dom
  let inner
  if (tag === 'heading') {
    const level = Math.min(6, Math.max(1, Math.trunc(safeNumber(attrs.level, 1)) || 1))
    tag = `h${level}`
  }
  if (tag === 'img') {
    const src = safeImage(attrs.src)
    if (src) {
      dom = el('img')
      Object.assign(dom, { src, alt: typeof attrs.alt === 'string' ? attrs.alt : '', loading: 'lazy', referrerPolicy: 'no-referrer' })
      if (typeof attrs.title === 'string') dom.title = attrs.title
    } else {
      dom = el('span', 'node-unknown', `[image${typeof attrs.alt === 'string' && attrs.alt ? `: ${attrs.alt}` : ''}]`)
    }
  } else if (tag) {
    dom = el(tag)
    if (tag === 'pre') {
      inner = dom.appendChild(el('code'))
      if (typeof attrs.language === 'string') dom.dataset.language = attrs.language
    }
    const start = safeNumber(attrs.start, 1)
    if (tag === 'ol' && Number.isInteger(start) && start !== 1) dom.start = start
    if (tag === 'li' && attrs.checked != null) dom.append(attrs.checked === true || attrs.checked === 'true' ? '☑ ' : '☐ ')
  } else {
    // Unknown: its content shows, marked as what it was.
    dom = el(hasElements(node) ? 'div' : 'span', 'node-unknown')
    dom.dataset.node = name
    dom.title = name
    if (node._start === null) {
      const label = attrs.label ?? attrs.text ?? attrs.title ?? attrs.id
      dom.textContent = `‹${name}${label != null ? `: ${safeString(label, short(label)).slice(0, 80)}` : ''}›`
    }
  }
  parent.append(dom)
  const end = children(node, inner ?? dom, pos + 1, marks, depth + 1)
  return end + 1
}

// ---- maps and arrays ----

const LIST_MAX = 200

/**
 * A value as a collapsible JSON tree. `collapsed` holds the paths closed
 * (kept across renders); entries of the root value are shown at top level.
 */
function renderJson (value, collapsed) {
  const root = el('div', 'json-root')
  entries(value, root, [], collapsed, 0)
  return root
}

/** Only arrays and plain objects hold entries; anything else (a subdocument…) is a leaf. */
const isContainer = v => Array.isArray(v) || isPlainObject(v)

function entries (value, parent, path, collapsed, depth) {
  if (depth > MAX_DEPTH) {
    parent.append(deeper())
    return
  }
  const list = Array.isArray(value) ? value.map((v, i) => [i, v]) : Object.entries(value)
  for (const [key, v] of list.slice(0, LIST_MAX)) parent.append(jsonEntry(key, v, [...path, key], collapsed, depth))
  if (list.length > LIST_MAX) parent.append(el('div', 'json-more meta', `… ${(list.length - LIST_MAX).toLocaleString()} more`))
  if (list.length === 0) parent.append(el('div', 'json-more meta', Array.isArray(value) ? '(no items)' : '(no keys)'))
}

function jsonEntry (key, value, path, collapsed, depth) {
  const keyEl = el('span', typeof key === 'number' ? 'json-index' : 'json-key', String(key))
  if (!isContainer(value)) {
    const row = el('div', 'json-entry')
    row.dataset.key = String(key)
    row.append(keyEl, ': ', leaf(value))
    return row
  }
  const id = JSON.stringify(path)
  const details = el('details', 'json-entry')
  details.dataset.key = String(key)
  details.open = !collapsed.has(id)
  const summary = el('summary')
  const count = Array.isArray(value) ? `[${value.length}]` : `{${Object.keys(value).length}}`
  summary.append(keyEl, ' ', el('span', 'json-count', count))
  details.append(summary)
  const body = el('div', 'json-children')
  entries(value, body, path, collapsed, depth + 1)
  details.append(body)
  details.addEventListener('toggle', () => { details.open ? collapsed.delete(id) : collapsed.add(id) })
  return details
}

function leaf (value) {
  if (typeof value === 'string') {
    const text = value.length > 2000 ? `${value.slice(0, 2000)}…` : value
    return el('span', 'json-string', `"${text}"`)
  }
  if (typeof value === 'number' || typeof value === 'bigint') return el('span', 'json-number', String(value))
  if (typeof value === 'boolean') return el('span', 'json-boolean', String(value))
  if (value === null || value === undefined) return el('span', 'json-null', 'null')
  if (value instanceof Uint8Array) return el('span', 'json-binary', `<${value.length} bytes>`)
  if (value instanceof Leaf) return el('span', value.className, value.text)
  return el('span', 'json-other', short(value))
}

// ---- one root ----

/**
 * DOM showing `root` (`{ kind, type }` from roots.js): text and rich text
 * with the cursors in it of `awareness`'s clients; maps and arrays as a
 * JSON tree with the paths in `collapsed` closed.
 */
export function renderRoot (root, { ydoc, awareness, collapsed = new Set() } = {}) {
  const { kind, type } = root
  if (kind === 'map' || kind === 'array') return renderJson(toJson(type), collapsed)
  if (kind !== 'text' && kind !== 'xml') return el('p', 'meta', 'Nothing in it: what it held was deleted.')
  let marks = NO_MARKS
  const anyCursor = awareness && [...awareness.getStates().values()].some(s => s?.cursor)
  if (anyCursor) marks = new Marks(cursorsIn(ydoc, awareness, layout(type)))
  return kind === 'text' ? renderText(type, marks) : renderXml(type, marks)
}
