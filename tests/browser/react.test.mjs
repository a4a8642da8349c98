// clients/js/react.js in real Chromium with React 18 (UMD files from npm,
// served by this test): useWebSocket(projectId) renders the status and the
// last event of project:{id}; switching the project and unmounting send
// the unsubscribes; a hub restart shows as disconnected, then connected.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import http from 'node:http';
import path from 'node:path';
import { Hub, ROOT, NPM, launchBrowser, waitInPage } from './harness.mjs';

const FILES = {
  '/index.html': path.join(ROOT, 'tests/browser/react-app/index.html'),
  '/app.js': path.join(ROOT, 'tests/browser/react-app/app.js'),
  '/react-shim.js': path.join(ROOT, 'tests/browser/react-app/react-shim.js'),
  '/react-dom-shim.js': path.join(ROOT, 'tests/browser/react-app/react-dom-shim.js'),
  '/livehub.js': path.join(ROOT, 'clients/js/livehub.js'),
  '/react.js': path.join(ROOT, 'clients/js/react.js'),
  '/umd/react.development.js': path.join(NPM, 'node_modules/react/umd/react.development.js'),
  '/umd/react-dom.development.js': path.join(NPM, 'node_modules/react-dom/umd/react-dom.development.js'),
};

let browser, server, hub;
before(async () => {
  browser = await launchBrowser();
  hub = await Hub.start();
  server = http.createServer(async (req, res) => {
    const file = FILES[new URL(req.url, 'http://x').pathname];
    if (!file) return res.writeHead(404).end();
    const type = file.endsWith('.html') ? 'text/html' : 'text/javascript';
    res.writeHead(200, { 'content-type': type + '; charset=utf-8' }).end(await readFile(file));
  });
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
});
after(async () => {
  if (browser) await browser.close();
  if (server) server.close();
  if (hub) assert.equal(await hub.stop(), 0, hub.stderr);
});

test('useWebSocket(projectId) renders status and last event, and unsubscribes on unmount', async () => {
  const page = await browser.newPage();
  const sent = [];
  const errors = [];
  page.on('websocket', (ws) => ws.on('framesent', (f) => sent.push(JSON.parse(String(f.payload)))));
  page.on('pageerror', (e) => errors.push(e.message));
  const tenant = 'react-' + Date.now();
  const ws = `ws://127.0.0.1:${hub.wsPort}/ws`;
  await page.goto(`http://127.0.0.1:${server.address().port}/index.html?project=p1&ws=${encodeURIComponent(ws)}&token=${hub.token(tenant, 'alice')}`);
  await waitInPage(page, () => document.getElementById('hook-status')?.textContent === 'connected', null, 'hook status connected');
  assert.equal(await page.textContent('#conn'), 'connected');
  assert.equal(await page.textContent('#last'), 'none');
  // The subscribe is confirmed before the publish, so the event cannot be missed.
  await waitInPage(page, () => window.client.subscriptions().some((s) => s.channel === 'project:p1' && s.subscribed), null, 'subscribed');
  await hub.progress(tenant, 'j7', 'other', 10); // another project: not rendered
  await hub.progress(tenant, 'j8', 'p1', 30);
  await waitInPage(page, () => document.getElementById('last').textContent === 'job:progress project:p1 j8 30', null, 'last event rendered');

  // Switching the project: unsubscribe p1, subscribe p2; the old channel's events are gone.
  await page.evaluate(() => window.setProject('p2'));
  await waitInPage(page, () => window.client.subscriptions().some((s) => s.channel === 'project:p2' && s.subscribed), null, 'subscribed p2');
  assert.equal(await page.textContent('#last'), 'none');
  await hub.progress(tenant, 'j9', 'p1', 50);
  await hub.progress(tenant, 'j10', 'p2', 60);
  await waitInPage(page, () => document.getElementById('last').textContent === 'job:progress project:p2 j10 60', null, 'p2 event rendered');

  // Unmount: the last handler goes, so does the subscription on the hub.
  await page.evaluate(() => window.setProject(null));
  await waitInPage(page, () => document.getElementById('none') !== null && window.client.subscriptions().length === 0, null, 'unmounted');
  const deadline = Date.now() + 30000;
  while (!sent.some((m) => m.type === 'unsubscribe' && m.channel === 'project:p2')) {
    assert.ok(Date.now() < deadline, 'no unsubscribe sent: ' + JSON.stringify(sent));
    await new Promise((r) => setTimeout(r, 50));
  }
  const subs = sent.filter((m) => m.type === 'subscribe' || m.type === 'unsubscribe').map((m) => m.type + ' ' + m.channel);
  assert.deepEqual(subs, ['subscribe project:p1', 'unsubscribe project:p1', 'subscribe project:p2', 'unsubscribe project:p2']);
  const stats = await hub.call('GetStats', {});
  assert.equal(Number(stats.connections), 1);

  // The hook re-renders the connection state: the hub goes away and comes
  // back on the same port; the remounted component gets events again.
  await page.evaluate(() => window.setProject('p3'));
  await waitInPage(page, () => window.client.subscriptions().some((s) => s.channel === 'project:p3' && s.subscribed), null, 'subscribed p3');
  const port = hub.wsPort;
  assert.equal(await hub.stop(), 0, hub.stderr);
  await waitInPage(page, () => document.getElementById('hook-status').textContent === 'disconnected', null, 'hook status disconnected');
  hub = await Hub.start({ secret: hub.secret, args: ['--ws-port', String(port)] });
  await waitInPage(page, () => document.getElementById('hook-status').textContent === 'connected' &&
                               window.client.subscriptions().some((s) => s.channel === 'project:p3' && s.subscribed), null, 'reconnected');
  await hub.progress(tenant, 'j11', 'p3', 70);
  await waitInPage(page, () => document.getElementById('last').textContent === 'job:progress project:p3 j11 70', null, 'event after the restart');
  assert.deepEqual(errors, []);
  await page.close();
});
