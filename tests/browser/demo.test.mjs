// The demo page in real Chromium against the real hub: it connects, a gRPC
// publish moves a progress bar, a hub restart mid-stream is survived (the
// page reconnects, re-subscribes and reports recovered:false: the new hub
// has no history), and a network drop without a restart is recovered from
// history.
//   node --test tests/browser/
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { Hub, Proxy, ROOT, launchBrowser, waitInPage } from './harness.mjs';

let browser;
before(async () => { browser = await launchBrowser(); });
after(async () => { if (browser) await browser.close(); });

const TENANT = 'demo';
const barOf = (job) => (j) => {
  const row = document.querySelector(`.job[data-job-id="${j}"]`);
  return row ? Number(row.dataset.progress) : -1;
};

async function openDemo(hub, proxy) {
  const page = await browser.newPage();
  const frames = [];
  page.on('websocket', (ws) => ws.on('framesent', (f) => frames.push(String(f.payload))));
  page.on('pageerror', (e) => frames.push('PAGEERROR ' + e.message));
  await page.goto(`http://127.0.0.1:${proxy.port}/?token=${hub.token(TENANT, 'alice')}&backoffMax=300`);
  await waitInPage(page, () => window.livehubDemo && window.livehubDemo.state.subscribed.length > 0, null, 'first subscribed');
  return { page, frames };
}

test('demo page: connects, bars move, survives a hub restart with recovered:false', async () => {
  let hub = await Hub.start();
  const secret = hub.secret;
  const proxy = await Proxy.start(hub.wsPort);
  try {
    const { page, frames } = await openDemo(hub, proxy);
    assert.equal(await page.textContent('#status'), 'connected');
    assert.ok(!(await page.url()).includes('token='), 'the token is removed from the address bar');
    await hub.progress(TENANT, 'j1', 'demo', 40);
    await waitInPage(page, (j) => { const r = document.querySelector(`.job[data-job-id="${j}"]`); return r && r.dataset.progress === '40'; }, 'j1', 'bar j1 at 40');
    const width = await page.$eval('.job[data-job-id="j1"] .bar > div', (el) => el.style.width);
    assert.equal(width, '40%');
    await hub.call('PublishPriceUpdated', { tenantId: TENANT, event: { itemId: 'PLA', currency: 'EUR', amountMinor: '2590', previousAmountMinor: '2490' } });
    await waitInPage(page, () => { const r = document.querySelector('#prices tr[data-item="PLA"]'); return r && r.querySelector('.amount').textContent === '25.90 EUR'; }, null, 'price row');

    // Mid-stream restart: events keep coming while the hub goes away and a
    // new one (same secret, so the token still works) takes its place.
    await hub.progress(TENANT, 'j1', 'demo', 50);
    await waitInPage(page, () => document.querySelector('.job[data-job-id="j1"]').dataset.progress === '50', null, 'bar at 50');
    assert.equal(await hub.stop(), 0, 'hub exit status after SIGTERM\n' + hub.stderr);
    hub = await Hub.start({ secret });
    proxy.target = hub.wsPort;
    // Both the subscribed channel and the implicit $tenant (it carried a
    // price) are reported lost: a new hub has a new epoch and no history.
    await waitInPage(page, () => window.livehubDemo.state.recoveries.length >= 2, null, 'two recovery reports');
    const rec = await page.evaluate(() => window.livehubDemo.state.recoveries);
    rec.sort((a, b) => a.channel.localeCompare(b.channel));
    assert.deepEqual(rec, [{ channel: '$tenant', recovered: false }, { channel: 'project:demo', recovered: false }]);
    const statuses = await page.evaluate(() => window.livehubDemo.state.statuses);
    assert.ok(statuses.includes('disconnected') && statuses[statuses.length - 1] === 'connected', statuses.join(','));
    // The re-subscribe carried `since` (the last event seen before the restart).
    const resub = frames.map((f) => { try { return JSON.parse(f); } catch { return {}; } }).filter((m) => m.type === 'subscribe' && m.channel === 'project:demo');
    assert.equal(resub.length, 2, frames.join('\n'));
    assert.equal(resub[0].since, undefined);
    assert.equal(resub[1].channel, 'project:demo');
    assert.equal(typeof resub[1].since.offset, 'number');
    assert.equal(typeof resub[1].since.epoch, 'string');
    // The new hub's events move the same bar.
    await hub.progress(TENANT, 'j1', 'demo', 80);
    await waitInPage(page, () => document.querySelector('.job[data-job-id="j1"]').dataset.progress === '80', null, 'bar at 80 after restart');
    assert.deepEqual(frames.filter((f) => f.startsWith('PAGEERROR')), []);
    await page.close();
  } finally {
    await proxy.close();
    assert.equal(await hub.stop(), 0, 'hub exit status after SIGTERM\n' + hub.stderr);
  }
});

test('demo page: a dropped connection recovers the publications it missed', async (t) => {
  const hub = await Hub.start();
  const proxy = await Proxy.start(hub.wsPort);
  try {
    const { page } = await openDemo(hub, proxy);
    await hub.progress(TENANT, 'j2', 'demo', 10);
    await waitInPage(page, () => { const r = document.querySelector('.job[data-job-id="j2"]'); return r && r.dataset.progress === '10'; }, null, 'bar j2 at 10');
    const sub = await page.evaluate(() => window.livehubDemo.state.subscribed[0]);
    // Cut the network (the hub stays up) and keep the page out while
    // three publications go by.
    proxy.refusing = true;
    proxy.cut();
    await waitInPage(page, () => document.getElementById('status').dataset.status === 'disconnected', null, 'disconnected');
    // Let the hub drop the subscriber before publishing (else the events
    // may be queued on the dead connection, which is also a miss).
    const deadline = Date.now() + 30000;
    while (Number((await hub.call('GetStats', {})).connections) !== 0) {
      assert.ok(Date.now() < deadline, 'the hub never saw the cut connection close');
      await new Promise((r) => setTimeout(r, 50));
    }
    for (const p of [20, 30, 40]) await hub.progress(TENANT, 'j2', 'demo', p);
    proxy.refusing = false;
    await waitInPage(page, () => window.livehubDemo.state.recoveries.length > 0, null, 'a recovery report');
    const rec = await page.evaluate(() => window.livehubDemo.state.recoveries[0]);
    assert.ok('epoch' in sub, '`subscribed` carries offset and epoch (channel history)');
    assert.deepEqual(rec, { channel: 'project:demo', recovered: true });
    await waitInPage(page, () => document.querySelector('.job[data-job-id="j2"]').dataset.progress === '40', null, 'bar j2 at 40 from history');
    const offset = await page.$eval('.job[data-job-id="j2"]', (r) => Number(r.dataset.offset));
    assert.equal(offset, 4, 'the three missed events were replayed in order');
    await page.close();
  } finally {
    await proxy.close();
    assert.equal(await hub.stop(), 0, 'hub exit status after SIGTERM\n' + hub.stderr);
  }
});

test('the banner\'s demo URL and command work as printed (make run)', async () => {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'livehub-demo-'));
  const hub = await Hub.start({ devSecret: true, cwd: dir });
  try {
    await waitFor(() => /publish a demo job: /.test(hub.stderr), 'the banner');
    const url = /Demo\s+(http:\/\/\S+)/.exec(hub.stderr)[1];
    const cmd = /publish a demo job: (.+)/.exec(hub.stderr)[1].trim().split(/\s+/);
    assert.match(url, /^http:\/\/127\.0\.0\.1:\d+\/\?token=[\w-]+\.[\w-]+\.[\w-]+$/);
    assert.equal(cmd[0], '/usr/bin/python3');
    const page = await browser.newPage();
    await page.goto(url);
    await waitInPage(page, () => window.livehubDemo && window.livehubDemo.state.subscribed.length > 0, null, 'subscribed');
    // The printed command, from the repository root as after `make run`, made short.
    await promisify(execFile)(cmd[0], [...cmd.slice(1), '--duration', '1', '--tick', '0.05'], { cwd: ROOT, timeout: 120000 });
    await waitInPage(page, () => ['video-1', 'slice-2', 'export-3'].every((j) => document.querySelector(`.job[data-job-id="${j}"]`)?.dataset.state === 'completed'), null, 'three completed bars');
    const widths = await page.$$eval('.job .bar > div', (els) => els.map((e) => e.style.width));
    assert.deepEqual(widths, ['100%', '100%', '100%']);
    assert.ok((await page.$$('#prices tr')).length >= 1, 'price rows');
    await page.close();
  } finally {
    assert.equal(await hub.stop(), 0, hub.stderr);
    await rm(dir, { recursive: true, force: true });
  }
});

async function waitFor(fn, what) {
  const deadline = Date.now() + 30000;
  while (!fn()) {
    if (Date.now() > deadline) throw new Error('timed out waiting for ' + what);
    await new Promise((r) => setTimeout(r, 20));
  }
}

test('demo page: the token as a Sec-WebSocket-Protocol entry, kept out of the URL (issue 3)', async (t) => {
  const hub = await Hub.start();
  try {
    const token = hub.token(TENANT, 'alice');
    const supported = await new Promise((resolve) => {
      if (typeof WebSocket !== 'function') return resolve(null);
      const ws = new WebSocket(`ws://127.0.0.1:${hub.wsPort}/ws`, ['livehub.v1', 'bearer.' + token]);
      ws.onopen = () => { resolve(true); ws.close(); };
      ws.onerror = () => resolve(false);
    });
    assert.notEqual(supported, null, 'needs a global WebSocket (node --experimental-websocket) to probe the hub');
    assert.ok(supported, 'the hub accepts a token offered as a subprotocol');
    const page = await browser.newPage();
    const urls = [];
    page.on('websocket', (ws) => urls.push(ws.url()));
    await page.goto(`http://127.0.0.1:${hub.wsPort}/?token=${token}&transport=protocol`);
    await waitInPage(page, () => window.livehubDemo && window.livehubDemo.state.subscribed.length > 0, null, 'subscribed');
    assert.equal(await page.textContent('#status'), 'connected');
    assert.deepEqual(urls, [`ws://127.0.0.1:${hub.wsPort}/ws`], 'no token in the WebSocket URL');
    await hub.progress(TENANT, 'j5', 'demo', 55);
    await waitInPage(page, () => document.querySelector('.job[data-job-id="j5"]')?.dataset.progress === '55', null, 'bar j5 at 55');
    await page.close();
  } finally {
    assert.equal(await hub.stop(), 0, hub.stderr);
  }
});
