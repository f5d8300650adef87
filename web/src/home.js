// /: open or create a document by name, and a live list of documents with
// how many editors and viewers each has.
import { tokenSuffix } from './page.js'
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

async function refresh () {
  try {
    const res = await fetch('/docs')
    if (!res.ok) {
      note.textContent = (await res.json()).message
      return
    }
    const docs = await res.json()
    note.textContent = docs.length ? '' : 'No documents yet: open one above.'
    tbody.replaceChildren(...docs.map(d => {
      const row = document.createElement('tr')
      const link = (path, label) => `<a href="${path}/${encodeURIComponent(d.name)}${tokenSuffix()}">${label}</a>`
      row.innerHTML = `<td class="name"></td><td>${d.editors}</td><td>${d.viewers}</td><td>${link('/edit', 'edit')} · ${link('/view', 'view')} · ${link('/history', 'history')}</td>`
      row.querySelector('.name').textContent = d.name
      return row
    }))
  } catch {
    note.textContent = 'weft is not reachable'
  }
}
refresh()
setInterval(refresh, 2000)
