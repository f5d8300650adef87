// How the pages write sizes and times for people: bytes as kB/MB, and a
// moment as "just now", "5 min ago", with the exact time for a tooltip.

/** `n` bytes, in B, kB or MB (powers of 1000). */
export function bytes (n) {
  if (!Number.isFinite(n)) return '–'
  if (n < 1000) return `${n} B`
  if (n < 1e6) return `${(n / 1e3).toFixed(n < 1e4 ? 1 : 0)} kB`
  return `${(n / 1e6).toFixed(n < 1e7 ? 1 : 0)} MB`
}

const relative = new Intl.RelativeTimeFormat(undefined, { numeric: 'auto', style: 'short' })

/** How long ago `ms` (milliseconds since the epoch) was, from `now`. */
export function ago (ms, now = Date.now()) {
  const s = Math.round((ms - now) / 1000)
  if (Math.abs(s) < 10) return 'just now'
  if (Math.abs(s) < 60) return relative.format(s, 'second')
  const m = Math.round(s / 60)
  if (Math.abs(m) < 60) return relative.format(m, 'minute')
  const h = Math.round(m / 60)
  if (Math.abs(h) < 24) return relative.format(h, 'hour')
  return relative.format(Math.round(h / 24), 'day')
}

/** A <time> element saying how long ago `ms` was, the exact time as its tooltip; '–' when unknown. */
export function timeAgo (ms) {
  const time = document.createElement('time')
  setTimeAgo(time, ms)
  return time
}

/** Updates a <time> made by `timeAgo`. */
export function setTimeAgo (time, ms) {
  if (ms == null) {
    time.textContent = '–'
    time.removeAttribute('datetime')
    time.title = 'not known'
    return
  }
  const date = new Date(ms)
  time.dateTime = date.toISOString()
  time.title = date.toLocaleString()
  time.textContent = ago(ms)
}
