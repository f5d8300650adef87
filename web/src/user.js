// Who this tab is to the others: a random friendly name and colour, kept
// for the tab's lifetime (sessionStorage), editable by the person.
const adjectives = ['Brave', 'Calm', 'Clever', 'Eager', 'Gentle', 'Happy', 'Jolly', 'Kind', 'Lively', 'Nimble', 'Quiet', 'Swift', 'Witty', 'Bold', 'Bright']
const animals = ['Otter', 'Falcon', 'Badger', 'Heron', 'Lynx', 'Panda', 'Koala', 'Fox', 'Owl', 'Seal', 'Wren', 'Ibex', 'Moth', 'Crane', 'Gecko']
const colours = ['#30bced', '#6eeb83', '#ffbc42', '#ecd444', '#ee6352', '#9ac2c9', '#8acb88', '#1be7ff', '#c879ff', '#f78c6b']

const pick = list => list[Math.floor(Math.random() * list.length)]

export function localUser () {
  const saved = sessionStorage.getItem('weft-user')
  if (saved) return JSON.parse(saved)
  const color = pick(colours)
  const user = { name: `${pick(adjectives)} ${pick(animals)}`, color, colorLight: `${color}33` }
  sessionStorage.setItem('weft-user', JSON.stringify(user))
  return user
}

export function rename (user, name) {
  const renamed = { ...user, name }
  sessionStorage.setItem('weft-user', JSON.stringify(renamed))
  return renamed
}
