// Shared pieces of the browser tests: the real livehub binary, tokens, a
// gRPC client, a TCP proxy the tests can cut, and Chromium through
// playwright-core (Debian's /usr/bin/chromium; no browser download).
import { spawn } from 'node:child_process';
import { createHmac, randomBytes } from 'node:crypto';
import { createRequire } from 'node:module';
import net from 'node:net';
import path from 'node:path';
import readline from 'node:readline';
import { fileURLToPath } from 'node:url';

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
export const NPM = path.join(ROOT, 'tests', 'npm');
const require = createRequire(path.join(NPM, 'package.json'));
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

export const BIN = process.env.LIVEHUB_BIN || path.join(ROOT, 'build', 'livehub');
export const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
// Timeouts only turn a hang into a failure; nothing asserts a duration.
export const WAIT = 30000;

/** An HS256 JWT for (tenant, user). */
export function token(secret, tenant, user, expIn = 3600) {
  const b64 = (o) => Buffer.from(JSON.stringify(o)).toString('base64url');
  const body = b64({ alg: 'HS256', typ: 'JWT' }) + '.' + b64({ sub: user, tenant_id: tenant, exp: Math.floor(Date.now() / 1000) + expIn });
  return body + '.' + createHmac('sha256', secret).update(body).digest('base64url');
}

const pkg = grpc.loadPackageDefinition(protoLoader.loadSync(['livehub/v1/hub.proto', 'livehub/v1/events.proto'], {
  keepCase: false, longs: String, enums: String, defaults: true, includeDirs: [path.join(ROOT, 'proto')],
})).livehub.v1;

/** A livehub process on free ports with its own secret and directory. */
export class Hub {
  // devSecret: no --jwt-secret, so the hub uses (and creates, in cwd) its
  // development secret and prints the banner with the demo URL.
  static async start({ secret = randomBytes(32).toString('hex'), args = [], cwd, devSecret = false } = {}) {
    const secretArgs = devSecret ? [] : ['--jwt-secret', secret];
    const proc = spawn(BIN, ['--ws-host', '127.0.0.1', '--ws-port', '0', '--grpc-host', '127.0.0.1', '--grpc-port', '0', ...secretArgs, ...args], {
      cwd: cwd || ROOT, stdio: ['ignore', 'pipe', 'pipe'], env: Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('LIVEHUB_'))),
    });
    const h = new Hub(proc, secret);
    proc.stderr.on('data', (d) => { h.stderr = (h.stderr + d).slice(-8000); });
    const line = await new Promise((resolve, reject) => {
      const rl = readline.createInterface({ input: proc.stdout });
      const timer = setTimeout(() => reject(new Error('livehub printed no ready line\n' + h.stderr)), WAIT);
      rl.on('line', (l) => { if (l.startsWith('livehub ready')) { clearTimeout(timer); resolve(l); } });
      proc.on('exit', (code) => { clearTimeout(timer); reject(new Error('livehub exited ' + code + '\n' + h.stderr)); });
    });
    const m = /ws=(\S+):(\d+) grpc=(\S+):(\d+)/.exec(line);
    h.wsPort = Number(m[2]);
    h.grpcPort = Number(m[4]);
    h.client = new pkg.HubService('127.0.0.1:' + h.grpcPort, grpc.credentials.createInsecure());
    return h;
  }

  constructor(proc, secret) {
    this.proc = proc;
    this.secret = secret;
    this.stderr = '';
  }

  token(tenant, user, expIn) {
    return token(this.secret, tenant, user, expIn);
  }

  call(method, request) {
    return new Promise((resolve, reject) => {
      this.client[method](request, { deadline: Date.now() + WAIT }, (err, reply) => (err ? reject(err) : resolve(reply)));
    });
  }

  progress(tenant, jobId, projectId, progress) {
    return this.call('PublishJobProgress', { tenantId: tenant, event: { jobId, projectId, kind: 'JOB_KIND_SLICE', progress, message: 'at ' + progress } });
  }

  /** SIGTERM; resolves with the exit status (must be 0: ASan builds report leaks with non-zero). */
  stop() {
    this.client.close();
    if (this.proc.exitCode !== null) return Promise.resolve(this.proc.exitCode);
    return new Promise((resolve) => {
      const timer = setTimeout(() => this.proc.kill('SIGKILL'), WAIT);
      this.proc.on('exit', (code, sig) => { clearTimeout(timer); resolve(sig ? sig : code); });
      this.proc.kill('SIGTERM');
    });
  }
}

/** A TCP proxy in front of the hub: the page's HTTP and WebSocket go
 *  through it, so a test can cut every connection (a network drop the hub
 *  did not cause), refuse new ones for a while, or point it at a new hub. */
export class Proxy {
  static async start(targetPort) {
    const p = new Proxy(targetPort);
    await new Promise((resolve) => p.server.listen(0, '127.0.0.1', resolve));
    p.port = p.server.address().port;
    return p;
  }

  constructor(targetPort) {
    this.target = targetPort;
    this.refusing = false;
    this.sockets = new Set();
    this.server = net.createServer((client) => {
      if (this.refusing) return client.destroy();
      const upstream = net.connect(this.target, '127.0.0.1');
      for (const s of [client, upstream]) {
        this.sockets.add(s);
        s.on('close', () => this.sockets.delete(s));
        s.on('error', () => {});
      }
      client.pipe(upstream).pipe(client);
      client.on('close', () => upstream.destroy());
      upstream.on('close', () => client.destroy());
    });
  }

  /** Drops every open connection without a close handshake. */
  cut() {
    for (const s of this.sockets) s.destroy();
  }

  close() {
    this.cut();
    return new Promise((resolve) => this.server.close(resolve));
  }
}

export async function launchBrowser() {
  const { chromium } = require('playwright-core');
  return chromium.launch({ executablePath: CHROMIUM, args: ['--headless', '--no-sandbox', '--disable-gpu'] });
}

/** Polls fn in the page until it returns a truthy value; returns it. */
export async function waitInPage(page, fn, arg, what) {
  try {
    const h = await page.waitForFunction(fn, arg, { timeout: WAIT, polling: 50 });
    return await h.jsonValue();
  } catch (e) {
    const log = await page.evaluate(() => (document.getElementById('log') || document.body).textContent).catch(() => '');
    throw new Error('waiting for ' + (what || fn.toString()) + ': ' + e.message + '\npage: ' + log);
  }
}
