import type { Browser } from "playwright-core";
import { afterAll, beforeAll, expect, test } from "vitest";
import { launch, screenshot, signedIn } from "./browser.js";

let browser: Browser;
beforeAll(async () => {
  browser = await launch();
});
afterAll(async () => {
  await browser?.close();
});

test("every service is SERVING through the gateway and Triton's models are listed", async () => {
  const page = await signedIn(browser, "#/status");
  const services = page.getByTestId("service-health");
  await expect.poll(() => services.allTextContents(), { timeout: 30_000 }).toEqual([
    "persistenceSERVING",
    "generationSERVING",
    "retrievalSERVING",
    "orchestrationSERVING",
  ]);
  const models = await page.getByTestId("model").allTextContents();
  expect(models.some((m) => m.startsWith("models/llm") && m.includes("ready"))).toBe(true);
  await screenshot(page, "status");
});
