// Shared set-up of the browser tests: Debian's Chromium through playwright-core, one signed-in
// page per test, and a screenshot of its final state saved as the test's artifact.
import { mkdirSync } from "node:fs";
import { join } from "node:path";
import { type Browser, chromium, type Page } from "playwright-core";

export const CONSOLE_URL = required("CALLISTO_CONSOLE_URL");
export const API_KEY = required("CALLISTO_API_KEY");
const SCREENSHOTS = process.env.CALLISTO_SCREENSHOTS ?? "test-results/screenshots";
const CHROMIUM = process.env.CALLISTO_CHROMIUM ?? "/usr/bin/chromium";

function required(name: string): string {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set (tests/e2e/test_console.py sets it)`);
  return value;
}

export async function launch(): Promise<Browser> {
  return await chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    // Containers without user namespaces cannot sandbox Chromium.
    args: ["--no-sandbox", "--disable-dev-shm-usage"],
  });
}

export const DESKTOP = { width: 1280, height: 800 };
export const PHONE = { width: 390, height: 844 };

/** A new page at `hash` (`#/simulator`), signed in with `key` through the sign-in form. */
export async function signedIn(
  browser: Browser,
  hash = "",
  { key = API_KEY, viewport = DESKTOP }: { key?: string; viewport?: { width: number; height: number } } = {},
): Promise<Page> {
  const context = await browser.newContext({ viewport });
  const page = await context.newPage();
  await page.goto(`${CONSOLE_URL}${hash}`);
  await page.getByLabel("API key").fill(key);
  await page.getByRole("button", { name: "Sign in" }).click();
  await page.getByTestId("tenant").waitFor();
  return page;
}

/** Saves `page` as `<name>.png` under CALLISTO_SCREENSHOTS. */
export async function screenshot(page: Page, name: string): Promise<string> {
  mkdirSync(SCREENSHOTS, { recursive: true });
  const path = join(SCREENSHOTS, `${name}.png`);
  await page.screenshot({ path, fullPage: true });
  return path;
}
