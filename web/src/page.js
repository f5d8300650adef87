// What every page reads from its URL: the document name (the last path
// segment) and an optional access token, passed on to weft unchanged; and
// how live pages pace their re-rendering.
export function docFromPath () {
  const last = decodeURIComponent(location.pathname.split('/').filter(Boolean).pop() || '')
  return last
}

export function token () {
  return new URLSearchParams(location.search).get('token')
}

/** Query parameters for providers: the token, when there is one. */
export function authParams () {
  const t = token()
  return t ? { token: t } : {}
}

/** `?token=…` to append to links, so navigation keeps access. */
export function tokenSuffix () {
  const t = token()
  return t ? `?token=${encodeURIComponent(t)}` : ''
}

export function wsBase () {
  return `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}/ws`
}

/** Shows the connection state in the element with id `status`. */
export function showStatus (label, kind) {
  const el = document.getElementById('status')
  el.textContent = label
  el.dataset.state = kind
}

/**
 * `render` run at most once per animation frame however often the result
 * is asked for, and after a slow run (a large document) only once three
 * times its cost has passed, at most a second, so that following a busy
 * document never hogs the page. Returns the function asking for a run.
 */
export function renderLoop (render) {
  let pending = false
  let cost = 0
  let last = 0
  const run = () => {
    const start = performance.now()
    pending = false
    try {
      render()
    } finally {
      last = performance.now()
      cost = last - start
    }
  }
  return () => {
    if (pending) return
    pending = true
    const wait = Math.min(1000, cost * 3) - (performance.now() - last)
    if (wait > 0) setTimeout(() => requestAnimationFrame(run), wait)
    else requestAnimationFrame(run)
  }
}
