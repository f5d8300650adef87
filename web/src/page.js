// What every page reads from its URL: the document name (the last path
// segment) and an optional access token, passed on to weft unchanged.
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
