// End-to-end test of the keygate web console in real headless Chromium.
//
// It starts everything itself: a tiny upstream HTTP server, a keygate config in a
// temp dir, the bootstrap admin key (CLI), `keygate serve`; then drives Debian's
// /usr/bin/chromium through playwright-core: sign in, create a key, read it once,
// use it against the proxy, pause/resume, revoke it in the console, and check the
// proxy refuses it; create a key with MCP tools, MCP read-only, allowed IPs and a
// rate limit (client-side checks first) and check the console shows them; then
// pause its MCP access and clear its rate limit in the Access dialog (one PATCH).
// Screenshots go to test-artifacts/console/.
//
// Run: node tests/browser/console.test.mjs   (scripts/browser-test.sh does the setup)
// Env: KEYGATE_BIN (default $CARGO_TARGET_DIR/debug/keygate or target/debug/keygate),
//      CHROMIUM (default /usr/bin/chromium).

import { spawn, execFileSync } from 'node:child_process';
import fs from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const ROOT = path.resolve(HERE, '..', '..');
const KEYGATE_BIN =
  process.env.KEYGATE_BIN ||
  path.join(process.env.CARGO_TARGET_DIR || path.join(ROOT, 'target'), 'debug', 'keygate');
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const ARTIFACTS = path.join(ROOT, 'test-artifacts', 'console');
const WATCHDOG_MS = 180_000;

// ---- bookkeeping: everything started here is stopped here, also on failure ----

const children = new Set();
const cleanups = [];
let keygateLog = '';
let context = null;
let page = null;
let stepName = 'setup';
const t0 = Date.now();

function log(msg) {
  process.stdout.write(`[${((Date.now() - t0) / 1000).toFixed(1).padStart(5)}s] ${msg}\n`);
}

class Failure extends Error {}

function assert(cond, message) {
  if (!cond) throw new Failure(message);
}

function assertEq(actual, expected, what) {
  if (actual !== expected) {
    throw new Failure(`${what}: expected ${JSON.stringify(expected)}, got ${JSON.stringify(actual)}`);
  }
}

async function step(name, fn) {
  stepName = name;
  const started = Date.now();
  const result = await fn();
  log(`ok   ${name} (${Date.now() - started} ms)`);
  return result;
}

function killChildrenNow() {
  for (const child of children) {
    if (child.exitCode === null && child.signalCode === null) {
      try {
        child.kill('SIGKILL');
      } catch {
        /* already gone */
      }
    }
  }
}

process.on('exit', killChildrenNow);
for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP']) {
  process.on(sig, () => {
    log(`interrupted by ${sig}`);
    killChildrenNow();
    process.exit(130);
  });
}

async function cleanup() {
  for (const fn of cleanups.reverse()) {
    try {
      await fn();
    } catch (e) {
      log(`cleanup: ${e.message}`);
    }
  }
  cleanups.length = 0;
}

// ---- helpers ----------------------------------------------------------------

function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.unref();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function waitFor(what, fn, timeoutMs = 30_000) {
  const deadline = Date.now() + timeoutMs;
  let last;
  while (Date.now() < deadline) {
    try {
      const v = await fn();
      if (v) return v;
    } catch (e) {
      last = e;
    }
    await sleep(100);
  }
  throw new Failure(`timed out after ${timeoutMs} ms waiting for ${what}${last ? ` (last error: ${last.message})` : ''}`);
}

async function httpJson(method, url, { headers = {}, body } = {}) {
  const res = await fetch(url, {
    method,
    headers: { ...headers, ...(body !== undefined ? { 'content-type': 'application/json' } : {}) },
    body: body !== undefined ? JSON.stringify(body) : undefined,
  });
  const text = await res.text();
  let json = null;
  try {
    json = text ? JSON.parse(text) : null;
  } catch {
    json = null;
  }
  return { status: res.status, json, text, headers: res.headers };
}

// Full-page shots of the page; viewport shots while a modal dialog is open (its
// backdrop covers the viewport only).
async function shot(name, { dialog = false } = {}) {
  const file = path.join(ARTIFACTS, name);
  await page.screenshot({ path: file, fullPage: !dialog });
  log(`     screenshot ${path.relative(ROOT, file)}`);
}

// Start a keygate subprocess that must keep running; its output goes to keygateLog.
function startKeygate(args) {
  const child = spawn(KEYGATE_BIN, args, { stdio: ['ignore', 'pipe', 'pipe'], cwd: ROOT });
  children.add(child);
  const collect = (chunk) => {
    keygateLog += chunk.toString();
  };
  child.stdout.on('data', collect);
  child.stderr.on('data', collect);
  child.on('exit', (code, signal) => {
    keygateLog += `\n[keygate exited: code=${code} signal=${signal}]\n`;
  });
  cleanups.push(
    () =>
      new Promise((resolve) => {
        if (child.exitCode !== null || child.signalCode !== null) return resolve();
        const timer = setTimeout(() => child.kill('SIGKILL'), 5000);
        child.once('exit', () => {
          clearTimeout(timer);
          children.delete(child);
          resolve();
        });
        child.kill('SIGTERM');
      })
  );
  return child;
}

// ---- the test ---------------------------------------------------------------

async function main() {
  assert(fs.existsSync(KEYGATE_BIN), `keygate binary not found at ${KEYGATE_BIN} (build it, or set KEYGATE_BIN)`);
  assert(fs.existsSync(CHROMIUM), `Chromium not found at ${CHROMIUM} (apt-get install chromium)`);

  fs.rmSync(ARTIFACTS, { recursive: true, force: true });
  fs.mkdirSync(ARTIFACTS, { recursive: true });
  // Keep screenshots out of git.
  fs.writeFileSync(path.join(ROOT, 'test-artifacts', '.gitignore'), '*\n');

  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'keygate-browser-'));
  cleanups.push(() => fs.rmSync(tmp, { recursive: true, force: true }));

  // Upstream: answers 200 JSON and remembers what keygate forwarded.
  const upstreamSeen = [];
  const upstream = http.createServer((req, res) => {
    upstreamSeen.push({ method: req.method, url: req.url, headers: req.headers });
    const body = JSON.stringify({ ok: true, path: req.url, org: req.headers['x-keygate-org-id'] || null });
    res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) });
    res.end(body);
  });
  await new Promise((resolve) => upstream.listen(0, '127.0.0.1', resolve));
  cleanups.push(() => new Promise((resolve) => upstream.close(() => resolve())));
  upstream.unref();
  const upstreamPort = upstream.address().port;

  const proxyPort = await freePort();
  const adminPort = await freePort();
  const configPath = path.join(tmp, 'keygate.toml');
  fs.writeFileSync(
    configPath,
    `# written by tests/browser/console.test.mjs
[proxy]
listen = "127.0.0.1:${proxyPort}"
upstream = "http://127.0.0.1:${upstreamPort}"
workers = 1

[admin]
listen = "127.0.0.1:${adminPort}"

[store]
url = "sqlite://${path.join(tmp, 'keygate.db')}"
flush_interval = "200ms"

[quota]
limit = 1000

[[route]]
name = "items"
methods = ["GET"]
path = "/v1/orgs/{org}/items/**"
scopes = ["read"]
org_param = "org"
`
  );

  const adminKey = await step('bootstrap admin key with the CLI', () => {
    const out = execFileSync(
      KEYGATE_BIN,
      ['keys', 'create', '--config', configPath, '--name', 'admin', '--scopes', 'admin', '--actor', 'ops', '--json'],
      { cwd: ROOT, encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] }
    );
    const created = JSON.parse(out);
    assert(typeof created.key === 'string' && created.key.startsWith('kg_live_'), `no admin key in CLI output: ${out}`);
    return created.key;
  });

  const adminUrl = `http://127.0.0.1:${adminPort}`;
  const proxyUrl = `http://127.0.0.1:${proxyPort}`;
  const admin = { authorization: `Bearer ${adminKey}` };

  await step('start keygate serve and wait for both ports', async () => {
    const child = startKeygate(['serve', '--config', configPath]);
    await waitFor('the admin listener (/healthz)', async () => {
      assert(child.exitCode === null, `keygate serve exited early:\n${keygateLog}`);
      return (await httpJson('GET', `${adminUrl}/healthz`)).status === 200;
    });
    await waitFor('the proxy listener', async () => {
      const r = await httpJson('GET', `${proxyUrl}/v1/orgs/acme/items/1`);
      return r.status === 401;
    });
  });

  // A few keys so the table looks like a real deployment.
  const seeded = await step('seed keys through the admin API', async () => {
    const make = async (body) => {
      const r = await httpJson('POST', `${adminUrl}/v1/keys`, { headers: admin, body });
      assertEq(r.status, 201, `POST /v1/keys ${body.name} status (${r.text})`);
      return r.json;
    };
    const legacy = await make({ name: 'legacy-mobile-app', org: 'acme', scopes: ['read'] });
    const analytics = await make({ name: 'analytics-export', org: 'globex', scopes: ['read'] });
    const ci = await make({ name: 'ci-deploy', org: 'acme', scopes: ['read', 'write', 'execute'], quota: 5000 });
    const billing = await make({ name: 'billing-service', org: 'acme', scopes: ['read', 'write'] });
    assertEq((await httpJson('POST', `${adminUrl}/v1/keys/${analytics.id}/pause`, { headers: admin })).status, 200, 'pause seeded key');
    assertEq((await httpJson('DELETE', `${adminUrl}/v1/keys/${legacy.id}`, { headers: admin })).status, 200, 'revoke seeded key');
    const used = await httpJson('GET', `${proxyUrl}/v1/orgs/acme/items/7`, { headers: { authorization: `Bearer ${billing.key}` } });
    assertEq(used.status, 200, 'seeded billing key through the proxy');
    return { billing, ci };
  });

  // ---- browser ----
  const userDataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'keygate-chromium-'));
  cleanups.push(() => fs.rmSync(userDataDir, { recursive: true, force: true }));
  const browserErrors = [];
  const dialogsSeen = [];

  await step('launch headless Chromium', async () => {
    context = await chromium.launchPersistentContext(userDataDir, {
      executablePath: CHROMIUM,
      headless: true,
      args: [
        '--headless',
        '--no-sandbox',
        '--disable-gpu',
        '--disable-quic',
        '--no-first-run',
        '--disable-background-networking',
        '--disable-component-update',
        '--disable-sync',
      ],
      viewport: { width: 1280, height: 900 },
      deviceScaleFactor: 1,
      locale: 'en-GB',
      timezoneId: 'UTC',
      permissions: ['clipboard-read', 'clipboard-write'],
    });
    cleanups.push(() => context.close());
    context.setDefaultTimeout(10_000);
    page = context.pages()[0] || (await context.newPage());
    page.on('pageerror', (e) => browserErrors.push(`page error: ${e.message}`));
    page.on('console', (m) => {
      const text = m.text();
      if (/Content Security Policy|Refused to/i.test(text)) browserErrors.push(`CSP violation: ${text}`);
      else if (m.type() === 'error' && !/Failed to load resource/.test(text)) browserErrors.push(`console error: ${text}`);
    });
    page.on('dialog', (d) => {
      dialogsSeen.push(d.message());
      d.dismiss().catch(() => {});
    });
  });

  const consoleUrl = `${adminUrl}/console`;
  const statusRegion = page.locator('#status');

  await step('open /console: sign-in form with a labelled password field', async () => {
    const resp = await page.goto(consoleUrl);
    assertEq(resp.status(), 200, '/console status');
    const csp = resp.headers()['content-security-policy'] || '';
    assert(csp.includes("default-src 'self'"), `strict CSP expected, got ${JSON.stringify(csp)}`);
    const field = page.getByLabel('Admin key');
    await field.waitFor({ state: 'visible' });
    assertEq(await field.getAttribute('type'), 'password', 'admin key input type');
    assert(await page.getByRole('button', { name: 'Sign in' }).isVisible(), 'Sign in button visible');
    assertEq(await statusRegion.getAttribute('role'), 'status', 'status region role');
    await shot('00-sign-in.png');
  });

  await step('a wrong key is refused with the API message in the status region', async () => {
    await page.getByLabel('Admin key').fill('kg_live_not-a-real-key');
    await page.getByRole('button', { name: 'Sign in' }).click();
    await statusRegion.getByText('Sign-in failed').waitFor();
    const text = await statusRegion.innerText();
    assert(/Sign-in failed: .+/.test(text), `status region text: ${text}`);
    assert(await page.getByLabel('Admin key').isVisible(), 'still on the sign-in form');
    assertEq(await page.evaluate(() => sessionStorage.length), 0, 'nothing stored after a failed sign-in');
  });

  await step('sign in with the admin key', async () => {
    await page.getByLabel('Admin key').fill(adminKey);
    await page.getByLabel('Admin key').press('Enter');
    await page.getByRole('heading', { name: 'API keys' }).waitFor();
    await page.locator('#keys-body tr', { hasText: 'billing-service' }).waitFor();
    assert(!page.url().includes(adminKey), 'the admin key must not be in the URL');
    const storage = await page.evaluate(() => ({
      session: Object.keys(sessionStorage).map((k) => sessionStorage.getItem(k)),
      local: Object.keys(localStorage).map((k) => localStorage.getItem(k)),
      cookies: document.cookie,
    }));
    assert(storage.session.includes(adminKey), 'the admin key is kept in sessionStorage');
    assert(!storage.local.some((v) => v && v.includes(adminKey)), 'the admin key must not be in localStorage');
    assert(!storage.cookies.includes(adminKey), 'the admin key must not be in a cookie');
    assert(!(await page.content()).includes(adminKey), 'the admin key must not stay in the DOM');
    assertEq(await page.locator('#admin-key').inputValue(), '', 'the password field is cleared');
  });

  await step('the key table shows the expected columns, masked prefixes and "never"', async () => {
    const headers = (await page.locator('#keys-table thead th').allInnerTexts()).map((s) => s.trim().toLowerCase());
    const expected = ['name', 'key prefix', 'created by', 'created', 'last used', 'status'];
    assertEq(JSON.stringify(headers.slice(0, 6)), JSON.stringify(expected), 'table columns');
    const ciRow = page.locator('#keys-body tr', { hasText: 'ci-deploy' });
    const ciText = await ciRow.innerText();
    assert(ciText.includes(`${seeded.ci.prefix}\u2026`), `masked prefix in row: ${ciText}`);
    assert(ciText.includes('never'), `"never" for an unused key: ${ciText}`);
    assert(ciText.includes('Active'), `status in row: ${ciText}`);
    assert(ciText.includes('admin'), `created by (the admin key's name) in row: ${ciText}`);
    assert((await page.locator('#keys-body tr', { hasText: 'analytics-export' }).innerText()).includes('Paused'), 'paused key shown as Paused');
    assert((await page.locator('#keys-body tr', { hasText: 'legacy-mobile-app' }).innerText()).includes('Revoked'), 'revoked key shown as Revoked');
    assertEq((await page.locator('#page-info').innerText()).trim(), 'Page 1 of 1', 'page info');
    const own = page.locator('#keys-body tr', { has: page.locator('.self-tag') });
    assertEq(await own.count(), 1, 'rows marked as the signed-in key');
    assertEq((await own.locator('.key-name').innerText()).replace(/\s+you$/, ''), 'admin', 'the signed-in key is marked');
    assert(await page.getByRole('button', { name: 'Previous' }).isDisabled(), 'Previous disabled on the first page');
    assert(await page.getByRole('button', { name: 'Next' }).isDisabled(), 'Next disabled on the last page');
    // last_used_at is written in batches; reload until billing-service shows it.
    await waitFor('billing-service last used time', async () => {
      await page.reload();
      await page.locator('#keys-body tr', { hasText: 'billing-service' }).waitFor();
      return !(await page.locator('#keys-body tr', { hasText: 'billing-service' }).innerText()).includes('never');
    }, 10_000);
    await shot('01-signed-in-table.png');
  });

  const plaintext = await step('create a key in the dialog: shown once with a warning and Copy', async () => {
    await page.getByRole('button', { name: 'Create key' }).click();
    const dialog = page.locator('#create-dialog');
    await dialog.waitFor({ state: 'visible' });
    assertEq(await page.evaluate(() => document.activeElement && document.activeElement.id), 'create-name', 'focus moves into the dialog');
    await dialog.getByLabel('Name').fill('browser-e2e');
    await dialog.getByLabel('Organisation').fill('acme');
    // exact: "MCP read-only" also has "read" in its name.
    assert(await dialog.getByRole('checkbox', { name: 'read', exact: true }).isChecked(), 'read is checked by default');
    assert(!(await dialog.getByRole('checkbox', { name: 'admin', exact: true }).isChecked()), 'admin is not checked by default');
    assert(!(await dialog.getByLabel('MCP read-only').isChecked()), 'MCP read-only is not checked by default');
    assert(!(await dialog.getByLabel('MCP paused').isChecked()), 'MCP paused is not checked by default');
    assertEq(await dialog.getByLabel('Rate limit').getAttribute('placeholder'), '10/s', 'rate limit placeholder');
    await shot('02-create-dialog-form.png', { dialog: true });
    await dialog.getByRole('button', { name: 'Create key' }).click();

    const field = dialog.getByLabel('API key for browser-e2e');
    await field.waitFor({ state: 'visible' });
    const key = await field.inputValue();
    assert(/^kg_live_[0-9A-Za-z]{38}$/.test(key), `plaintext key shape: ${JSON.stringify(key)}`);
    assert(await field.evaluate((e) => e.readOnly), 'the key field is read-only');
    await dialog.getByText("Copy this key now. You won't be able to see it again.").waitFor();
    assert(await dialog.getByRole('heading', { name: 'Key created' }).isVisible(), 'dialog heading says Key created');
    assert((await dialog.innerText()).includes('acme'), 'dialog shows the org');
    // Nothing filled in: open MCP access, any address, the default rate limit.
    assertEq(await dialog.locator('dd[data-fact="mcp"]').innerText(), 'allowed, all tools', 'MCP fact of a default key');
    assertEq(await dialog.locator('dd[data-fact="allowed-ips"]').innerText(), 'any', 'allowed IPs fact of a default key');
    assertEq(await dialog.locator('dd[data-fact="rate-limit"]').innerText(), 'default', 'rate limit fact of a default key');

    await dialog.getByRole('button', { name: 'Copy' }).click();
    await dialog.getByText('Copied to the clipboard.').waitFor();
    const clip = await page.evaluate(() => navigator.clipboard.readText());
    assertEq(clip, key, 'clipboard holds the new key');
    await shot('03-create-dialog-key-once.png', { dialog: true });
    return key;
  });

  await step('Escape closes the dialog and the key is gone from the page', async () => {
    await page.keyboard.press('Escape');
    await page.locator('#create-dialog').waitFor({ state: 'hidden' });
    // The dialog's `close` event (which resets the form) is a task after it hides.
    await page.locator('#created-key').waitFor({ state: 'detached' });
    await page.locator('#keys-body tr', { hasText: 'browser-e2e' }).waitFor();
    const leak = await page.evaluate((secret) => {
      const where = [];
      if (document.documentElement.outerHTML.includes(secret)) where.push('DOM markup');
      if (document.body.innerText.includes(secret)) where.push('page text');
      document.querySelectorAll('input, textarea').forEach((i) => {
        if (i.value.includes(secret)) where.push(`value of #${i.id || i.name || i.tagName}`);
      });
      for (const store of [sessionStorage, localStorage]) {
        for (let i = 0; i < store.length; i++) {
          if ((store.getItem(store.key(i)) || '').includes(secret)) where.push('web storage');
        }
      }
      if (location.href.includes(secret)) where.push('URL');
      return where;
    }, plaintext);
    assertEq(leak.join(', '), '', 'places the closed dialog left the key in');
    assert(!(await page.content()).includes(plaintext), 'page.content() must not contain the key');
    assertEq(await page.locator('#created-key').count(), 0, 'the one-time field is removed');
    const row = await page.locator('#keys-body tr', { hasText: 'browser-e2e' }).innerText();
    assert(row.includes(`${plaintext.slice(0, 16)}\u2026`), `row shows the masked prefix: ${row}`);
    assert(row.includes('acme') && row.includes('read'), `row shows org and scope: ${row}`);
    assert((await statusRegion.innerText()).includes('created'), 'status region confirms the creation');
    await shot('04-table-after-create.png');
  });

  const rowOf = (name) => page.locator('#keys-body tr', { hasText: name });

  await step('the new key works through the proxy (200, identity forwarded)', async () => {
    const r = await httpJson('GET', `${proxyUrl}/v1/orgs/acme/items/42`, { headers: { authorization: `Bearer ${plaintext}` } });
    assertEq(r.status, 200, `proxy status with the new key (${r.text})`);
    assertEq(r.json && r.json.ok, true, 'upstream body');
    const seen = upstreamSeen[upstreamSeen.length - 1];
    assertEq(seen.headers['x-keygate-key-name'], 'browser-e2e', 'X-Keygate-Key-Name upstream');
    assertEq(seen.headers['x-keygate-org-id'], 'acme', 'X-Keygate-Org-Id upstream');
    assertEq(seen.headers.authorization, undefined, 'Authorization is stripped before the upstream');
  });

  await step('Usage dialog shows used / limit and the reset time', async () => {
    await rowOf('browser-e2e').getByRole('button', { name: 'Usage key browser-e2e' }).click();
    const dialog = page.locator('#usage-dialog');
    await dialog.locator('.usage-big').waitFor();
    const text = await dialog.innerText();
    assert(/1\s*\/\s*1,000/.test(text), `used / limit in usage dialog: ${text}`);
    assert(text.includes('Resets'), `reset time in usage dialog: ${text}`);
    assertEq(await dialog.locator('dd[data-fact="mcp"]').innerText(), 'allowed, all tools', 'MCP access in usage dialog');
    assertEq(await dialog.locator('dd[data-fact="allowed-ips"]').innerText(), 'any', 'allowed IPs in usage dialog');
    assertEq(await dialog.locator('dd[data-fact="rate-limit"]').innerText(), 'default', 'rate limit in usage dialog');
    assertEq(await rowOf('browser-e2e').locator('.key-access').count(), 0, 'no access line for a key with default access');
    await shot('05-usage-dialog.png', { dialog: true });
    await dialog.getByRole('button', { name: 'Close' }).click();
    await dialog.waitFor({ state: 'hidden' });
  });

  await step('Pause refuses the key (key_paused), Resume restores it', async () => {
    await rowOf('browser-e2e').getByRole('button', { name: 'Pause key browser-e2e' }).click();
    await rowOf('browser-e2e').getByText('Paused', { exact: true }).waitFor();
    assertEq(await page.evaluate(() => document.activeElement && document.activeElement.textContent), 'Resume', 'focus lands on Resume');
    let r = await httpJson('GET', `${proxyUrl}/v1/orgs/acme/items/42`, { headers: { authorization: `Bearer ${plaintext}` } });
    assertEq(r.status, 401, 'proxy status for a paused key');
    assertEq(r.json && r.json.error && r.json.error.code, 'key_paused', 'error code for a paused key');
    await rowOf('browser-e2e').getByRole('button', { name: 'Resume key browser-e2e' }).click();
    await rowOf('browser-e2e').getByText('Active', { exact: true }).waitFor();
    r = await httpJson('GET', `${proxyUrl}/v1/orgs/acme/items/42`, { headers: { authorization: `Bearer ${plaintext}` } });
    assertEq(r.status, 200, 'proxy status after resume');
  });

  await step('Revoke opens a confirmation naming the key', async () => {
    await rowOf('browser-e2e').getByRole('button', { name: 'Revoke key browser-e2e' }).click();
    const dialog = page.locator('#revoke-dialog');
    await dialog.waitFor({ state: 'visible' });
    const text = await dialog.innerText();
    assert(text.includes('browser-e2e'), `confirmation names the key: ${text}`);
    assert(text.includes(`${plaintext.slice(0, 16)}\u2026`), `confirmation shows the prefix: ${text}`);
    assert(/cannot be undone/i.test(text), `confirmation says it is irreversible: ${text}`);
    assert(await dialog.locator('#revoke-self').isHidden(), 'no "signed in with this key" warning for another key');
    assertEq(await page.evaluate(() => document.activeElement && document.activeElement.id), 'revoke-cancel', 'focus starts on Cancel');
    await shot('06-revoke-confirmation.png', { dialog: true });
    // Cancel first: nothing happens.
    await page.keyboard.press('Escape');
    await dialog.waitFor({ state: 'hidden' });
    assert((await rowOf('browser-e2e').innerText()).includes('Active'), 'Escape cancels the revoke');
    await rowOf('browser-e2e').getByRole('button', { name: 'Revoke key browser-e2e' }).click();
    await dialog.waitFor({ state: 'visible' });
    await dialog.getByRole('button', { name: 'Revoke key' }).click();
    await dialog.waitFor({ state: 'hidden' });
    await rowOf('browser-e2e').getByText('Revoked', { exact: true }).waitFor();
    assert((await statusRegion.innerText()).includes('revoked'), 'status region confirms the revoke');
    assertEq(await rowOf('browser-e2e').getByRole('button', { name: /^Revoke/ }).count(), 0, 'no Revoke button on a revoked key');
    await shot('07-table-after-revoke.png');
  });

  await step('revoking the signed-in key warns first (then cancelled)', async () => {
    const own = page.locator('#keys-body tr', { has: page.locator('.self-tag') });
    await own.getByRole('button', { name: 'Revoke key admin' }).click();
    const dialog = page.locator('#revoke-dialog');
    await dialog.locator('#revoke-self').waitFor({ state: 'visible' });
    await dialog.getByRole('button', { name: 'Cancel' }).click();
    await dialog.waitFor({ state: 'hidden' });
  });

  await step('the proxy now refuses the key: 401 key_revoked', async () => {
    const r = await httpJson('GET', `${proxyUrl}/v1/orgs/acme/items/42`, { headers: { authorization: `Bearer ${plaintext}` } });
    assertEq(r.status, 401, `proxy status for the revoked key (${r.text})`);
    assertEq(r.json && r.json.error && r.json.error.code, 'key_revoked', 'error code for the revoked key');
  });

  await step('API errors inside the create dialog show the API message', async () => {
    await page.getByRole('button', { name: 'Create key' }).click();
    const dialog = page.locator('#create-dialog');
    await dialog.getByLabel('Name').fill('bad-scope');
    await dialog.getByLabel('Other scopes').fill('Not A Scope!');
    await dialog.getByRole('button', { name: 'Create key' }).click();
    const error = dialog.locator('#create-error');
    await error.getByText('Could not create the key').waitFor();
    const text = await error.innerText();
    assert(text.includes('scope'), `API message shown: ${text}`);
    assertEq(await error.getAttribute('role'), 'alert', 'dialog error is announced');
    await dialog.getByRole('button', { name: 'Cancel' }).click();
    await dialog.waitFor({ state: 'hidden' });
  });

  // POSTs to /v1/keys the page sends (to prove client-side checks stop a request).
  const keyPosts = [];
  page.on('request', (req) => {
    if (req.method() === 'POST' && new URL(req.url()).pathname === '/v1/keys') keyPosts.push(req.postData() || '');
  });
  const activeId = () => page.evaluate(() => document.activeElement && document.activeElement.id);

  await step('invalid rate limit and MCP tool are refused in the dialog before any request', async () => {
    await page.getByRole('button', { name: 'Create key' }).click();
    const dialog = page.locator('#create-dialog');
    await dialog.waitFor({ state: 'visible' });
    const error = dialog.locator('#create-error');
    const before = keyPosts.length;
    await dialog.getByLabel('Name').fill('mcp-agent');
    await dialog.getByLabel('Rate limit').fill('10/d');
    await dialog.getByRole('button', { name: 'Create key' }).click();
    await error.getByText('rate limit', { exact: false }).waitFor();
    assert((await error.innerText()).includes('10/s'), `rate limit message gives an example: ${await error.innerText()}`);
    assertEq(await activeId(), 'create-rate', 'focus moves to the rate limit field');
    await dialog.getByLabel('Rate limit').fill('10/s');
    await dialog.getByLabel('MCP tools').fill('search_*, get doc!');
    await dialog.getByRole('button', { name: 'Create key' }).click();
    await error.getByText('get doc!').waitFor();
    assert((await error.innerText()).includes('MCP tool'), `MCP tool message: ${await error.innerText()}`);
    assertEq(await activeId(), 'create-mcp-tools', 'focus moves to the MCP tools field');
    await sleep(300);
    assertEq(keyPosts.length, before, 'POST /v1/keys requests sent for invalid input');
    assert(await dialog.locator('#create-form').isVisible(), 'the form stays open');
    await shot('08-create-dialog-invalid-input.png', { dialog: true });
  });

  await step('an invalid allowed IP is refused by the server and its message shown', async () => {
    const dialog = page.locator('#create-dialog');
    const error = dialog.locator('#create-error');
    const before = keyPosts.length;
    await dialog.getByLabel('MCP tools').fill('search_*');
    await dialog.getByLabel('Allowed IPs').fill('10.0.0.0/8, 10.0.0.300');
    await dialog.getByRole('button', { name: 'Create key' }).click();
    await error.getByText('Could not create the key').waitFor();
    const text = await error.innerText();
    assert(text.includes('allowed_ips') && text.includes('10.0.0.300'), `server message shown: ${text}`);
    assertEq(keyPosts.length, before + 1, 'one POST /v1/keys sent');
    assertEq(JSON.parse(keyPosts[keyPosts.length - 1]).allowed_ips.join(','), '10.0.0.0/8,10.0.0.300', 'allowed_ips sent trimmed');
    assertEq(await activeId(), 'create-ips', 'focus moves to the allowed IPs field');
  });

  const mcpKey = await step('create a key with MCP tools, MCP read-only, allowed IPs and a rate limit', async () => {
    const dialog = page.locator('#create-dialog');
    const before = keyPosts.length;
    await dialog.getByLabel('Organisation').fill('acme');
    await dialog.getByLabel('MCP tools').fill(' search_* ');
    await dialog.getByLabel('MCP read-only').check();
    await dialog.getByLabel('Allowed IPs').fill('10.0.0.0/8, ');
    await dialog.getByLabel('Rate limit').fill('10/s');
    await dialog.getByRole('button', { name: 'Create key' }).click();
    const field = dialog.getByLabel('API key for mcp-agent');
    await field.waitFor({ state: 'visible' });
    const key = await field.inputValue();
    // Only what was filled in is sent.
    assertEq(keyPosts.length, before + 1, 'one POST /v1/keys sent');
    const sent = JSON.parse(keyPosts[keyPosts.length - 1]);
    assertEq(JSON.stringify(sent.mcp), JSON.stringify({ tools: ['search_*'], read_only: true }), 'mcp sent');
    assertEq(JSON.stringify(sent.allowed_ips), JSON.stringify(['10.0.0.0/8']), 'allowed_ips sent');
    assertEq(sent.rate_limit, '10/s', 'rate_limit sent');
    assertEq(await dialog.locator('dd[data-fact="mcp"]').innerText(), 'tools search_*, read-only', 'MCP fact after create');
    assertEq(await dialog.locator('dd[data-fact="allowed-ips"]').innerText(), '10.0.0.0/8', 'allowed IPs fact after create');
    assertEq(await dialog.locator('dd[data-fact="rate-limit"]').innerText(), '10/s', 'rate limit fact after create');
    await shot('09-create-dialog-mcp-key.png', { dialog: true });
    await dialog.getByRole('button', { name: 'Done' }).click();
    await dialog.waitFor({ state: 'hidden' });
    await page.locator('#created-key').waitFor({ state: 'detached' });

    // What the server stored.
    const list = await httpJson('GET', `${adminUrl}/v1/keys?search=mcp-agent`, { headers: admin });
    assertEq(list.status, 200, 'GET /v1/keys?search=mcp-agent');
    assertEq(list.json.items.length, 1, 'keys named mcp-agent');
    const stored = list.json.items[0];
    assertEq(JSON.stringify(stored.mcp), JSON.stringify({ disabled: false, tools: ['search_*'], read_only: true }), 'stored mcp');
    assertEq(JSON.stringify(stored.allowed_ips), JSON.stringify(['10.0.0.0/8']), 'stored allowed_ips');
    assertEq(stored.rate_limit, '10/s', 'stored rate_limit');

    // The allowlist is in force: this test talks to the proxy from 127.0.0.1.
    const r = await httpJson('GET', `${proxyUrl}/v1/orgs/acme/items/1`, { headers: { authorization: `Bearer ${key}` } });
    assertEq(r.status, 403, `proxy status from outside the allowlist (${r.text})`);
    assertEq(r.json && r.json.error && r.json.error.code, 'ip_not_allowed', 'error code from outside the allowlist');
    return key;
  });

  await step('the key row and the Usage dialog show MCP access, allowed IPs and rate limit', async () => {
    const row = rowOf('mcp-agent');
    await row.waitFor();
    const access = await row.locator('.key-access').innerText();
    assert(access.includes('MCP: tools search_*, read-only'), `MCP access in the row: ${access}`);
    assert(access.includes('IPs: 10.0.0.0/8'), `allowed IPs in the row: ${access}`);
    assert(access.includes('Rate: 10/s'), `rate limit in the row: ${access}`);
    await shot('10-table-mcp-key.png');
    await row.getByRole('button', { name: 'Usage key mcp-agent' }).click();
    const dialog = page.locator('#usage-dialog');
    await dialog.locator('.usage-big').waitFor();
    assert(await dialog.getByRole('heading', { name: 'Access' }).isVisible(), 'Access heading in the usage dialog');
    assertEq(await dialog.locator('dd[data-fact="mcp"]').innerText(), 'tools search_*, read-only', 'MCP access in usage dialog');
    assertEq(await dialog.locator('dd[data-fact="allowed-ips"]').innerText(), '10.0.0.0/8', 'allowed IPs in usage dialog');
    assertEq(await dialog.locator('dd[data-fact="rate-limit"]').innerText(), '10/s', 'rate limit in usage dialog');
    await shot('11-usage-dialog-mcp-key.png', { dialog: true });
    await dialog.getByRole('button', { name: 'Close' }).click();
    await dialog.waitFor({ state: 'hidden' });
  });

  // PATCHes to /v1/keys/{id} the page sends.
  const keyPatches = [];
  page.on('request', (req) => {
    if (req.method() === 'PATCH' && /^\/v1\/keys\/[^/]+$/.test(new URL(req.url()).pathname)) {
      keyPatches.push({ path: new URL(req.url()).pathname, body: req.postData() || '' });
    }
  });

  await step('Access dialog: prefilled, an invalid rate is refused, MCP paused and rate cleared in one PATCH', async () => {
    const before = await httpJson('GET', `${adminUrl}/v1/keys?search=mcp-agent`, { headers: admin });
    assertEq(before.json.items.length, 1, 'keys named mcp-agent');
    const id = before.json.items[0].id;
    const row = rowOf('mcp-agent');
    assertEq(await rowOf('legacy-mobile-app').getByRole('button', { name: /^Access/ }).count(), 0, 'no Access button on a revoked key');
    await row.getByRole('button', { name: 'Access key mcp-agent' }).click();
    const dialog = page.locator('#access-dialog');
    await dialog.waitFor({ state: 'visible' });
    assert((await dialog.getByRole('heading').innerText()).includes('mcp-agent'), 'the dialog names the key');
    // Prefilled from the key.
    assert(!(await dialog.getByLabel('MCP paused').isChecked()), 'MCP paused prefilled (unchecked)');
    assert(await dialog.getByLabel('MCP read-only').isChecked(), 'MCP read-only prefilled (checked)');
    assertEq(await dialog.getByLabel('MCP tools').inputValue(), 'search_*', 'MCP tools prefilled');
    assertEq(await dialog.getByLabel('Allowed IPs').inputValue(), '10.0.0.0/8', 'allowed IPs prefilled');
    assertEq(await dialog.getByLabel('Rate limit').inputValue(), '10/s', 'rate limit prefilled');
    await dialog.getByLabel('MCP paused').check();
    await dialog.getByLabel('Rate limit').fill('');
    await shot('12-access-dialog.png', { dialog: true });

    // An invalid rate is refused before any request.
    const error = dialog.locator('#access-error');
    const sentBefore = keyPatches.length;
    await dialog.getByLabel('Rate limit').fill('10/d');
    await dialog.getByRole('button', { name: 'Save' }).click();
    await error.getByText('rate limit', { exact: false }).waitFor();
    assert((await error.innerText()).includes('10/s'), `rate limit message gives an example: ${await error.innerText()}`);
    assertEq(await activeId(), 'access-rate', 'focus moves to the rate limit field');
    await sleep(300);
    assertEq(keyPatches.length, sentBefore, 'PATCH requests sent for an invalid rate');
    assert(await dialog.isVisible(), 'the dialog stays open');

    // Clear the rate (back to the default) and save.
    await dialog.getByLabel('Rate limit').fill('');
    await dialog.getByRole('button', { name: 'Save' }).click();
    await dialog.waitFor({ state: 'hidden' });
    await statusRegion.getByText('Access of key', { exact: false }).waitFor();
    const notice = await statusRegion.innerText();
    assert(notice.includes('mcp-agent') && notice.includes('MCP paused'), `status region confirms the change: ${notice}`);
    assertEq(keyPatches.length, sentBefore + 1, 'one PATCH sent');
    const sent = keyPatches[keyPatches.length - 1];
    assertEq(sent.path, `/v1/keys/${id}`, 'PATCH path');
    assertEq(
      JSON.stringify(JSON.parse(sent.body)),
      JSON.stringify({ mcp: { disabled: true, tools: ['search_*'], read_only: true }, allowed_ips: ['10.0.0.0/8'], rate_limit: null }),
      'PATCH body'
    );

    // What the server stored: MCP paused and the default rate; the rest unchanged.
    const list = await httpJson('GET', `${adminUrl}/v1/keys?search=mcp-agent`, { headers: admin });
    assertEq(list.status, 200, 'GET /v1/keys?search=mcp-agent');
    const stored = list.json.items[0];
    assertEq(stored.mcp.disabled, true, 'stored mcp.disabled');
    assertEq(JSON.stringify(stored.mcp.tools), JSON.stringify(['search_*']), 'stored mcp.tools unchanged');
    assertEq(stored.mcp.read_only, true, 'stored mcp.read_only unchanged');
    assertEq(JSON.stringify(stored.allowed_ips), JSON.stringify(['10.0.0.0/8']), 'stored allowed_ips unchanged');
    assertEq(stored.rate_limit, null, 'stored rate_limit');
    assertEq(stored.status, 'active', 'the key itself stays active');

    // The row shows it after the refresh; the key is still Active.
    await row.locator('.key-access', { hasText: 'paused' }).waitFor();
    const access = await row.locator('.key-access').innerText();
    assert(access.includes('MCP: paused (tools search_*, read-only)'), `paused MCP access in the row: ${access}`);
    assert(access.includes('IPs: 10.0.0.0/8'), `allowed IPs still in the row: ${access}`);
    assert(!access.includes('Rate:'), `no rate limit in the row (default): ${access}`);
    assert(await row.getByText('Active', { exact: true }).isVisible(), 'the key status stays Active');
    assertEq(await page.evaluate(() => document.activeElement && document.activeElement.getAttribute('aria-label')), 'Access key mcp-agent', 'focus returns to the Access button');

    // And the Usage dialog.
    await row.getByRole('button', { name: 'Usage key mcp-agent' }).click();
    const usage = page.locator('#usage-dialog');
    await usage.locator('.usage-big').waitFor();
    assertEq(await usage.locator('dd[data-fact="mcp"]').innerText(), 'paused (tools search_*, read-only)', 'MCP access in usage dialog after the change');
    assertEq(await usage.locator('dd[data-fact="allowed-ips"]').innerText(), '10.0.0.0/8', 'allowed IPs in usage dialog after the change');
    assertEq(await usage.locator('dd[data-fact="rate-limit"]').innerText(), 'default', 'rate limit in usage dialog after the change');
    await usage.getByRole('button', { name: 'Close' }).click();
    await usage.waitFor({ state: 'hidden' });
  });

  await step('names are rendered as text (no HTML injection)', async () => {
    const evil = '<img src=x onerror=alert(1)><b>bold</b>';
    const r = await httpJson('POST', `${adminUrl}/v1/keys`, { headers: admin, body: { name: evil } });
    assertEq(r.status, 201, 'create key with markup in its name');
    await page.reload();
    await rowOf('<b>bold</b>').waitFor();
    assertEq(await page.locator('#keys-body img, #keys-body b').count(), 0, 'markup from the API must not become elements');
    assert((await rowOf('<b>bold</b>').innerText()).includes(evil), 'the name is shown literally');
    assertEq(dialogsSeen.length, 0, 'no alert() ran');
  });

  await step('pagination and search (reload keeps the session)', async () => {
    for (let i = 1; i <= 20; i++) {
      const r = await httpJson('POST', `${adminUrl}/v1/keys`, { headers: admin, body: { name: `batch-${String(i).padStart(2, '0')}` } });
      assertEq(r.status, 201, `create batch key ${i}`);
    }
    await page.reload();
    await page.locator('#page-info', { hasText: 'Page 1 of 2' }).waitFor();
    assertEq(await page.locator('#keys-body tr').count(), 20, 'rows on page 1');
    await page.getByRole('button', { name: 'Next' }).click();
    await page.locator('#page-info', { hasText: 'Page 2 of 2' }).waitFor();
    assert(await page.getByRole('button', { name: 'Next' }).isDisabled(), 'Next disabled on the last page');
    assert(await rowOf('browser-e2e').isVisible(), 'older keys on page 2');
    await page.getByRole('button', { name: 'Previous' }).click();
    await page.locator('#page-info', { hasText: 'Page 1 of 2' }).waitFor();
    await page.getByLabel('Search keys').fill('browser-e2e');
    await page.locator('#page-info', { hasText: 'Page 1 of 1' }).waitFor();
    await waitFor('search results', async () => (await page.locator('#keys-body tr').count()) === 1, 5000);
    assert(await rowOf('browser-e2e').isVisible(), 'search finds the key');
    await page.getByLabel('Search keys').fill('no-such-key-anywhere');
    await page.getByText('No keys match this search.').waitFor();
  });

  await step('Sign out removes the admin key from the tab', async () => {
    await page.getByRole('button', { name: 'Sign out' }).click();
    await page.getByLabel('Admin key').waitFor({ state: 'visible' });
    assertEq(await page.evaluate(() => sessionStorage.length), 0, 'sessionStorage after sign out');
    assertEq(await page.locator('#keys-body tr').count(), 0, 'table emptied on sign out');
    await page.reload();
    await page.getByLabel('Admin key').waitFor({ state: 'visible' });
    assert(await page.locator('#keys-view').isHidden(), 'still signed out after a reload');
  });

  await step('no CSP violations or script errors in the browser; no key in keygate logs', async () => {
    assertEq(browserErrors.join('\n'), '', 'browser errors');
    assert(!keygateLog.includes(adminKey), 'the admin key must not appear in keygate logs');
    assert(!keygateLog.includes(plaintext), 'the created key must not appear in keygate logs');
    assert(!keygateLog.includes(mcpKey), 'the MCP key must not appear in keygate logs');
  });
}

const watchdog = setTimeout(() => {
  log(`FAIL: the test did not finish within ${WATCHDOG_MS / 1000} s (step: ${stepName})`);
  killChildrenNow();
  process.exit(1);
}, WATCHDOG_MS);
watchdog.unref();

let failed = false;
try {
  await main();
} catch (e) {
  failed = true;
  log(`FAIL in step "${stepName}": ${e instanceof Failure ? e.message : e.stack || e}`);
  if (page) {
    try {
      await page.screenshot({ path: path.join(ARTIFACTS, 'failure.png'), fullPage: true });
      log(`     screenshot ${path.relative(ROOT, path.join(ARTIFACTS, 'failure.png'))}`);
    } catch {
      /* the browser may be gone */
    }
  }
  if (keygateLog) {
    // eslint-disable-next-line no-control-regex
    const tail = keygateLog.replace(/\x1b\[[0-9;]*m/g, '').split('\n').slice(-40).join('\n');
    log(`keygate output (last 40 lines):\n${tail}`);
  }
} finally {
  await cleanup();
  killChildrenNow();
  clearTimeout(watchdog);
  // The test command scans every log of the run for key material.
  if (process.env.KEYGATE_TEST_LOG_DIR) {
    fs.writeFileSync(path.join(process.env.KEYGATE_TEST_LOG_DIR, 'browser-console.log'), keygateLog);
  }
}

if (failed) {
  process.exit(1);
}
log('PASS: keygate console end-to-end test');
process.exit(0);
