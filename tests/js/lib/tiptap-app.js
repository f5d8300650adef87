// A Tiptap app of the test suite's own: pages/tiptap.js bundled with
// esbuild, served with its page by a plain HTTP server on loopback (an app
// on its own origin, connecting to weft as such apps do), and a helper
// that opens it in a browser tab of its own and waits for it to sync.
import { createServer } from 'node:http'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { build } from 'esbuild'
import { waitFor } from './weft.js'

const here = dirname(fileURLToPath(import.meta.url))

const PAGE = '<!doctype html><meta charset="utf-8"><title>Tiptap on weft</title>' +
  '<style>.collaboration-carets__caret{border-left:1px solid;margin:0 -1px;position:relative}' +
  '.collaboration-carets__label{position:absolute;top:-1.4em;left:-1px;font-size:12px}</style>' +
  '<div id="editor"></div><script type="module" src="/app.js"></script>'

/** Bundles the page and serves it on 127.0.0.1: `{ url, close }`. */
export async function startTiptapApp () {
  const built = await build({
    entryPoints: [join(here, '..', 'pages', 'tiptap.js')],
    bundle: true,
    format: 'esm',
    write: false,
    logLevel: 'error'
  })
  const bundle = built.outputFiles[0].text
  const server = createServer((req, res) => {
    const isScript = req.url.startsWith('/app.js')
    res.writeHead(200, { 'content-type': isScript ? 'text/javascript' : 'text/html; charset=utf-8' })
    res.end(isScript ? bundle : PAGE)
  })
  await new Promise(resolve => server.listen(0, '127.0.0.1', resolve))
  return { url: `http://127.0.0.1:${server.address().port}`, close: () => server.close() }
}

/**
 * A tab of its own (its own browser context) with the Tiptap page for
 * `user` on `doc`: `query` is `{ url }` (Hocuspocus) or `{ ws }`
 * (y-websocket). Resolves once the editor has synced.
 */
export async function tiptapTab (browser, app, query, doc, user, cleanups) {
  const context = await browser.newContext()
  cleanups.push(() => context.close())
  const page = await context.newPage()
  const errors = []
  page.on('pageerror', e => errors.push(e.message))
  await page.goto(`${app.url}/?${new URLSearchParams({ ...query, doc, user })}`)
  await waitFor(() => page.evaluate(() => window.tiptap?.synced() === true), 15000,
    () => `${user}'s editor to sync (page errors: ${errors.join('; ') || 'none'})`)
  return page
}
