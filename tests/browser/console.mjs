// The web inspector in real headless Chromium (Debian's /usr/bin/chromium, driven by
// playwright-core: no browser download). tests/test_console_browser.py starts the server,
// seeds it through the HTTP API and hands this script what it made (CONSOLE_FIXTURE, JSON).
// Each scenario asserts with node:assert; the script prints one JSON summary line and
// exits 0, or exits 1 at the first failure. With SCREENSHOTS set it saves PNGs there.

import assert from "node:assert/strict";
import { chromium } from "playwright-core";

const fixture = JSON.parse(process.env.CONSOLE_FIXTURE);
const base = fixture.base_url;
const screenshots = process.env.SCREENSHOTS || "";
const executablePath = process.env.CHROMIUM || "/usr/bin/chromium";
const summary = { scenarios: [] };

const apiAuth = "Basic " + Buffer.from(`${fixture.account_sid}:${fixture.auth_token}`).toString("base64");

async function api(method, path, form) {
  const response = await fetch(base + path, {
    method,
    headers: { Authorization: apiAuth, "Content-Type": "application/x-www-form-urlencoded" },
    body: form ? new URLSearchParams(form).toString() : undefined,
  });
  const text = await response.text();
  return { status: response.status, body: text ? JSON.parse(text) : null };
}

async function shot(page, name) {
  if (screenshots) {
    await page.screenshot({ path: `${screenshots}/${name}.png`, fullPage: true });
  }
}

async function scenario(name, run) {
  const started = Date.now();
  await run();
  summary.scenarios.push({ name, ms: Date.now() - started });
}

// Waits for a selector that live updates should bring; on timeout, says what the page and
// the API showed instead.
async function waitLive(page, selector, timeout = 10000) {
  try {
    await page.locator(selector).first().waitFor({ timeout });
  } catch (error) {
    const live = await page.evaluate(() => document.documentElement.getAttribute("data-live"));
    const html = await page.evaluate(() => document.getElementById("live")?.innerHTML.slice(0, 2000));
    throw new Error(`${selector} not shown within ${timeout} ms (data-live=${live}) at ${page.url()}:\n${html}`);
  }
}

function identities(page) {
  return page.locator("#bindings td.identity").allTextContents();
}

const browser = await chromium.launch({
  executablePath,
  args: ["--headless", "--no-sandbox"],
});
try {
  const context = await browser.newContext({ viewport: { width: 1200, height: 760 } });
  const page = await context.newPage();
  const dialogs = [];
  page.on("dialog", async (dialog) => {
    dialogs.push(dialog.message());
    await dialog.dismiss();
  });
  const pageErrors = [];
  page.on("pageerror", (error) => pageErrors.push(String(error)));
  page.on("console", (message) => {
    // A CSP violation is reported on the console: none may happen on our own pages.
    if (message.type() === "error" && /Content Security Policy/.test(message.text())) {
      pageErrors.push(message.text());
    }
  });

  await scenario("wrong password", async () => {
    await page.goto(`${base}/console`);
    assert.equal(new URL(page.url()).pathname, "/console/sign-in");
    await shot(page, "console-sign-in");
    await page.fill("input[name=username]", fixture.account_sid);
    await page.fill("input[name=password]", "not-the-token");
    await page.click("button[type=submit]");
    await page.waitForSelector("p.error");
    assert.equal(
      (await page.textContent("p.error")).trim(),
      "Sign-in failed: those credentials were not accepted.",
    );
    assert.equal(new URL(page.url()).pathname, "/console/sign-in");
    assert.deepEqual(await context.cookies(), []);
  });

  await scenario("sign-in", async () => {
    await page.fill("input[name=username]", fixture.account_sid);
    await page.fill("input[name=password]", fixture.auth_token);
    await page.click("button[type=submit]");
    await page.waitForURL(`${base}/console/services`);
    const [cookie] = await context.cookies();
    assert.equal(cookie.httpOnly, true);
    assert.equal(cookie.sameSite, "Strict");
    assert.equal(cookie.path, "/console");
    assert.ok(!cookie.value.includes(fixture.auth_token));
    assert.equal((await page.textContent(".who")).trim(), fixture.account_sid);
  });

  await scenario("another account's service not visible", async () => {
    const listed = await page.locator("table code").allTextContents();
    assert.deepEqual(listed, [fixture.service_sid]);
    assert.ok(!(await page.content()).includes(fixture.other_service_sid));
    await shot(page, "console-services");
    const response = await page.goto(`${base}/console/services/${fixture.other_service_sid}/bindings`);
    assert.equal(response.status(), 404);
    assert.equal((await page.textContent("h1")).trim(), "Not found");
    assert.ok(!(await page.content()).includes(fixture.other_identity));
  });

  await scenario("binding search", async () => {
    await page.goto(`${base}/console/services/${fixture.service_sid}/bindings`);
    assert.equal((await identities(page)).length, fixture.binding_count);
    await page.fill("input[name=identity]", "alice");
    await page.click("form.filters button[type=submit]");
    await page.waitForURL(/identity=alice/);
    assert.deepEqual(await identities(page), ["alice", "alice"]);
    await page.fill("input[name=identity]", "");
    await page.fill("input[name=tag]", "vip");
    await page.selectOption("select[name=type]", "sms");
    await page.click("form.filters button[type=submit]");
    await page.waitForURL(/type=sms/);
    assert.deepEqual(await identities(page), ["bob"]);
    await page.goto(`${base}/console/services/${fixture.service_sid}/bindings`);
    await shot(page, "console-bindings");
  });

  await scenario("stored script shown as text", async () => {
    await page.goto(`${base}/console/services/${fixture.service_sid}/bindings?identity=${encodeURIComponent(fixture.xss)}`);
    const shown = await identities(page);
    assert.deepEqual(shown, [fixture.xss]);
    await page.waitForTimeout(200);
    assert.deepEqual(dialogs, []);
  });

  await scenario("delete a binding", async () => {
    await page.goto(`${base}/console/services/${fixture.service_sid}/bindings?identity=carol`);
    assert.deepEqual(await identities(page), ["carol"]);
    await page.click("#bindings button.danger");
    await page.waitForURL(/deleted=BS/);
    await page.goto(`${base}/console/services/${fixture.service_sid}/bindings?identity=carol`);
    assert.equal(await page.locator("#bindings").count(), 0);
    const gone = await api("GET", `/v1/Services/${fixture.service_sid}/Bindings/${fixture.carol_sid}`);
    assert.equal(gone.status, 404);
  });

  await scenario("a notification appearing live", async () => {
    await page.goto(`${base}/console/services/${fixture.service_sid}/notifications`);
    await page.waitForSelector("html[data-live=open]");
    const posted = Date.now();
    const created = await api("POST", `/v1/Services/${fixture.service_sid}/Notifications`, {
      Identity: "alice",
      Title: "Order shipped",
      Body: "Your order #42 is on its way",
      Data: JSON.stringify({ order: 42 }),
    });
    assert.equal(created.status, 201);
    await waitLive(page, `#notifications a:has-text("${created.body.sid}")`);
    summary.post_to_visible_ms = Date.now() - posted;
    // And its deliveries' states follow without a reload.
    await waitLive(page, `#notifications tr:has-text("${created.body.sid}") .status.sent`);
    summary.post_to_sent_visible_ms = Date.now() - posted;
    summary.notification_sid = created.body.sid;
    await page.click("details.send summary");
    await shot(page, "console-notifications");
  });

  await scenario("rendered APNs payload", async () => {
    await page.click(`#notifications a:has-text("${summary.notification_sid}")`);
    await page.waitForURL(new RegExp(summary.notification_sid));
    const apns = page.locator(`article.delivery[data-address="${fixture.apn_address}"]`);
    await waitLive(page, `article.delivery[data-address="${fixture.apn_address}"] .status.sent`);
    const request = JSON.parse(await apns.locator("pre.request").textContent());
    summary.apns_request = request;
    await shot(page, "console-deliveries");
  });

  await scenario("send a test notification from the page", async () => {
    await page.goto(`${base}/console/services/${fixture.service_sid}/notifications`);
    await page.click("details.send summary");
    await page.fill("input[name=target]", "bob");
    await page.fill("input[name=title]", "Hello");
    await page.fill("textarea[name=data]", "[1, 2]");
    await page.click("details.send button[type=submit]");
    await page.waitForSelector("details.send p.error");
    summary.send_error = (await page.textContent("details.send p.error")).trim();
    assert.equal(await page.inputValue("input[name=target]"), "bob");
    await page.fill("textarea[name=data]", '{"from": "console"}');
    await page.click("details.send button[type=submit]");
    await page.waitForURL(/\/notifications\/NT[0-9a-f]{32}$/);
    await waitLive(page, "article.delivery .status.sent");
    summary.sent_from_page = new URL(page.url()).pathname.split("/").pop();
  });

  await scenario("cross-site form post refused", async () => {
    // Another site's page that posts a delete form to the console as soon as it loads.
    const evil = "http://evil.test";
    await page.route(`${evil}/**`, (route) =>
      route.fulfill({
        contentType: "text/html",
        body: `<form id="f" method="post" action="${base}/console/services/${fixture.service_sid}/bindings/${fixture.bob_sid}/delete">
          <input name="csrf_token" value="guessed"></form>
          <script>document.getElementById("f").submit()</script>`,
      }),
    );
    const landed = page.waitForResponse((response) => response.url().startsWith(base));
    await page.goto(`${evil}/`);
    const response = await landed;
    summary.cross_site_status = response.status();
    assert.ok([303, 403].includes(response.status()), `answered ${response.status()}`);
    const still = await api("GET", `/v1/Services/${fixture.service_sid}/Bindings/${fixture.bob_sid}`);
    assert.equal(still.status, 200);
  });

  await scenario("sign out", async () => {
    await page.goto(`${base}/console/services`);
    await page.click("header form button");
    await page.waitForURL(`${base}/console/sign-in`);
    await page.goto(`${base}/console/services`);
    assert.equal(new URL(page.url()).pathname, "/console/sign-in");
  });

  assert.deepEqual(pageErrors, []);
  summary.dialogs = dialogs;
  await context.close();
} finally {
  await browser.close();
}
console.log(JSON.stringify(summary));
