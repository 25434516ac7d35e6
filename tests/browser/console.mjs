// Drives the ops console as an operator would: sign in, search by a phone
// typed another way, read a lead's timeline, retry and cancel from the page,
// try forged forms, sign out. Usage: node console.mjs BASE_URL TOKEN SCREENSHOT
// with the ids of the prepared leads and jobs in the CONSOLE_IDS environment
// variable (JSON). Prints one JSON line with what it saw; exits 1 on any
// failed expectation.
import { chromium } from 'playwright-core';

const [base, token, screenshot] = process.argv.slice(2);
const ids = JSON.parse(process.env.CONSOLE_IDS);
const failures = [];
const expect = (ok, what) => { if (!ok) failures.push(what); };
const text = async (page) => (await page.textContent('body')).replace(/\s+/g, ' ');

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
         '--disable-background-networking', '--disable-component-update', '--disable-sync'],
});
const seen = {};
const signIn = async (context) => {
  const page = await context.newPage();
  await page.goto(`${base}/ops`);
  await page.fill('#token', token);
  await page.click('button[type=submit]');
  await page.waitForSelector('text=Last leads');
  return page;
};
const csrfOf = (page) => page.getAttribute('form[action="/ops/logout"] input[name=csrf]', 'value');
try {
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  const page = await signIn(context);

  // Search by the phone typed as people say it.
  await page.fill('input[name=q]', '8 705 904 44 67');
  await page.press('input[name=q]', 'Enter');
  await page.waitForSelector('h1:has-text("Search")');
  seen.searchRows = await page.$$eval('table.results tbody tr', (rs) => rs.map((r) => r.innerText.replace(/\s+/g, ' ').trim()));
  expect(seen.searchRows.length === 1, 'the phone finds exactly one lead');
  expect(!(await text(page)).includes('904-44-67'), 'the phone is masked in the list');
  await page.click(`a[href="/ops/leads/${ids.searchLead}"]`);
  await page.waitForSelector('h1.lead-name');
  expect((await page.textContent('.lead-phone')).includes('+7 (705) 904-44-67'), 'the lead page shows the phone as stored');

  // Cancel its SMS from the page, with a reason.
  await page.click(`#job-${ids.cancelJob} a.action-cancel`);
  await page.waitForSelector('h1:has-text("Cancel?")');
  await page.fill('#reason', 'asked us not to contact him');
  await page.click('button.confirm');
  await page.waitForSelector(`#job-${ids.cancelJob}[data-status=cancelled]`);
  seen.cancelTimeline = await page.textContent(`#job-${ids.cancelJob} table.timeline`);
  expect(seen.cancelTimeline.includes('cancelled by an operator: asked us not to contact him'), 'the cancellation and its reason are on the timeline');

  // The bounced email's event and the invalid phone's reason.
  await page.goto(`${base}/ops/leads/${ids.bouncedLead}`);
  seen.bounced = await page.textContent('.card[data-channel=email] table.timeline');
  expect(seen.bounced.includes('email.bounced'), "the bounced email's event is on its timeline");
  expect(seen.bounced.includes('Mailbox does not exist'), "with the provider's reason");
  await page.goto(`${base}/ops/leads/${ids.invalidLead}`);
  seen.invalid = await page.textContent('.card[data-channel=sms]');
  expect(seen.invalid.includes('invalid') && seen.invalid.includes('10 digits'), "the invalid phone's reason");

  // Retry a failed email from its lead's page.
  await page.goto(`${base}/ops/leads/${ids.failedLead}`);
  await page.click(`#job-${ids.failedJob} a.action-retry`);
  await page.waitForSelector('h1:has-text("Retry?")');
  expect((await text(page)).includes('API key is invalid'), 'the confirmation shows the last error');
  await page.click('button.confirm');
  await page.waitForSelector(`#job-${ids.failedJob}`);
  seen.afterRetry = await page.getAttribute(`#job-${ids.failedJob}`, 'data-status');
  expect(['due', 'sending', 'sent'].includes(seen.afterRetry), 'the retried job is due again (or already sent)');
  seen.emailFrame = (await page.frameLocator('iframe.email-preview').locator('body').innerText()).slice(0, 80);
  expect(seen.emailFrame.includes('Данияр'), 'the email as sent is shown in its frame');
  await page.screenshot({ path: screenshot, fullPage: true });

  // Forged forms: no token, then another session's token.
  const url = `${base}/ops/jobs/${ids.forgeryJob}/cancel`;
  const bare = await page.request.post(url, { form: { reason: 'forged' }, maxRedirects: 0 });
  seen.withoutToken = bare.status();
  expect(bare.status() === 403, 'an action without the CSRF token is refused');
  const other = await browser.newContext();
  const otherPage = await signIn(other);
  const otherCsrf = await csrfOf(otherPage);
  const foreign = await page.request.post(url, { form: { reason: 'forged', csrf: otherCsrf }, maxRedirects: 0 });
  seen.withOtherToken = foreign.status();
  expect(foreign.status() === 403, "an action with another session's token is refused");
  await page.goto(`${base}/ops/leads/${ids.forgeryLead}`);
  expect(await page.getAttribute(`#job-${ids.forgeryJob}`, 'data-status') === 'scheduled', 'the forged forms changed nothing');

  // A hostile name is text everywhere: front page, search, its page.
  for (const path of ['/ops', `/ops/search?q=${encodeURIComponent('img src')}`, `/ops/leads/${ids.hostileLead}`]) {
    await page.goto(`${base}${path}`);
    const body = await text(page);
    expect(body.includes('<img src=x onerror='), `the hostile name is shown as text on ${path}`);
    expect(await page.evaluate(() => window.__leadrelay_xss === undefined), `the hostile name does not run on ${path}`);
  }
  seen.charts = await page.goto(`${base}/ops`).then(() => page.$$eval('svg[role=img]', (s) => s.map((e) => e.getAttribute('aria-label'))));
  for (const chart of ['Per hour, last 48 hours', 'Queue now', 'Last 24 hours', 'Last 7 days']) expect(seen.charts.includes(chart), `chart ${chart}`);
  // every label of every chart lies inside its chart, as the browser lays it out
  seen.clippedLabels = await page.$$eval('svg[role=img]', (svgs) => svgs.flatMap((svg) => {
    const width = svg.viewBox.baseVal.width || svg.width.baseVal.value;
    return [...svg.querySelectorAll('text')]
      .filter((t) => { const b = t.getBBox(); return b.x < -0.5 || b.x + b.width > width + 0.5; })
      .map((t) => `${svg.getAttribute('aria-label')}: ${t.textContent}`);
  }));
  expect(seen.clippedLabels.length === 0, `chart labels inside their charts: ${seen.clippedLabels.join('; ')}`);

  seen.emailQueue = await page.textContent('svg[aria-label="Queue now"] text.queue-email');
  expect(/scheduled 5\d\d/.test(seen.emailQueue), `the queue of 500 shows in full: ${seen.emailQueue}`);

  // A name with a right-to-left override is isolated wherever it shows,
  // and flagged on its page.
  for (const path of ['/ops', '/ops/search?q=rtl%40mail.ru', `/ops/leads/${ids.rtlLead}`]) {
    await page.goto(`${base}${path}`);
    const html = await page.content();
    const all = html.split('\u202e').length - 1;
    const isolated = html.split('<bdi>\u202e').length - 1 + html.split('<bdi title="\u202e').length - 1;
    expect(all > 0 && all === isolated, `the RTL name is isolated on ${path} (${isolated} of ${all})`);
  }
  expect((await text(page)).includes('U+202E (right-to-left override)'), 'the RTL name is flagged on its page');

  // The bounced email, its address corrected, is sent again from the page.
  await page.goto(`${base}/ops/leads/${ids.bouncedLead}`);
  await page.click('.card[data-channel=email] a.action-send-again');
  await page.waitForSelector('h1:has-text("Send again?")');
  expect(!(await text(page)).includes('will likely refuse it again'), 'the corrected address is not warned about');
  await page.click('button.confirm');
  await page.waitForSelector('h1.lead-name');
  // Its consent: the suppressions, with Suppress… behind a confirmation
  // that asks for a reason (submitted in tests/it/suppressions.rs).
  expect(await page.isVisible('#consent li[data-channel=sms] a.action-suppress'), 'the lead page offers to suppress its SMS');
  expect(await page.isVisible('#consent a.action-forget'), 'and to forget the person');
  await page.click('#consent li[data-channel=sms] a.action-suppress');
  await page.waitForSelector('h1:has-text("Suppress this lead")');
  expect(await page.isVisible('textarea#reason[required]'), 'a reason is required');
  await page.click('text=Back');
  await page.waitForSelector('h1.lead-name');
  const overflowOf = (p) => p.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  expect((await overflowOf(page)) <= 0, 'the lead page fits 1280 px');
  await page.screenshot({ path: screenshot.replace('.png', '-lead-1280.png'), fullPage: true });
  await page.goto(`${base}/ops`);
  expect((await overflowOf(page)) <= 0, 'the front page fits 1280 px');
  await page.screenshot({ path: screenshot.replace('.png', '-front-1280.png'), fullPage: true });

  // On a phone (390 px wide) nothing runs off the screen.
  const phone = await browser.newContext({ viewport: { width: 390, height: 844 } });
  const phonePage = await signIn(phone);
  for (const [path, name] of [['/ops', 'front'], [`/ops/leads/${ids.bouncedLead}`, 'lead']]) {
    await phonePage.goto(`${base}${path}`);
    const overflow = await phonePage.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
    expect(overflow <= 0, `${path} fits a 390-px screen (runs ${overflow} px over)`);
    await phonePage.screenshot({ path: screenshot.replace('.png', `-${name}-390.png`), fullPage: true });
  }
  await phone.close();

  // Signing out revokes the session: its cookie no longer opens anything.
  const cookies = await context.cookies();
  await page.click('text=Sign out');
  expect(await page.isVisible('form[action="/ops/login"]'), 'signing out returns to the form');
  const replay = await browser.newContext();
  await replay.addCookies(cookies);
  const replayPage = await replay.newPage();
  await replayPage.goto(`${base}/ops`);
  seen.replayedCookie = (await replayPage.isVisible('form[action="/ops/login"]')) ? 'refused' : 'ACCEPTED';
  expect(seen.replayedCookie === 'refused', 'the old cookie no longer works');
  await otherPage.goto(`${base}/ops`);
  expect(await otherPage.isVisible('text=Last leads'), 'the other session still works');
} catch (e) {
  failures.push(String(e));
} finally {
  await browser.close();
}
console.log(JSON.stringify({ ok: failures.length === 0, failures, seen }));
process.exit(failures.length === 0 ? 0 : 1);
