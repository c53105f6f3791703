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

test("the conference assistant streams a cited answer with its tool calls; a citation opens its passage", async () => {
  const page = await signedIn(browser, "#/assistant");
  await expect.poll(() => page.getByLabel("Agent").inputValue(), { timeout: 15_000 }).toBe("agents/conference-assistant");
  await page.getByRole("button", { name: "Ask" }).click();
  await page.waitForURL(/#\/assistant\/[a-z0-9-]+$/, { timeout: 60_000 });
  // A tool call shows while the answer is being worked out, before the run is done.
  await page.getByTestId("tool-call").first().waitFor({ timeout: 120_000 });
  expect(await page.getByTestId("tool-call").first().textContent()).toMatch(/search_(entities|documents)/);
  await expect.poll(() => page.getByTestId("run-status").textContent(), { timeout: 180_000 }).toMatch(/^Done: completed/);
  const answer = (await page.getByTestId("turn-text").allTextContents()).join("\n");
  expect(answer).toMatch(/\[\d+\]/); // numbered citations in the text
  const source = page.getByRole("list", { name: "Sources" }).getByRole("button").first();
  const title = (await source.textContent()) ?? "";
  await source.click();
  const dialog = page.getByTestId("citation-dialog");
  await dialog.getByRole("heading").waitFor();
  expect(await dialog.getByRole("heading").textContent()).toBe(title.trim());
  expect(((await page.getByTestId("citation-passage").textContent()) ?? "").length).toBeGreaterThan(20);
  await screenshot(page, "assistant-citation");
  await page.keyboard.press("Escape");
  await expect.poll(() => dialog.isVisible()).toBe(false);
  // Rating the answer is recorded.
  await page.getByRole("button", { name: "Helpful", exact: true }).click();
  await page.getByText("Thanks, recorded.").waitFor();
});
