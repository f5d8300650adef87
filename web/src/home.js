// /: open or create a document by name, and a live list of documents (from
// `GET /docs`, every 2 s), the most recently changed first: each one's
// stored size, last change, and how many editors and viewers it has now.
import { tokenSuffix } from './page.js'
import { bytes, timeAgo } from './format.js'
import './style.css'

const form = document.getElementById('open')
const nameInput = document.getElementById('name')
const valid = /^[A-Za-z0-9._~-]{1,255}$/

form.addEventListener('submit', event => {
  event.preventDefault()
  const name = nameInput.value.trim()
  if (!valid.test(name)) {
    nameInput.setCustomValidity('1–255 letters, digits, or . _ ~ -')
    nameInput.reportValidity()
    return
  }
  location.href = `/edit/${encodeURIComponent(name)}${tokenSuffix()}`
})
nameInput.addEventListener('input', () => nameInput.setCustomValidity(''))

const tbody = document.querySelector('#documents tbody')
const note = document.getElementById('list-note')

/** Newest change first; documents with none known last, then by name. */
const byLastChange = (a, b) => (b.last_change_ms ?? -1) - (a.last_change_ms ?? -1) || a.name.localeCompare(b.name)

function cell (...content) {
  const td = document.createElement('td')
  td.append(...content)
  return td
}

function link (path, label, name) {
  const a = document.createElement('a')
  a.href = `${path}/${encodeURIComponent(name)}${tokenSuffix()}`
  a.textContent = label
  return a
}

function row (d) {
  const tr = document.createElement('tr')
  tr.dataset.doc = d.name
  const name = cell(d.name)
  name.className = 'name'
  const size = cell(bytes(d.size_bytes))
  size.className = 'size'
  size.title = `${Number(d.size_bytes).toLocaleString()} bytes stored: the newest snapshot and the changes logged after it`
  const changed = cell(timeAgo(d.last_change_ms))
  changed.className = 'changed'
  const editors = cell(String(d.editors))
  editors.className = 'editors'
  const viewers = cell(String(d.viewers))
  viewers.className = 'viewers'
  tr.append(name, size, changed, editors, viewers,
    cell(link('/edit', 'edit', d.name), ' · ', link('/view', 'view', d.name), ' · ', link('/history', 'history', d.name)))
  return tr
}

async function refresh () {
  try {
    const res = await fetch('/docs')
    if (!res.ok) {
      note.textContent = (await res.json()).message
      return
    }
    const docs = await res.json()
    note.textContent = docs.length ? '' : 'No documents yet: open one above.'
    tbody.replaceChildren(...docs.sort(byLastChange).map(row))
    tbody.dataset.refreshed = String(Date.now())
  } catch {
    note.textContent = 'weft is not reachable'
  }
}
refresh()
setInterval(refresh, 2000)
