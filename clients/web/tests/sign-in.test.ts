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

test("every page fits a phone-width screen and names its controls", async () => {
  const page = await signedIn(browser, "#/simulator", { viewport: PHONE });
  for (const path of ["simulator", "conversations", "assistant", "workflows", "approvals", "status"]) {
    await page.goto(`${CONSOLE_URL}#/${path}`);
    await page.getByRole("heading", { level: 1 }).waitFor();
    await page.waitForLoadState("networkidle");
    const width = await page.evaluate(() => document.documentElement.scrollWidth);
    expect(width, path).toBeLessThanOrEqual(PHONE.width);
    // Every form control has an accessible name (a label, or a button's text).
    const unnamed = await page.evaluate(() =>
      [...document.querySelectorAll("input, select, textarea, button")]
        .filter((el) => !(el as HTMLElement).closest("dialog:not([open])"))
        .filter((el) => {
          const labelled = (el as HTMLInputElement).labels?.length || el.getAttribute("aria-label");
          return !labelled && !(el.textContent ?? "").trim();
        })
        .map((el) => el.outerHTML.slice(0, 80)),
    );
    expect(unnamed, path).toEqual([]);
  }
  await page.goto(`${CONSOLE_URL}#/simulator`);
  await screenshot(page, "phone-simulator");
});

test("the pages work from the keyboard: Tab reaches the navigation and Enter follows it", async () => {
  const page = await signedIn(browser, "#/simulator");
  await page.keyboard.press("Tab"); // the skip link
  await page.keyboard.press("Tab");
  const focused = await page.evaluate(() => document.activeElement?.textContent);
  expect(focused).toBe("Simulator");
  await page.keyboard.press("Tab");
  await page.keyboard.press("Enter");
  await page.getByRole("heading", { name: "Conversations", level: 1 }).waitFor();
});
