'use strict';
// node-ws: the wspushd contract written the way a Node.js user would write it: ws with its
// default options on an http server's 'upgrade' event, a Map of user -> Set of sockets, and the
// admin API on node's http module.

const http = require('node:http');
const { isUtf8 } = require('node:buffer');
const { parseArgs } = require('node:util');
const { WebSocketServer, WebSocket } = require('ws');

const NAME = 'node-ws';
const USAGE = `usage: ${NAME} [--listen ADDR] [--admin-listen ADDR] [--path /ws] [--echo]`;

let options;
try {
  ({ values: options } = parseArgs({
    options: {
      listen: { type: 'string', default: '127.0.0.1:8080' },
      'admin-listen': { type: 'string', default: '127.0.0.1:8081' },
      path: { type: 'string', default: '/ws' },
      echo: { type: 'boolean', default: false },
      demo: { type: 'boolean', default: false }, // wspushd's "user from the query" mode, the only one here
    },
  }));
} catch (err) {
  console.error(`${NAME}: ${err.message}\n${USAGE}`);
  process.exit(2);
}

/** "HOST:PORT" or "[V6]:PORT" -> { host, port } */
function splitAddress(address) {
  const colon = address.lastIndexOf(':');
  if (colon < 0) throw new Error(`address ${address} has no port`);
  return { host: address.slice(0, colon).replace(/^\[(.*)\]$/, '$1'), port: Number(address.slice(colon + 1)) };
}

function formatAddress(server) {
  const { address, family, port } = server.address();
  return family === 'IPv6' ? `[${address}]:${port}` : `${address}:${port}`;
}

/** @type {Map<string, Set<WebSocket>>} user -> that user's open connections (tabs) */
const registry = new Map();
const wss = new WebSocketServer({ noServer: true });

function parseUrl(target) {
  try {
    return new URL(target, 'http://localhost');
  } catch {
    return null;
  }
}

function rejectUpgrade(socket, status, reason) {
  socket.end(`HTTP/1.1 ${status} ${reason}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n`);
}

const wsServer = http.createServer((req, res) => {
  res.writeHead(426, { 'Content-Type': 'text/plain' });
  res.end('Upgrade Required\n');
});

function onSocketError() {
  this.destroy();
}

wsServer.on('upgrade', (req, socket, head) => {
  socket.on('error', onSocketError);
  const url = parseUrl(req.url);
  if (!url || url.pathname !== options.path) return rejectUpgrade(socket, 404, 'Not Found');
  const user = url.searchParams.get('user');
  if (!user) return rejectUpgrade(socket, 400, 'Bad Request');
  socket.removeListener('error', onSocketError); // ws installs its own
  wss.handleUpgrade(req, socket, head, (ws) => wss.emit('connection', ws, req, user));
});

wss.on('connection', (ws, req, user) => {
  let tabs = registry.get(user);
  if (!tabs) registry.set(user, (tabs = new Set()));
  tabs.add(ws);

  ws.on('error', () => {}); // a 'close' event always follows; without a listener the error would throw
  if (options.echo) {
    ws.on('message', (data, isBinary) => ws.send(data, { binary: isBinary }));
  }
  ws.on('close', () => {
    tabs.delete(ws);
    if (tabs.size === 0 && registry.get(user) === tabs) registry.delete(user);
  });
});

/** Sends the body to each open socket; returns how many it was queued to. */
function deliver(sockets, body, binary) {
  let delivered = 0;
  for (const ws of sockets) {
    if (ws.readyState === WebSocket.OPEN) {
      ws.send(body, { binary });
      delivered++;
    }
  }
  return delivered;
}

function reply(res, status, contentType, body) {
  res.writeHead(status, { 'Content-Type': contentType, 'Content-Length': Buffer.byteLength(body) });
  res.end(body);
}

const adminServer = http.createServer((req, res) => {
  const url = parseUrl(req.url);
  if (!url) return reply(res, 400, 'text/plain', 'Bad Request\n');
  if (url.pathname === '/healthz' && req.method === 'GET') return reply(res, 200, 'text/plain', 'ok');
  if (url.pathname !== '/publish' && url.pathname !== '/broadcast') return reply(res, 404, 'text/plain', 'Not Found\n');
  if (req.method !== 'POST') return reply(res, 405, 'text/plain', 'Method Not Allowed\n');

  const chunks = [];
  req.on('data', (chunk) => chunks.push(chunk));
  req.on('end', () => {
    const body = Buffer.concat(chunks);
    const mediaType = (req.headers['content-type'] || '').split(';')[0].trim().toLowerCase();
    const binary = mediaType === 'application/octet-stream';
    if (!binary && !isUtf8(body)) return reply(res, 400, 'text/plain', 'text payload is not UTF-8\n');

    let sockets;
    if (url.pathname === '/broadcast') {
      sockets = wss.clients;
    } else {
      const user = url.searchParams.get('user');
      if (!user) return reply(res, 400, 'text/plain', 'missing ?user=\n');
      sockets = registry.get(user) || [];
    }
    reply(res, 200, 'application/json', JSON.stringify({ delivered: deliver(sockets, body, binary) }));
  });
});

function listen(server, address) {
  return new Promise((resolve, reject) => {
    const { host, port } = splitAddress(address);
    server.once('error', reject);
    server.listen(port, host, () => {
      server.off('error', reject);
      resolve();
    });
  });
}

for (const signal of ['SIGINT', 'SIGTERM']) process.on(signal, () => process.exit(0));

Promise.all([listen(wsServer, options.listen), listen(adminServer, options['admin-listen'])]).then(
  () => {
    // stdout to a file or pipe is written synchronously on Linux, so the line is out when this returns.
    process.stdout.write(
      `${NAME} listening on ws://${formatAddress(wsServer)}${options.path}, admin on http://${formatAddress(adminServer)}\n`,
    );
  },
  (err) => {
    console.error(`${NAME}: cannot listen: ${err.message}`);
    process.exit(1);
  },
);
