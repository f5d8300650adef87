// Starts and stops the real `weft` binary for tests: ephemeral loopback port,
// temporary data directory, bounded waits.
import { spawn } from 'node:child_process'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join, dirname, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'

const here = dirname(fileURLToPath(import.meta.url))
export const WEFT_BIN = process.env.WEFT_BIN || resolve(here, '../../../target/debug/weft')

export class Weft {
  constructor (extraArgs = []) {
    this.dataDir = mkdtempSync(join(tmpdir(), 'weft-js-'))
    this.extraArgs = extraArgs
    this.listen = '127.0.0.1:0'
    this.proc = null
  }

  /** Starts the server and resolves once it prints its address. */
  async start () {
    const args = ['serve', '--listen', this.listen, '--data-dir', this.dataDir, ...this.extraArgs]
    const proc = spawn(WEFT_BIN, args, { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, RUST_LOG: process.env.RUST_LOG || 'warn' } })
    this.proc = proc
    this.stderr = ''
    proc.stderr.on('data', d => { this.stderr += d })
    const addr = await new Promise((resolve, reject) => {
      let out = ''
      const timer = setTimeout(() => reject(new Error(`weft did not start within 20 s: ${this.stderr}`)), 20000)
      proc.stdout.on('data', d => {
        out += d
        const m = out.match(/weft listening on https?:\/\/(\S+)/)
        if (m) { clearTimeout(timer); resolve(m[1]) }
      })
      proc.on('exit', code => { clearTimeout(timer); reject(new Error(`weft exited with ${code}: ${this.stderr}`)) })
    })
    this.addr = addr
    // Restarts reuse the port so clients can reconnect on their own.
    this.listen = addr
    this.exited = new Promise(resolve => proc.on('exit', (code, signal) => resolve({ code, signal })))
    return this
  }

  get wsUrl () { return `ws://${this.addr}/ws` }
  get httpUrl () { return `http://${this.addr}` }

  /** kill -9: no chance to flush or snapshot anything. */
  async kill9 () {
    this.proc.kill('SIGKILL')
    await this.exited
  }

  /** Sends `signal` and resolves with how the process ended. */
  async signal (signal) {
    this.proc.kill(signal)
    return this.exited
  }

  async stop () {
    if (this.proc && this.proc.exitCode === null && this.proc.signalCode === null) {
      this.proc.kill('SIGTERM')
      await this.exited
    }
  }

  async cleanup () {
    await this.stop()
    rmSync(this.dataDir, { recursive: true, force: true })
  }
}

/** Polls `cond` every 20 ms until it is true, failing after `ms`. */
export async function waitFor (cond, ms = 10000, what = 'condition') {
  const deadline = Date.now() + ms
  while (Date.now() < deadline) {
    if (await cond()) return
    await new Promise(resolve => setTimeout(resolve, 20))
  }
  throw new Error(`timed out after ${ms} ms waiting for ${typeof what === 'function' ? what() : what}`)
}
