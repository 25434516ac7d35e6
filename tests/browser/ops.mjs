// Drives the ops page as a person would: sign in through the form, read what
// the page shows, take a screenshot. Usage: node ops.mjs BASE_URL TOKEN SCREENSHOT
// Prints one JSON line with what it saw; exits 1 on any failed expectation.
import { chromium } from 'playwright-core';

const [base, token, screenshot] = process.argv.slice(2);
const failures = [];
const expect = (ok, what) => { if (!ok) failures.push(what); };

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
         '--disable-background-networking', '--disable-component-update', '--disable-sync'],
});
const seen = {};
try {
  const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
  await page.goto(`${base}/ops`);
  expect(await page.isVisible('form[action="/ops/login"]'), 'a sign-in form is shown first');

  await page.fill('#token', 'not-the-token-at-all');
  await page.click('button[type=submit]');
  seen.wrongToken = await page.textContent('body');
  expect(seen.wrongToken.includes('Wrong token.'), 'a wrong token is refused');

  await page.fill('#token', token);
  await page.click('button[type=submit]');
  await page.waitForSelector('text=Last leads');
  const body = await page.textContent('body');
  seen.headings = await page.$$eval('h2', (hs) => hs.map((h) => h.textContent));
  seen.charts = await page.$$eval('svg[role=img]', (s) => s.map((e) => e.getAttribute('aria-label')));
  seen.rows = await page.$$eval('table:first-of-type tbody tr', (rs) => rs.map((r) => r.innerText.replace(/\s+/g, ' ').trim()));
  seen.xss = await page.evaluate(() => window.__leadrelay_xss === undefined ? 'not executed' : 'EXECUTED');

  expect(seen.headings.includes('Funnel'), 'a funnel section');
  expect(seen.charts.includes('Last 24 hours') && seen.charts.includes('Last 7 days'), 'two funnel charts');
  for (const name of ['Айгерим', 'Нурлан', 'Алия', 'Ерлан']) expect(body.includes(name), `lead ${name} listed`);
  expect(body.includes('sent · delivered'), 'a delivered message is shown as such');
  expect(body.includes('10 digits'), 'the invalid phone is listed with its reason');
  expect(body.includes('bounced'), 'the bounced email is listed');
  expect(body.includes('<script>'), 'a hostile name is shown as text');
  expect(seen.xss === 'not executed', 'a hostile name does not run');

  await page.screenshot({ path: screenshot, fullPage: true });

  await page.click('text=Sign out');
  expect(await page.isVisible('form[action="/ops/login"]'), 'signing out returns to the form');
} catch (e) {
  failures.push(String(e));
} finally {
  await browser.close();
}
console.log(JSON.stringify({ ok: failures.length === 0, failures, seen }));
process.exit(failures.length === 0 ? 0 : 1);
