import type { Browser } from "playwright-core";
import { afterAll, beforeAll, expect, test } from "vitest";
import { CONSOLE_URL, launch, PHONE, screenshot, signedIn } from "./browser.js";

let browser: Browser;
beforeAll(async () => {
  browser = await launch();
});
afterAll(async () => {
  await browser?.close();
});

test("a pasted key signs in, names its tenant and survives a reload, in this tab only", async () => {
  const page = await signedIn(browser, "#/status");
  const tenant = await page.getByTestId("tenant").textContent();
  expect(tenant).toBeTruthy();
  await page.reload();
  await expect.poll(() => page.getByTestId("tenant").textContent()).toBe(tenant);
  const stored = await page.evaluate(() => ({
    session: sessionStorage.getItem("callisto.apiKey"),
    local: Object.keys(localStorage).length,
  }));
  expect(stored.session).toMatch(/^cal_/);
  expect(stored.local).toBe(0);
  // Another tab (a new context) starts signed out.
  const other = await browser.newPage();
  await other.goto(CONSOLE_URL);
  await other.getByLabel("API key").waitFor();
  await screenshot(page, "sign-in-status");
});

test("a forged key is refused with a message and nothing is stored", async () => {
  const page = await browser.newPage();
  await page.goto(CONSOLE_URL);
  await page.getByLabel("API key").fill(`cal_0123456789abcdef_${"x".repeat(43)}`);
  await page.getByRole("button", { name: "Sign in" }).click();
  await page.getByRole("alert").waitFor();
  expect(await page.getByRole("alert").textContent()).toMatch(/Sign-in failed/);
  expect(await page.evaluate(() => sessionStorage.getItem("callisto.apiKey"))).toBeNull();
});

test("the navigation fits a phone-width screen", async () => {
  const page = await signedIn(browser, "#/status", { viewport: PHONE });
  const width = await page.evaluate(() => document.documentElement.scrollWidth);
  expect(width).toBeLessThanOrEqual(PHONE.width);
  await screenshot(page, "phone-status");
});
