import type { Browser, Page } from "playwright-core";
import { afterAll, beforeAll, expect, test } from "vitest";
import { launch, screenshot, signedIn } from "./browser.js";

let browser: Browser;
beforeAll(async () => {
  browser = await launch();
});
afterAll(async () => {
  await browser?.close();
});

async function transcriptText(page: Page): Promise<string[]> {
  return await page.getByTestId("turn-text").allTextContents();
}

test("a simulation with the human taking a turn: the chart grows, Stop ends it", async () => {
  const page = await signedIn(browser, "#/simulator");
  await page.getByLabel("Agents").fill("2");
  await page.getByLabel("Max turns").fill("8");
  await page.getByLabel("I want to participate").check();
  await page.getByRole("button", { name: "Suggest agents" }).click();
  await page.getByTestId("suggested-agent").first().waitFor({ timeout: 120_000 });
  expect(await page.getByTestId("suggested-agent").count()).toBe(2);
  await page.getByRole("button", { name: "Run simulation" }).click();
  await page.waitForURL(/#\/simulator\/[a-z0-9-]+$/, { timeout: 60_000 });

  // Each speaker is labelled "name (Company – Role)".
  await page.getByTestId("turn").first().waitFor({ timeout: 60_000 });
  const speaker = await page.locator(".turn .speaker").first().textContent();
  expect(speaker).toMatch(/\(.+ – .+\)/);

  // The human is asked for a turn after the agents' first round.
  await page.getByLabel(/^Your turn/).waitFor({ timeout: 180_000 });
  const chart = page.getByTestId("sentiment-chart");
  const before = Number(await chart.getAttribute("data-points"));
  expect(before).toBeGreaterThanOrEqual(2);
  await page.getByLabel(/^Your turn/).fill("We need delivery within six weeks and a fixed price.");
  await page.getByRole("button", { name: "Send" }).click();
  await expect
    .poll(async () => (await transcriptText(page)).some((t) => t.includes("delivery within six weeks")), { timeout: 30_000 })
    .toBe(true);
  // The chart gains the human's turn, scored.
  await expect.poll(async () => Number(await chart.getAttribute("data-points")), { timeout: 60_000 }).toBeGreaterThan(before);

  await page.getByRole("button", { name: "Stop" }).click();
  await expect.poll(() => page.getByTestId("run-status").textContent(), { timeout: 15_000 }).toMatch(/Done: cancelled/);
  await screenshot(page, "simulator");
});
