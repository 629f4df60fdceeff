// Drives the status page in headless Chromium (playwright-core, Debian's
// chromium): waits until the page shows the stream stage, takes a
// screenshot, then clicks Cutover with a wrong token (refused) and with the
// right one (accepted). Usage: node status_page.js URL TOKEN SCREENSHOT
const { chromium } = require('playwright-core');

(async () => {
  const [url, token, shot] = process.argv.slice(2);
  const browser = await chromium.launch({
    executablePath: '/usr/bin/chromium',
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
           '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
  try {
    const page = await browser.newPage({ viewport: { width: 1000, height: 760 } });
    await page.goto(url);
    await page.waitForFunction(() => document.getElementById('stage').textContent === 'stream',
                               null, { timeout: 30000 });
    // Let the lag chart gather a few samples.
    await page.waitForTimeout(2500);
    await page.screenshot({ path: shot, fullPage: true });
    await page.fill('#token', 'not-the-token');
    await page.click('#cutover');
    await page.waitForFunction(() => document.getElementById('cutover-result').textContent.includes('refused (403)'),
                               null, { timeout: 10000 });
    console.log('refused without the token');
    await page.fill('#token', token);
    await page.click('#cutover');
    await page.waitForFunction(() => document.getElementById('cutover-result').textContent === 'cutover requested',
                               null, { timeout: 10000 });
    console.log('cutover requested');
  } finally {
    await browser.close();
  }
})().catch((e) => { console.error(e); process.exit(1); });
