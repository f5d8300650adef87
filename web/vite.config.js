// Builds web/ into web/dist, which the weft binary embeds: one HTML page per
// route, hashed assets (served with immutable caching) under /assets.
import { resolve } from 'node:path'
import { defineConfig } from 'vite'

export default defineConfig({
  base: '/',
  build: {
    outDir: 'dist',
    emptyOutDir: true,
    assetsDir: 'assets',
    // Reproducible output: the test command rebuilds and compares.
    sourcemap: false,
    rollupOptions: {
      input: {
        index: resolve(import.meta.dirname, 'index.html'),
        edit: resolve(import.meta.dirname, 'edit.html'),
        view: resolve(import.meta.dirname, 'view.html'),
        follow: resolve(import.meta.dirname, 'follow.html'),
        history: resolve(import.meta.dirname, 'history.html')
      }
    }
  }
})
