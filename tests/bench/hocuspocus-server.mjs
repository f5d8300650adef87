// @hocuspocus/server as its documentation sets it up, for
// tests/bench/compare.sh: one Server on HOST:PORT, each document stored as
// a file in DATA through @hocuspocus/extension-database (fetch on load;
// store whenever Hocuspocus saves, which it debounces: 2 s after a change,
// at most 10 s, its defaults). compare.sh copies this file next to the
// node_modules it installs the server into.
import { mkdir, readFile, writeFile, rename } from "node:fs/promises";
import { join } from "node:path";
import { Server } from "@hocuspocus/server";
import { Database } from "@hocuspocus/extension-database";

const host = process.env.HOST ?? "127.0.0.1";
const port = Number(process.env.PORT ?? 18080);
const data = process.env.DATA ?? "./data";
await mkdir(data, { recursive: true });

const file = (name) => join(data, encodeURIComponent(name) + ".ydoc");

const server = new Server({
  address: host,
  port,
  quiet: true,
  extensions: [
    new Database({
      fetch: async ({ documentName }) => {
        try {
          return new Uint8Array(await readFile(file(documentName)));
        } catch (e) {
          if (e.code === "ENOENT") return null;
          throw e;
        }
      },
      store: async ({ documentName, state }) => {
        // Written whole, then renamed over the old copy.
        const to = file(documentName);
        await writeFile(to + ".tmp", state);
        await rename(to + ".tmp", to);
      },
    }),
  ],
});
await server.listen();
