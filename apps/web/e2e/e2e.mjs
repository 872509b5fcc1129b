// End-to-end tests of the web client: the release build served by a real backend, with a
// real Redis, driven in Debian's headless Chromium through playwright-core.
//
// Needs: dist/ (trunk build --release), target/debug/backend, redis-server, chromium.
// `just e2e` builds the first two. Everything it starts listens on 127.0.0.1 and is
// stopped at the end; the whole run is bounded by RUN_DEADLINE_MS.
// Screenshots go to target/e2e/. E2E_ONLY=<regex> runs only the scenarios whose name matches
// (those that do not depend on earlier ones' state).
//
// The last scenario runs `just dev` itself (just and trunk on PATH, or in ~/.cargo/bin),
// on its fixed ports (DEV_PORTS; it fails at once if one is taken), its output in
// target/e2e/just-dev.log. It runs the recipe's dependencies (`setup`: .ci/setup, a few
// seconds when everything is installed; `web-build`, up to date after `just e2e`'s) and
// trunk serve's first build (which reuses web-build's cargo artefacts).

import { spawn } from 'node:child_process';
import {
  mkdirSync, existsSync, readFileSync, writeFileSync, mkdtempSync, openSync, closeSync, readdirSync,
} from 'node:fs';
import { tmpdir, homedir } from 'node:os';
import { createServer, connect } from 'node:net';
import http from 'node:http';
import { join, resolve, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '../../..');
const DIST = join(ROOT, 'dist');
const BACKEND = process.env.BACKEND_BIN ?? join(ROOT, 'target/debug/backend');
const SHOTS = join(ROOT, 'target/e2e');
const CHROMIUM = process.env.CHROMIUM ?? '/usr/bin/chromium';
const PUBLISH_KEY = 'e2e-publish-key';
const WAIT_MS = 15_000;
// `just dev`: the ports of its topology, how long it may take to come up (its recipe's
// dependencies, then trunk serve's first build of the web client: minutes when cold) and to stop.
const DEV_PORTS = { redis: 6380, 'backend-1': 3000, 'backend-2': 3002, 'trunk serve': 3001, nginx: 8080 };
const DEV_START_MS = 6 * 60_000;
const DEV_STOP_MS = 15_000;
const RUN_DEADLINE_MS = 300_000 + DEV_START_MS + 60_000;

const children = new Set();
// Process groups (`just dev` and all it starts) to kill whatever happens.
const groups = new Set();

function killGroups() {
  for (const pgid of groups) {
    try {
      process.kill(-pgid, 'SIGKILL');
    } catch {
      // Gone already.
    }
  }
  groups.clear();
}

function freePort() {
  return new Promise((ok, fail) => {
    const server = createServer();
    server.unref();
    server.on('error', fail);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address();
      server.close(() => ok(port));
    });
  });
}

function start(name, command, args, env = {}) {
  const child = spawn(command, args, {
    env: { ...process.env, ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const prefix = (chunk) =>
    chunk.toString().split('\n').filter(Boolean).forEach((l) => process.stderr.write(`[${name}] ${l}\n`));
  if (process.env.E2E_VERBOSE) {
    child.stdout.on('data', prefix);
    child.stderr.on('data', prefix);
  } else {
    child.stdout.resume();
    child.stderr.on('data', (chunk) => {
      if (/error|panic/i.test(chunk.toString())) prefix(chunk);
    });
  }
  children.add(child);
  child.on('exit', () => children.delete(child));
  return child;
}

function stop(child, signal = 'SIGTERM') {
  return new Promise((ok) => {
    if (child.exitCode !== null || child.signalCode !== null) return ok();
    child.once('exit', () => ok());
    child.kill(signal);
  });
}

async function until(what, check, ms = WAIT_MS) {
  const deadline = Date.now() + ms;
  let last;
  while (Date.now() < deadline) {
    try {
      if (await check()) return;
    } catch (error) {
      last = error;
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`timed out waiting for ${what}${last ? `: ${last.message}` : ''}`);
}

async function startRedis() {
  const port = await freePort();
  const child = start('redis', 'redis-server', [
    '--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no',
  ]);
  const url = `redis://127.0.0.1:${port}`;
  await until('redis', async () => {
    const { execFileSync } = await import('node:child_process');
    return execFileSync('redis-cli', ['-p', String(port), 'ping'], { stdio: ['ignore', 'pipe', 'ignore'] }).toString().trim() === 'PONG';
  });
  return { child, url };
}

async function startBackend(name, port, redisUrl, env = {}) {
  const child = start(name, BACKEND, [], {
    HOST: '127.0.0.1',
    PORT: String(port),
    SERVER_ID: name,
    REDIS_URL: redisUrl,
    PUBLISH_KEY,
    WEB_DIR: DIST,
    WORKERS: '1',
    DRAIN_SECS: '0',
    SSE_RETRY_MS: '500',
    DEV_TOKENS: 'true',
    // As `just dev` and compose run them: the rooms say who arrives and leaves (with the
    // default grace of 2 s before a departure is told).
    PRESENCE_EVENTS: 'room:*',
    RUST_LOG: 'warn',
    ...env,
  });
  const base = `http://127.0.0.1:${port}`;
  await until(`${name} ready`, async () => (await fetch(`${base}/readyz`)).ok);
  return { child, base };
}

// A pass-through proxy in front of a backend that can be told to answer 503, as a load
// balancer does during a deploy. It records the event-stream requests it sees.
async function startDeployProxy(target) {
  const state = { refusing: false, streamUrls: [], sockets: new Set() };
  const server = http.createServer((req, res) => {
    if (req.url.startsWith('/api/events')) state.streamUrls.push(req.url);
    if (state.refusing) {
      res.writeHead(503, { 'content-type': 'text/plain' });
      res.end('deploying');
      return;
    }
    const upstream = http.request(`${target}${req.url}`, { method: req.method, headers: req.headers }, (up) => {
      res.writeHead(up.statusCode, up.headers);
      up.pipe(res);
    });
    upstream.on('error', () => {
      res.writeHead(502);
      res.end();
    });
    req.pipe(upstream);
  });
  server.on('connection', (socket) => {
    state.sockets.add(socket);
    socket.on('close', () => state.sockets.delete(socket));
  });
  const port = await freePort();
  await new Promise((ok) => server.listen(port, '127.0.0.1', ok));
  return {
    base: `http://127.0.0.1:${port}`,
    state,
    // Start refusing, and cut every open connection (the streams among them).
    refuse() {
      state.refusing = true;
      for (const socket of state.sockets) socket.destroy();
    },
    accept() {
      state.refusing = false;
    },
    close: () => new Promise((ok) => { server.close(ok); for (const s of state.sockets) s.destroy(); }),
  };
}

async function api(base, path, { token, body } = {}) {
  const response = await fetch(`${base}${path}`, {
    method: body ? 'POST' : 'GET',
    headers: {
      'content-type': 'application/json',
      ...(token ? { authorization: `Bearer ${token}` } : {}),
    },
    body: body ? JSON.stringify(body) : undefined,
  });
  return { status: response.status, json: await response.json() };
}

// nginx with the repo's own nginx.conf in front of two backends, serving dist/.
async function startNginx(backends) {
  const port = await freePort();
  const dir = mkdtempSync(join(tmpdir(), 'e2e-nginx-'));
  const hosts = backends.map((b) => b.base.replace('http://', ''));
  const config = readFileSync(join(ROOT, 'nginx.conf'), 'utf8')
    .replaceAll('${BACKEND_1}', hosts[0])
    .replaceAll('${BACKEND_2}', hosts[1])
    .replaceAll('${NGINX_PORT}', `127.0.0.1:${port}`)
    .replaceAll('${WEB_ROOT}', DIST)
    .replaceAll('${NGINX_RUN_DIR}', dir)
    // This script reads its children's output through sockets, which /dev/stdout
    // cannot be reopened on.
    .replace('access_log /dev/stdout', `access_log ${join(dir, 'access.log')}`);
  writeFileSync(join(dir, 'nginx.conf'), config);
  const child = start('nginx', 'nginx', ['-c', join(dir, 'nginx.conf'), '-g', 'daemon off;']);
  const base = `http://127.0.0.1:${port}`;
  await until('nginx up', async () => (await fetch(base)).ok);
  return { child, base };
}

// Publishes an event to userId through base, as another service would; fails unless 202.
async function publish(base, userId, eventType, data) {
  const published = await api(base, '/api/publish', { token: PUBLISH_KEY, body: { userId, eventType, data } });
  if (published.status !== 202) throw new Error(`publish answered ${published.status}`);
}

// `rooms`: the topic patterns typed in the form's Rooms field (its default, room:*, when absent).
async function signIn(page, base, userId, { rooms } = {}) {
  await page.goto(base);
  await page.getByTestId('user-id').fill(userId);
  if (rooms !== undefined) await page.getByTestId('rooms').fill(rooms);
  await page.getByTestId('connect').click();
  await until(`${userId}'s stream to open`, async () =>
    (await page.getByTestId('badge').getAttribute('data-state')) === 'open');
}

async function logCount(page) {
  return Number(await page.getByTestId('event-count').textContent());
}

// The ids of the events of `eventType` a page's log shows, oldest first.
async function loggedIds(page, eventType) {
  const ids = await page.$$eval(
    `tbody.event[data-event-type="${eventType}"] tr.summary td:nth-child(3)`,
    (cells) => cells.map((cell) => Number(cell.textContent)),
  );
  return ids.reverse();
}

// The value of an unlabelled metric of a backend, from its /metrics.
async function metric(base, name) {
  const text = await (await fetch(`${base}/metrics`)).text();
  const line = text.split('\n').find((l) => l.startsWith(`${name} `));
  return line === undefined ? undefined : Number(line.split(' ')[1]);
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// Whether anything accepts connections on 127.0.0.1:port.
function listening(port) {
  return new Promise((ok) => {
    const socket = connect({ port, host: '127.0.0.1' });
    socket.setTimeout(1000, () => { socket.destroy(); ok(false); });
    socket.once('connect', () => { socket.destroy(); ok(true); });
    socket.once('error', () => ok(false));
  });
}

async function openPorts(ports) {
  const open = [];
  for (const [name, port] of Object.entries(ports)) if (await listening(port)) open.push(`${name} (${port})`);
  return open;
}

// The live processes of session `sid` ("pid name"): a process started with setsid and all
// it started, even those its end left to init.
function sessionProcesses(sid) {
  const found = [];
  for (const pid of readdirSync('/proc').filter((name) => /^\d+$/.test(name))) {
    let stat;
    try {
      stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    } catch {
      continue;
    }
    const end = stat.lastIndexOf(')');
    const [state, , , session] = stat.slice(end + 2).split(' ');
    if (Number(session) === sid && state !== 'Z') found.push(`${pid} ${stat.slice(stat.indexOf('(') + 1, end)}`);
  }
  return found;
}

// `just dev` as a terminal's job control would start it: in a process group (a session)
// of its own, which its Ctrl-C handling signals. Output to target/e2e/just-dev.log.
function startJustDev() {
  const log = join(SHOTS, 'just-dev.log');
  const fd = openSync(log, 'w');
  const child = spawn('just', ['dev'], {
    cwd: ROOT,
    detached: true,
    stdio: ['ignore', fd, fd],
    env: { ...process.env, PATH: `${join(homedir(), '.cargo/bin')}:${process.env.PATH}` },
  });
  closeSync(fd);
  const state = { exit: undefined };
  child.on('error', (error) => { state.exit = `not started: ${error.message}`; });
  child.on('exit', (code, signal) => { state.exit = signal ?? `code ${code}`; });
  if (child.pid) groups.add(child.pid);
  return {
    child,
    state,
    // The end of its output, for a failure's message.
    tail: (lines = 25) => {
      const text = readFileSync(log, 'utf8').replace(/\x1b\[[0-9;]*m/g, '').trimEnd().split('\n');
      return `\n--- last lines of ${log} ---\n${text.slice(-lines).join('\n')}`;
    },
  };
}

async function main() {
  for (const [what, path] of [['the web build (trunk build --release)', join(DIST, 'index.html')], ['the backend binary (cargo build -p backend)', BACKEND], ['Chromium', CHROMIUM]]) {
    if (!existsSync(path)) throw new Error(`missing ${what}: ${path}`);
  }
  mkdirSync(SHOTS, { recursive: true });
  const redis = await startRedis();
  const portA = await freePort();
  let a = await startBackend('backend-a', portA, redis.url);
  const b = await startBackend('backend-b', await freePort(), redis.url);

  // playwright gives each launch a fresh temporary profile.
  const browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: [
      '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync',
    ],
  });
  const suffix = Math.random().toString(16).slice(2, 8);
  const alice = `alice-${suffix}`;
  const bob = `bob-${suffix}`;
  const aliceContext = await browser.newContext({ viewport: { width: 1200, height: 900 } });
  const bobContext = await browser.newContext({ viewport: { width: 390, height: 844 } });
  const page = await aliceContext.newPage();
  const bobPage = await bobContext.newPage();
  for (const [who, p] of [['alice', page], ['bob', bobPage]]) {
    p.setDefaultTimeout(WAIT_MS);
    p.on('pageerror', (error) => console.log(`[${who} page] ${error.message}`));
    p.on('console', (message) => {
      if (message.type() === 'error') console.log(`[${who} console] ${message.text()}`);
    });
  }
  const results = [];

  async function test(name, body) {
    if (process.env.E2E_ONLY && !new RegExp(process.env.E2E_ONLY).test(name)) return;
    const started = Date.now();
    try {
      await body();
      results.push({ name, ok: true });
      console.log(`ok   ${name} (${Date.now() - started} ms)`);
    } catch (error) {
      results.push({ name, ok: false });
      console.log(`FAIL ${name}: ${error.message}`);
      await page.screenshot({ path: join(SHOTS, `failed-${results.length}.png`), fullPage: true }).catch(() => {});
    }
  }

  // Three tabs of `user` on a backend of their own: the server holds one stream, every
  // tab shows every event once, in order; then the holder's tab closes while events are
  // being published and the other two go on with no gap and no duplicate. Returns what
  // is left for more; the caller closes `context` and stops `shared`.
  async function tabsShareOneStream(user, { withoutLocks = false, shots }) {
    const shared = await startBackend(`backend-tabs-${shots}`, await freePort(), redis.url);
    const context = await browser.newContext();
    if (withoutLocks) {
      await context.addInitScript(() => { delete Navigator.prototype.locks; });
    }
    const tabs = [];
    const holders = (of) => Promise.all(of.map((tab) =>
      tab.getByTestId('stream-holder').getAttribute('data-holder')));
    const expected = (n) => Array.from({ length: n }, (_, i) => i + 1);
    const showsAll = async (tab, n) => JSON.stringify(await loggedIds(tab, 'tabs.tick')) === JSON.stringify(expected(n));
    const oneHolder = async (of) => {
      const seen = await holders(of);
      return seen.filter((h) => h === 'this tab').length === 1 && seen.filter((h) => h === 'another tab').length === of.length - 1;
    };
    try {
      for (let i = 0; i < 3; i++) {
        const tab = await context.newPage();
        tab.setDefaultTimeout(WAIT_MS);
        tab.on('pageerror', (error) => console.log(`[tab ${i}] ${error.message}`));
        await signIn(tab, shared.base, user);
        tabs.push(tab);
      }
      if (withoutLocks && (await tabs[0].evaluate(() => 'locks' in navigator))) throw new Error('Web Locks still there');
      await until('one tab holding the stream and two shown it by that tab', () => oneHolder(tabs));
      await until('the server to hold one stream for three tabs', async () =>
        (await metric(shared.base, 'sse_streams_open')) === 1);
      for (let n = 1; n <= 5; n++) await publish(shared.base, user, 'tabs.tick', { n });
      for (const [i, tab] of tabs.entries()) {
        await until(`tab ${i} to show every event once, in order`, () => showsAll(tab, 5));
      }
      if ((await metric(shared.base, 'sse_streams_open')) !== 1) throw new Error('more than one stream');
      await tabs[0].screenshot({ path: join(SHOTS, `${shots}a-shared-stream.png`), fullPage: true });

      // Publishing goes on while the holder's tab closes.
      const holder = tabs[(await holders(tabs)).indexOf('this tab')];
      const others = tabs.filter((tab) => tab !== holder);
      const total = 40;
      const sending = (async () => {
        for (let n = 6; n <= total; n++) {
          await publish(shared.base, user, 'tabs.tick', { n });
          await sleep(25);
        }
      })();
      await until('the hand-over to start mid-publishing', async () =>
        (await loggedIds(others[0], 'tabs.tick')).length >= 12);
      await holder.close();
      await sending;
      for (const [i, tab] of others.entries()) {
        await until(`remaining tab ${i} to show all ${total} events once, in order`, () => showsAll(tab, total));
      }
      await until('one of the two to hold the stream', () => oneHolder(others));
      await until('the server to hold one stream again', async () =>
        (await metric(shared.base, 'sse_streams_open')) === 1);
      await sleep(300);
      for (const tab of others) {
        if (!(await showsAll(tab, total))) throw new Error('an event was shown twice after the hand-over');
      }
      await others[0].screenshot({ path: join(SHOTS, `${shots}b-shared-stream-handed-over.png`), fullPage: true });
      return { shared, context, others, after: await holders(others), total, showsAll };
    } catch (error) {
      await context.close().catch(() => {});
      await stop(shared.child);
      throw error;
    }
  }

  // `count` tabs of `user` (signed in, in one context) on a backend `name` of its own, and
  // what the room scenarios do with them. `done` closes the tabs and stops the backend.
  async function roomTabs(user, name, { count = 2, env = {} } = {}) {
    const shared = await startBackend(name, await freePort(), redis.url, env);
    const context = await browser.newContext();
    const done = async () => {
      await context.close().catch(() => {});
      await stop(shared.child);
    };
    const say = async (room, text) => {
      const sent = await api(shared.base, '/api/publish', {
        token: PUBLISH_KEY, body: { topic: `room:${room}`, eventType: 'chat.message', data: { text } },
      });
      if (sent.status !== 202) throw new Error(`publish to room:${room} answered ${sent.status}`);
    };
    const texts = (tab) => tab.$$eval('[data-testid="room-messages"] li .text', (items) => items.map((li) => li.textContent));
    const inRoom = async (tab, room) => {
      await tab.getByTestId('room-name').fill(room);
      await tab.getByTestId('join-room').click();
      await until(`the stream to carry room:${room}`, async () =>
        (await tab.getByTestId('room-status').getAttribute('data-joined')) === 'true');
    };
    // The topics the stream a tab shows carries, sorted, space-separated.
    const carried = async (tab) => (await tab.getByTestId('room-status').getAttribute('data-stream-topics'))
      .split(' ').filter(Boolean).sort().join(' ');
    const tabs = [];
    try {
      for (let i = 0; i < count; i++) {
        const tab = await context.newPage();
        tab.setDefaultTimeout(WAIT_MS);
        tab.on('pageerror', (error) => console.log(`[${name} tab ${i}] ${error.message}`));
        await signIn(tab, shared.base, user);
        tabs.push(tab);
      }
    } catch (error) {
      await done();
      throw error;
    }
    return { shared, context, tabs, say, texts, inRoom, carried, done };
  }

  // Records every state a tab's badge goes through from now on, in `window.badgeStates`.
  async function recordStates(tab) {
    await tab.evaluate(() => {
      const badge = document.querySelector('[data-testid="badge"]');
      window.badgeStates = [badge.getAttribute('data-state')];
      new MutationObserver(() => window.badgeStates.push(badge.getAttribute('data-state')))
        .observe(badge, { attributes: true, attributeFilter: ['data-state'] });
    });
  }

  try {
    await test('creating an account shows snapshots.generated, the account and its snapshot', async () => {
      await signIn(page, a.base, alice);
      await until('the serving instance in the badge', async () =>
        (await page.getByTestId('server-id').textContent()).includes('backend-a'));
      await page.getByTestId('account-name').fill('Savings');
      await page.getByTestId('account-balance').fill('1250');
      await page.getByTestId('create-account').click();
      await until('snapshots.generated in the log', async () =>
        (await page.locator('[data-event-type="snapshots.generated"]').count()) === 1);
      await until('the account listed', async () =>
        (await page.getByTestId('accounts').textContent()).includes('Savings'));
      await until('its snapshot listed', async () =>
        (await page.getByTestId('snapshots').locator('li').count()) === 1);
      await page.screenshot({ path: join(SHOTS, '1-account-created.png'), fullPage: true });
    });

    await test("another user's browser sees nothing of the first user's events", async () => {
      await signIn(bobPage, a.base, bob);
      await page.getByTestId('account-name').fill('Checking');
      await page.getByTestId('account-balance').fill('40');
      await page.getByTestId('create-account').click();
      await until("alice's second snapshots.generated", async () =>
        (await page.locator('[data-event-type="snapshots.generated"]').count()) === 2);
      // Both streams are on the same instance: had bob's stream been sent alice's event,
      // it would have arrived by now.
      await new Promise((r) => setTimeout(r, 500));
      if ((await logCount(bobPage)) !== 0) throw new Error('bob received events');
      if ((await bobPage.getByTestId('accounts').count()) !== 0) throw new Error("bob sees accounts");
      await bobPage.screenshot({ path: join(SHOTS, '2-other-user-phone.png'), fullPage: true });
    });

    await test('the stream survives a backend restart and gets what was published meanwhile', async () => {
      const before = await logCount(page);
      await stop(a.child, 'SIGKILL');
      await until('the badge to show reconnecting', async () =>
        (await page.getByTestId('badge').getAttribute('data-state')) === 'reconnecting');
      await page.screenshot({ path: join(SHOTS, '3a-reconnecting.png'), fullPage: true });
      await publish(b.base, alice, 'orders.shipped', { orderId: 42 });
      a = await startBackend('backend-a', portA, redis.url);
      await until('the badge to show open again', async () =>
        (await page.getByTestId('badge').getAttribute('data-state')) === 'open', 20_000);
      await until('the event published during the outage', async () =>
        (await page.locator('[data-event-type="orders.shipped"]').count()) === 1);
      if ((await logCount(page)) !== before + 1) throw new Error('expected exactly one more event');
      await page.screenshot({ path: join(SHOTS, '3b-reconnected.png'), fullPage: true });
    });

    await test('after the browser gives up (a 503 during a deploy) the hook reconnects and resumes', async () => {
      const proxy = await startDeployProxy(b.base);
      const carol = `carol-${suffix}`;
      const carolPage = await aliceContext.newPage();
      try {
        await signIn(carolPage, proxy.base, carol);
        proxy.refuse();
        await until('the badge to report the refusal', async () =>
          /refused/.test(await carolPage.getByTestId('badge').textContent()));
        await carolPage.screenshot({ path: join(SHOTS, '3c-refused-during-deploy.png'), fullPage: true });
        await publish(b.base, carol, 'notifications.sent', { text: 'deployed' });
        proxy.accept();
        await until('the event published during the deploy', async () =>
          (await carolPage.locator('[data-event-type="notifications.sent"]').count()) === 1, 25_000);
        if ((await carolPage.getByTestId('badge').getAttribute('data-state')) !== 'open') throw new Error('badge not open');
        // Only the hook (a new EventSource) puts the resume position in the query.
        if (!proxy.state.streamUrls.some((url) => url.includes('lastEventId='))) {
          throw new Error(`no resuming request among ${proxy.state.streamUrls.length}`);
        }
      } finally {
        await carolPage.close();
        await proxy.close();
      }
    });

    await test("through the repo's nginx: the page works under its CSP and no credential is ever in a URL", async () => {
      const nginx = await startNginx([a, b]);
      const context = await browser.newContext({ viewport: { width: 1200, height: 900 } });
      const dana = await context.newPage();
      dana.setDefaultTimeout(WAIT_MS);
      const refused = [];
      dana.on('console', (message) => {
        if (/Content Security Policy|Refused to/i.test(message.text())) refused.push(message.text());
      });
      const urls = [];
      dana.on('request', (request) => urls.push(request.url()));
      try {
        const response = await dana.goto(nginx.base);
        const policy = response.headers()['content-security-policy'] ?? '';
        if (!policy.includes("script-src 'self' 'nonce-")) throw new Error(`no strict CSP: ${policy}`);
        await signIn(dana, nginx.base, `dana-${suffix}`);
        await dana.getByTestId('account-name').fill('Under CSP');
        await dana.getByTestId('account-balance').fill('7');
        await dana.getByTestId('create-account').click();
        await until('snapshots.generated through nginx', async () =>
          (await dana.locator('[data-event-type="snapshots.generated"]').count()) === 1);
        if (refused.length) throw new Error(`CSP refused: ${refused.join(' | ')}`);
        const streams = urls.filter((url) => url.includes('/api/events'));
        if (!streams.length || !streams.every((url) => /[?&]ticket=[0-9a-f]{32}/.test(url))) {
          throw new Error(`streams not opened with a ticket: ${streams.join(', ')}`);
        }
        const leaked = urls.filter((url) => /token=|eyJ/.test(url));
        if (leaked.length) throw new Error(`a credential in a URL: ${leaked.join(', ')}`);
        await dana.screenshot({ path: join(SHOTS, '5-through-nginx-under-csp.png'), fullPage: true });
      } finally {
        await context.close().catch(() => {});
        await stop(nginx.child);
      }
    });

    await test('through nginx: two users in one room see each other\'s messages live, and a user without the room is told so', async () => {
      const nginx = await startNginx([a, b]);
      const contexts = [];
      const pageOf = async (who) => {
        const context = await browser.newContext({ viewport: { width: 1200, height: 900 } });
        contexts.push(context);
        const p = await context.newPage();
        p.setDefaultTimeout(WAIT_MS);
        p.on('pageerror', (error) => console.log(`[${who} page] ${error.message}`));
        return p;
      };
      const room = `lobby-${suffix}`;
      const topic = `room:${room}`;
      const joinRoom = async (p) => {
        await p.getByTestId('room-name').fill(room);
        await p.getByTestId('join-room').click();
      };
      // What a page's room shows, oldest first: "<publisher>: <text>".
      const said = (p) => p.$$eval('[data-testid="room-messages"] li', (items) =>
        items.map((li) => `${li.querySelector('.who').textContent}: ${li.querySelector('.text').textContent}`));
      try {
        const kim = `kim-${suffix}`;
        const lee = `lee-${suffix}`;
        const [kimPage, leePage] = [await pageOf('kim'), await pageOf('lee')];
        await signIn(kimPage, nginx.base, kim);
        await signIn(leePage, nginx.base, lee);
        for (const p of [kimPage, leePage]) {
          await joinRoom(p);
          // New topics start live: post once the stream carries the room.
          await until('the stream to carry the room', async () =>
            (await p.getByTestId('room-status').getAttribute('data-joined')) === 'true');
        }
        await kimPage.getByTestId('room-message').fill('hello from kim');
        await kimPage.getByTestId('send-message').click();
        await until("kim's message in both rooms", async () =>
          (await said(leePage)).includes(`${kim}: hello from kim`) && (await said(kimPage)).includes(`${kim}: hello from kim`));
        await leePage.getByTestId('room-message').fill('hi kim');
        await leePage.getByTestId('send-message').click();
        const both = JSON.stringify([`${kim}: hello from kim`, `${lee}: hi kim`]);
        for (const p of [kimPage, leePage]) {
          await until('both messages, in order, once', async () => JSON.stringify(await said(p)) === both);
        }
        // Room messages are not the user's own events: the log stays as it was.
        if ((await logCount(kimPage)) !== 0) throw new Error('room messages in the event log');
        await kimPage.screenshot({ path: join(SHOTS, '12a-room-kim.png'), fullPage: true });
        await leePage.screenshot({ path: join(SHOTS, '12b-room-lee.png'), fullPage: true });

        // A user whose token allows another room only.
        const max = `max-${suffix}`;
        const maxPage = await pageOf('max');
        const tickets = [];
        maxPage.on('request', (request) => { if (request.url().includes('/api/stream-tickets')) tickets.push(request.postData()); });
        await signIn(maxPage, nginx.base, max, { rooms: 'room:elsewhere' });
        await joinRoom(maxPage);
        await until('the refusal on the page', async () =>
          (await maxPage.getByTestId('room-error').textContent()) === `You are not allowed in ${topic}`);
        if ((await maxPage.getByTestId('room-messages').count()) !== 0) throw new Error('a refused room shows messages');
        // Refused once, not retried: the user's own stream goes on without the room (a
        // follow-up ticket without it), and nothing is asked after that.
        await until('the follow-up ticket without the room', async () => {
          const refused = tickets.findIndex((body) => body?.includes(topic));
          return refused >= 0 && tickets.length > refused + 1;
        });
        const asked = tickets.length;
        await sleep(1500);
        if (tickets.length !== asked) throw new Error(`tickets asked again after the refusal: ${tickets.slice(asked).join(', ')}`);
        if (tickets.filter((body) => body?.includes(topic)).length !== 1) throw new Error(`the room asked for more than once: ${tickets.join(', ')}`);
        if ((await maxPage.getByTestId('badge').getAttribute('data-state')) !== 'open') throw new Error('the stream did not stay open');
        await publish(a.base, max, 'notifications.sent', { text: 'still here' });
        await until("max's own event", async () =>
          (await maxPage.locator('[data-event-type="notifications.sent"]').count()) === 1);
        await maxPage.screenshot({ path: join(SHOTS, '12c-room-refused.png'), fullPage: true });
      } finally {
        for (const context of contexts) await context.close().catch(() => {});
        await stop(nginx.child);
      }
    });

    await test('through nginx: two users in one room each see the other online, and one sees the other leave when their browser closes', async () => {
      const nginx = await startNginx([a, b]);
      const contexts = [];
      const pageOf = async (who) => {
        const context = await browser.newContext({ viewport: { width: 1200, height: 900 } });
        contexts.push(context);
        const p = await context.newPage();
        p.setDefaultTimeout(WAIT_MS);
        p.on('pageerror', (error) => console.log(`[${who} page] ${error.message}`));
        return { context, p };
      };
      const room = `online-${suffix}`;
      // Who a page's room shows online (sorted), its count, and who it marks as the user.
      const online = (p) => p.evaluate(() => ({
        users: [...document.querySelectorAll('[data-testid="online-users"] li')].map((li) => li.dataset.user).sort(),
        count: document.querySelector('[data-testid="online-count"]')?.textContent,
        me: [...document.querySelectorAll('[data-testid="online-users"] li.me')].map((li) => li.dataset.user),
      }));
      const shows = async (p, users) => {
        const seen = await online(p);
        return JSON.stringify(seen.users) === JSON.stringify([...users].sort()) && seen.count === String(users.length);
      };
      const inRoom = async (p) => {
        await p.getByTestId('room-name').fill(room);
        await p.getByTestId('join-room').click();
        await until(`the stream to carry room:${room}`, async () =>
          (await p.getByTestId('room-status').getAttribute('data-joined')) === 'true');
      };
      try {
        const { p: alicePage } = await pageOf('alice');
        const { context: bobContext, p: bobPage } = await pageOf('bob');
        await signIn(alicePage, nginx.base, alice);
        await inRoom(alicePage);
        await until('alice to see herself alone online', () => shows(alicePage, [alice]));
        await signIn(bobPage, nginx.base, bob);
        await inRoom(bobPage);
        // Bob's arrival reaches alice as an event; bob's page asks who is there.
        await until('each to see the other online', async () =>
          (await shows(alicePage, [alice, bob])) && (await shows(bobPage, [alice, bob])));
        for (const [p, me] of [[alicePage, alice], [bobPage, bob]]) {
          const marked = (await online(p)).me;
          if (JSON.stringify(marked) !== JSON.stringify([me])) throw new Error(`${me}'s page marks ${marked.join(', ') || 'nobody'} as the user`);
        }
        if ((await alicePage.getByTestId('online-error').count()) !== 0) throw new Error('an error beside the online list');
        await alicePage.screenshot({ path: join(SHOTS, '17a-online-alice.png'), fullPage: true });
        await bobPage.screenshot({ path: join(SHOTS, '17b-online-bob.png'), fullPage: true });

        // Bob closes his browser: he leaves once the grace window (2 s, for a reload) is over.
        const closedAt = Date.now();
        await bobContext.close();
        await until("bob gone from alice's list", () => shows(alicePage, [alice]), 10_000);
        const took = Date.now() - closedAt;
        if (took < 1_800) throw new Error(`bob left ${took} ms after closing, within the grace window`);
        console.log(`     bob left alice's list ${took} ms after his browser closed`);
        await alicePage.screenshot({ path: join(SHOTS, '17c-online-bob-left.png'), fullPage: true });
      } finally {
        for (const context of contexts) await context.close().catch(() => {});
        await stop(nginx.child);
      }
    });

    await test('a form error (empty name) is shown and nothing is created', async () => {
      await page.getByTestId('account-name').fill('');
      await page.getByTestId('account-balance').fill('5');
      await page.getByTestId('create-account').click();
      await until('the inline error', async () =>
        /name/i.test(await page.getByTestId('form-error').textContent()));
      const { json: token } = await api(a.base, '/api/auth/token', { body: { userId: alice } });
      const { json: accounts } = await api(a.base, '/api/accounts', { token: token.token });
      if (accounts.length !== 2) throw new Error(`expected 2 accounts, found ${accounts.length}`);
      if ((await page.getByTestId('accounts').locator('li').count()) !== 2) throw new Error('the page lists a third account');
      await page.screenshot({ path: join(SHOTS, '4-form-error.png'), fullPage: true });
    });

    await test('an event of a type the page never heard of appears, opens to show its data, and the filter finds it', async () => {
      await publish(a.base, alice, 'inventory.restocked', { sku: 'tea-42', count: 7 });
      const row = page.locator('[data-event-type="inventory.restocked"]');
      await until('the new type in the log', async () => (await row.count()) === 1);
      await row.locator('tr.summary').click();
      await until('its data, as published', async () =>
        (await row.getByTestId('event-data').textContent()) === '{"sku":"tea-42","count":7}');
      await page.getByTestId('event-filter').fill('inventory');
      await until('the filter keeps only it', async () =>
        (await page.locator('tbody.event').count()) === 1);
      await page.screenshot({ path: join(SHOTS, '5-any-event-type.png'), fullPage: true });
      await page.getByTestId('event-filter').fill('');
      await until('the filter cleared', async () =>
        (await page.locator('tbody.event').count()) > 1);
    });

    await test('offline then online: the badge follows, and what was published meanwhile arrives', async () => {
      const before = await logCount(page);
      await aliceContext.setOffline(true);
      await until('the badge to say offline', async () =>
        (await page.getByTestId('badge').getAttribute('data-state')) === 'offline');
      await page.screenshot({ path: join(SHOTS, '6a-offline.png'), fullPage: true });
      await publish(a.base, alice, 'orders.shipped', { orderId: 43 });
      await aliceContext.setOffline(false);
      await until('the badge to show open again', async () =>
        (await page.getByTestId('badge').getAttribute('data-state')) === 'open');
      await until('the event published while offline', async () => (await logCount(page)) === before + 1);
      await new Promise((r) => setTimeout(r, 300));
      if ((await logCount(page)) !== before + 1) throw new Error('an event was shown twice');
    });

    await test('three tabs of one user share one stream; closing or freezing its holder hands it over with no gap and no duplicate', async () => {
      const { shared, context, others, after, total, showsAll } = await tabsShareOneStream(`fay-${suffix}`, { shots: '8' });
      const user = `fay-${suffix}`;
      try {
        // A holder whose page is frozen (a background tab the browser suspends) hands the
        // stream on. Headless Chromium does not freeze pages through CDP, so the page
        // lifecycle's own events are dispatched.
        const [frozen, awake] = after.indexOf('this tab') === 0 ? others : [others[1], others[0]];
        await frozen.evaluate(() => document.dispatchEvent(new Event('freeze')));
        await until('the awake tab to hold the stream', async () =>
          (await awake.getByTestId('stream-holder').getAttribute('data-holder')) === 'this tab');
        for (let n = total + 1; n <= total + 5; n++) await publish(shared.base, user, 'tabs.tick', { n });
        await until('the awake tab to show what was published meanwhile', () => showsAll(awake, total + 5));
        await until('the frozen tab\'s stream to be gone', async () =>
          (await metric(shared.base, 'sse_streams_open')) === 1);
        await frozen.evaluate(() => document.dispatchEvent(new Event('resume')));
        await until('the resumed tab to follow the awake one', async () =>
          (await frozen.getByTestId('stream-holder').getAttribute('data-holder')) === 'another tab');
        await publish(shared.base, user, 'tabs.tick', { n: total + 6 });
        for (const tab of others) await until('every event once in both tabs', () => showsAll(tab, total + 6));
      } finally {
        await context.close().catch(() => {});
        await stop(shared.child);
      }
    });

    await test('without Web Locks (plain http away from localhost) the tabs elect a holder over their channel, with the same guarantees', async () => {
      const { shared, context } = await tabsShareOneStream(`gus-${suffix}`, { withoutLocks: true, shots: '9' });
      await context.close().catch(() => {});
      await stop(shared.child);
    });

    await test('two tabs in different rooms share one stream carrying both; each shows its own room; a tab changing rooms costs the other no message', async () => {
      const { shared, tabs, say, texts, inRoom, done } = await roomTabs(`oz-${suffix}`, 'backend-rooms');
      const [first, second] = tabs;
      const [roomA, roomB, roomC] = ['a', 'b', 'c'].map((r) => `${r}-${suffix}`);
      try {
        await inRoom(first, roomA);
        await inRoom(second, roomB);
        await until('the server to hold one stream for both tabs', async () =>
          (await metric(shared.base, 'sse_streams_open')) === 1);
        await say(roomA, 'to a');
        await say(roomB, 'to b');
        // The page puts in its room whatever topic's event the hook hands it: what each
        // shows is the hook's own filtering.
        await until('each tab to show its own room', async () =>
          JSON.stringify(await texts(first)) === '["to a"]' && JSON.stringify(await texts(second)) === '["to b"]');

        // The second tab moves to room c while room a keeps talking, until the stream
        // carries room c and ten messages more: the stream is reopened for the new union
        // from its last id, and the first tab misses nothing.
        for (const tab of tabs) await recordStates(tab);
        let moved = false;
        let sent = 0;
        const sending = (async () => {
          for (let after = 0; after < 10; after += moved ? 1 : 0) {
            sent += 1;
            await say(roomA, `a${sent}`);
            await sleep(25);
          }
        })();
        await until('room a to be mid-conversation', async () => (await texts(first)).length >= 8);
        await inRoom(second, roomC);
        moved = true;
        await sending;
        const expected = JSON.stringify(['to a', ...Array.from({ length: sent }, (_, i) => `a${i + 1}`)]);
        await until('every message of room a once, in order, in the first tab', async () =>
          JSON.stringify(await texts(first)) === expected);
        await say(roomC, 'to c');
        await until('room c in the second tab', async () => JSON.stringify(await texts(second)) === '["to c"]');
        await sleep(300);
        if (JSON.stringify(await texts(first)) !== expected) throw new Error('room a shown twice or out of order');
        await until('the server to hold one stream', async () =>
          (await metric(shared.base, 'sse_streams_open')) === 1);
        // While the stream followed the new topics, the badge said so.
        for (const tab of tabs) {
          const states = await tab.evaluate(() => window.badgeStates);
          if (!states.includes('reconnecting') || states.at(-1) !== 'open') {
            throw new Error(`the badge went ${states.join(' → ')} across the change of rooms`);
          }
        }
        await first.screenshot({ path: join(SHOTS, '13-rooms-shared-stream.png'), fullPage: true });
      } finally {
        await done();
      }
    });

    await test('two tabs of one user join the same room: both are told they are in, and both see its messages', async () => {
      const { shared, tabs: [first, second], say, texts, inRoom, done } = await roomTabs(`pia-${suffix}`, 'backend-same-room');
      const room = `same-${suffix}`;
      try {
        await inRoom(first, room);
        // The stream carries the room already: joining it changes nothing on the stream,
        // and the second tab learns it from the holder.
        await inRoom(second, room);
        await until('the server to hold one stream', async () =>
          (await metric(shared.base, 'sse_streams_open')) === 1);
        await say(room, 'to both');
        for (const tab of [first, second]) {
          await until('the message in both tabs', async () => JSON.stringify(await texts(tab)) === '["to both"]');
        }
        await second.screenshot({ path: join(SHOTS, '14-same-room-two-tabs.png'), fullPage: true });
      } finally {
        await done();
      }
    });

    await test('the holder tab crashes: the tab that takes over forgets its room, and the stream carries the rooms still wanted', async () => {
      const { shared, context, tabs, say, texts, inRoom, carried, done } = await roomTabs(`quin-${suffix}`, 'backend-crash');
      const [roomA, roomB] = ['a', 'b'].map((r) => `crash-${r}-${suffix}`);
      try {
        await inRoom(tabs[0], roomA);
        await inRoom(tabs[1], roomB);
        await until('the stream to carry both rooms', async () =>
          (await carried(tabs[1])) === [`room:${roomA}`, `room:${roomB}`].sort().join(' '));
        const holders = await Promise.all(tabs.map((tab) => tab.getByTestId('stream-holder').getAttribute('data-holder')));
        const holder = tabs[holders.indexOf('this tab')];
        const other = tabs.find((tab) => tab !== holder);
        if (!holder || !other) throw new Error(`no single holder: ${holders.join(', ')}`);
        const [gone, kept] = holder === tabs[0] ? [roomA, roomB] : [roomB, roomA];
        // A crash: no pagehide, no goodbye on the channel.
        const cdp = await context.newCDPSession(holder);
        const crashed = holder.waitForEvent('crash');
        // Never answered: the page is gone.
        cdp.send('Page.crash').catch(() => {});
        await crashed;
        await until('the other tab to take the stream', async () =>
          (await other.getByTestId('stream-holder').getAttribute('data-holder')) === 'this tab');
        await until(`the stream to carry room:${kept} alone`, async () => (await carried(other)) === `room:${kept}`);
        await say(gone, 'to nobody');
        await say(kept, 'still here');
        await until('the kept room to go on', async () => (await texts(other)).includes('still here'));
        await until('the server to hold one stream', async () =>
          (await metric(shared.base, 'sse_streams_open')) === 1);
        await other.screenshot({ path: join(SHOTS, '15-holder-crashed.png'), fullPage: true });
      } finally {
        await done();
      }
    });

    await test('tabs of one user with different grants do not share a stream: the narrower is refused a room the broader may have', async () => {
      const { shared, context, tabs: [broad], inRoom, done } = await roomTabs(`uma-${suffix}`, 'backend-grants', { count: 1 });
      const room = `grants-${suffix}`;
      try {
        const narrow = await context.newPage();
        narrow.setDefaultTimeout(WAIT_MS);
        await signIn(narrow, shared.base, `uma-${suffix}`, { rooms: 'room:elsewhere' });
        await inRoom(broad, room);
        await narrow.getByTestId('room-name').fill(room);
        await narrow.getByTestId('join-room').click();
        await until('the refusal in the narrower tab', async () =>
          (await narrow.getByTestId('room-error').textContent()) === `You are not allowed in room:${room}`);
        if ((await narrow.getByTestId('room-messages').count()) !== 0) throw new Error('the narrower tab shows the room');
        await until('a stream for each grant', async () => (await metric(shared.base, 'sse_streams_open')) === 2);
        for (const tab of [broad, narrow]) {
          if ((await tab.getByTestId('stream-holder').getAttribute('data-holder')) !== 'this tab') {
            throw new Error('a tab shown the stream of a token with other grants');
          }
        }
      } finally {
        await done();
      }
    });

    await test("a room's resync is shown in the room, asks again who is online, and does not refetch the user's state", async () => {
      // Room histories of 3 events: a stream down while more are published misses some.
      const env = { HISTORY_MAX_LEN: '3' };
      const { shared, tabs: [tab], say, texts, inRoom, done } = await roomTabs(`rex-${suffix}`, 'backend-short-history', { count: 1, env });
      const other = await startBackend('backend-short-history-2', await freePort(), redis.url, env);
      const room = `gap-${suffix}`;
      // The page's requests for who is in the room.
      const asked = [];
      tab.on('requestfinished', async (request) => {
        if (request.url().endsWith(`/api/topics/room:${room}/presence`)) asked.push((await request.response())?.status());
      });
      try {
        await inRoom(tab, room);
        await until('who is online, asked once the stream carries the room', async () =>
          JSON.stringify(asked) === '[200]' && (await tab.getByTestId('room-online').getAttribute('data-known')) === 'true');
        await say(room, 'm0');
        await until('the first message', async () => JSON.stringify(await texts(tab)) === '["m0"]');
        const before = await logCount(tab);
        await stop(shared.child, 'SIGKILL');
        for (let n = 1; n <= 8; n++) {
          const sent = await api(other.base, '/api/publish', {
            token: PUBLISH_KEY, body: { topic: `room:${room}`, eventType: 'chat.message', data: { text: `m${n}` } },
          });
          if (sent.status !== 202) throw new Error(`publish answered ${sent.status}`);
        }
        shared.child = (await startBackend('backend-short-history', Number(new URL(shared.base).port), redis.url, env)).child;
        await until("the room's resync in the room", async () =>
          (await tab.getByTestId('room-resync').count()) === 1, 25_000);
        await until('the room to show what its history still had', async () => (await texts(tab)).includes('m8'));
        await until('who is online, asked again after the resync', async () => asked.length >= 2 && asked.at(-1) === 200);
        if ((await tab.getByTestId('resync').count()) !== 0) throw new Error("the user's state was said to be refetched");
        if ((await logCount(tab)) !== before) throw new Error("the room's resync went to the user's log");
        await tab.screenshot({ path: join(SHOTS, '16-room-resync.png'), fullPage: true });
      } finally {
        await stop(other.child);
        await done();
      }
    });

    await test('a credential that expires is renewed through its source and nothing is missed', async () => {
      // Tokens of this instance live 3 s: the stream ends with stream.expired, and the page
      // asks its credential source for a fresh token and resumes from its last id.
      const short = await startBackend('backend-short', await freePort(), redis.url, { TOKEN_TTL_SECS: '3' });
      const context = await browser.newContext();
      const erin = await context.newPage();
      erin.setDefaultTimeout(WAIT_MS);
      const user = `erin-${suffix}`;
      const send = (n) => publish(short.base, user, 'orders.shipped', { orderId: n });
      const shipped = async () => erin.locator('[data-event-type="orders.shipped"]').count();
      try {
        await signIn(erin, short.base, user);
        await send(1);
        await until('the first event', async () => (await shipped()) === 1);
        await until('the stream to expire', async () =>
          (await erin.locator('[data-event-type="stream.expired"]').count()) >= 1, 10_000);
        await send(2);
        await until('the badge open again with a fresh token', async () =>
          (await erin.getByTestId('badge').getAttribute('data-state')) === 'open');
        await until('the event published around the expiry', async () => (await shipped()) === 2);
        await send(3);
        await until('the next one, live', async () => (await shipped()) === 3);
        await erin.screenshot({ path: join(SHOTS, '7-credential-renewed.png'), fullPage: true });
      } finally {
        await context.close().catch(() => {});
        await stop(short.child);
      }
    });

    await test('signed in, the page says so once and offers Disconnect instead of Connect; Disconnect closes the stream and brings the form back', async () => {
      const context = await browser.newContext();
      const ivy = await context.newPage();
      ivy.setDefaultTimeout(WAIT_MS);
      const user = `ivy-${suffix}`;
      const signedIn = () => ivy.evaluate(() => document.body.innerText.split('Signed in as').length - 1);
      // The browser's side of a stream's end (the server sees it only at its next write).
      const ended = [];
      ivy.on('requestfailed', (request) => { if (request.url().includes('/api/events')) ended.push(request.failure()?.errorText); });
      try {
        await signIn(ivy, a.base, user);
        if ((await signedIn()) !== 1) throw new Error(`"Signed in as" shown ${await signedIn()} times`);
        if ((await ivy.getByTestId('current-user').textContent()) !== user) throw new Error('not the user signed in');
        if ((await ivy.getByTestId('connect').count()) !== 0) throw new Error('the Connect button is still there');
        await ivy.screenshot({ path: join(SHOTS, '10-signed-in.png'), fullPage: true });
        const endedBefore = ended.length;
        await ivy.getByTestId('disconnect').click();
        await until('the form back, with her id in it', async () =>
          (await ivy.getByTestId('connect').count()) === 1 && (await ivy.getByTestId('user-id').inputValue()) === user);
        if ((await signedIn()) !== 0) throw new Error('"Signed in as" still shown');
        if ((await ivy.getByTestId('badge').count()) !== 0) throw new Error('the stream card is still shown');
        await until('the page to close her stream', async () => ended.length === endedBefore + 1);
        await ivy.getByTestId('connect').click();
        await until('her stream open again', async () =>
          (await ivy.getByTestId('badge').getAttribute('data-state')) === 'open');
      } finally {
        await context.close().catch(() => {});
      }
    });

    await test('`just dev`: nginx serves the release build with no console error, the page signs in once, and a SIGINT to just alone stops every process', async () => {
      const taken = await openPorts(DEV_PORTS);
      if (taken.length) throw new Error(`the ports of just dev are taken (another just dev running?): ${taken.join(', ')}`);
      const dev = startJustDev();
      const context = await browser.newContext({ viewport: { width: 1200, height: 900 } });
      try {
        // Up once every port answers: trunk serve's (the last) only after its first build.
        const up = async () => (await openPorts(DEV_PORTS)).length === Object.keys(DEV_PORTS).length
          && (await fetch('http://127.0.0.1:3001/').then((r) => r.ok, () => false))
          && (await fetch('http://127.0.0.1:8080/').then((r) => r.ok, () => false));
        const startedAt = Date.now();
        while (!(await up())) {
          if (dev.state.exit) throw new Error(`just dev ended (${dev.state.exit}) before it was up${dev.tail()}`);
          if (Date.now() - startedAt > DEV_START_MS) {
            throw new Error(`just dev not up within ${DEV_START_MS / 60_000} min; listening: ${(await openPorts(DEV_PORTS)).join(', ') || 'nothing'}${dev.tail()}`);
          }
          await sleep(1000);
        }
        console.log(`     just dev up in ${Math.round((Date.now() - startedAt) / 1000)} s`);

        const hana = await context.newPage();
        hana.setDefaultTimeout(WAIT_MS);
        const errors = [];
        hana.on('console', (message) => { if (message.type() === 'error') errors.push(message.text()); });
        hana.on('pageerror', (error) => errors.push(error.message));
        await signIn(hana, 'http://127.0.0.1:8080', `hana-${suffix}`);
        // Anything the page loaded (trunk serve's auto-reload script, say) has had its say.
        await sleep(1000);
        if (errors.length) throw new Error(`console errors through nginx: ${errors.join(' | ')}`);
        const signedIn = await hana.evaluate(() => document.body.innerText.split('Signed in as').length - 1);
        if (signedIn !== 1) throw new Error(`"Signed in as" shown ${signedIn} times`);
        if ((await hana.getByRole('button', { name: 'Connect', exact: true }).count()) !== 0) {
          throw new Error('the Connect button is still there once connected');
        }
        await hana.screenshot({ path: join(SHOTS, '11-just-dev.png'), fullPage: true });

        // As an IDE's stop button or a supervisor does: just alone, not its process group.
        const stoppedAt = Date.now();
        process.kill(dev.child.pid, 'SIGINT');
        const left = async () => ({ ports: await openPorts(DEV_PORTS), processes: sessionProcesses(dev.child.pid) });
        let now = await left();
        while (now.ports.length || now.processes.length || !dev.state.exit) {
          if (Date.now() - stoppedAt > DEV_STOP_MS) {
            throw new Error(`${DEV_STOP_MS / 1000} s after a SIGINT to just: ports still open: ${now.ports.join(', ') || 'none'}; `
              + `processes left: ${now.processes.join(', ') || 'none'}; just ${dev.state.exit ? `ended (${dev.state.exit})` : 'still running'}${dev.tail()}`);
          }
          await sleep(250);
          now = await left();
        }
        console.log(`     everything stopped ${Date.now() - stoppedAt} ms after the SIGINT`);
      } finally {
        await context.close().catch(() => {});
        killGroups();
      }
    });
  } finally {
    await browser.close().catch(() => {});
    for (const child of [...children]) await stop(child);
    killGroups();
  }

  const failed = results.filter((r) => !r.ok).length;
  console.log(`screenshots: ${SHOTS}`);
  console.log(`${results.length - failed} passed, ${failed} failed`);
  return failed === 0;
}

const deadline = setTimeout(async () => {
  console.log(`e2e: over ${RUN_DEADLINE_MS} ms; stopping`);
  for (const child of [...children]) child.kill('SIGKILL');
  killGroups();
  process.exit(1);
}, RUN_DEADLINE_MS);

main()
  .then((ok) => {
    clearTimeout(deadline);
    process.exit(ok ? 0 : 1);
  })
  .catch(async (error) => {
    console.error(`e2e: ${error.stack ?? error}`);
    for (const child of [...children]) child.kill('SIGKILL');
    killGroups();
    process.exit(1);
  });
