import { CallistoClient, orchestration } from "@callisto/client";
import { readFileSync } from "node:fs";
import type { Browser, Page } from "playwright-core";
import { afterAll, beforeAll, expect, test } from "vitest";
import { API_KEY, CONSOLE_URL, launch, screenshot, signedIn } from "./browser.js";

let browser: Browser;
let client: CallistoClient;
const tag = `replay-${Math.random().toString(36).slice(2, 8)}`;
let conversation = "";
// What the live run showed, for the replay to match.
let liveTurns: string[] = [];
let livePoints = 0;

beforeAll(async () => {
  browser = await launch();
  client = new CallistoClient({ baseUrl: new URL(CONSOLE_URL).origin, apiKey: API_KEY });
});
afterAll(async () => {
  await browser?.close();
});

const agent = (displayName: string, company: string, role: string) => ({
  displayName,
  company,
  role,
  systemPrompt: `You are ${displayName}, ${role} at ${company}. Speak in three or four sentences.`,
});

async function turnTexts(page: Page): Promise<string[]> {
  return (await page.getByTestId("turn-text").allTextContents()).map((t) => t.trim());
}

test("reloading mid-stream re-attaches: the same text, none duplicated, none missing", async () => {
  // A person takes part, so the run waits for them: the page is open before the next agent's
  // message starts, and the reload comes while that message streams in.
  const stream = client.run({
    mode: orchestration.ConversationMode.SIMULATION,
    title: "Reload me",
    prompt: "Tessaline Systems sells edge servers to Marrowick Motor Works",
    inlineAgents: [
      agent("Ada Lind", "Tessaline Systems", "Account executive"),
      agent("Bo Marsh", "Marrowick Motor Works", "Procurement lead"),
    ],
    termination: { maxTurns: 4 },
    humanInTheLoop: true,
    simulation: { human: { id: "buyer", displayName: "Cy Rowe", company: "Marrowick Motor Works", role: "CFO" } },
    tags: ["console", tag],
  });
  for await (const event of stream) {
    if (event.conversation) break;
  }
  conversation = stream.conversation;
  stream.close(); // a detached run goes on without its first stream
  const page = await signedIn(browser, `#/simulator/${conversation.split("/")[1]}`);
  await page.getByLabel(/^Your turn/).waitFor({ timeout: 180_000 });
  await page.getByLabel(/^Your turn/).fill("What would a three-year contract cost?");
  await page.getByRole("button", { name: "Send" }).click();
  // While the next agent's message is streaming in, reload.
  await page
    .locator('[data-testid="turn"][data-ended="false"] [data-testid="turn-text"]:not(:empty)')
    .first()
    .waitFor({ timeout: 120_000 });
  await page.reload();
  await expect.poll(() => page.getByTestId("run-status").textContent(), { timeout: 180_000 }).toMatch(/^Done: /);
  const shown = await turnTexts(page);
  const stored = await client.persistence.listMessages({ parent: conversation, pageSize: 100 });
  const texts = stored.messages.filter((m) => m.author !== "" && m.role !== 1).map((m) => m.text.trim());
  expect(shown).toEqual(texts);
  // Four agent turns and the person's message.
  expect(shown).toHaveLength(5);
  expect(shown).toContain("What would a three-year contract cost?");
  expect(new Set(shown).size).toBe(shown.length);
  liveTurns = shown;
  livePoints = Number(await page.getByTestId("sentiment-chart").getAttribute("data-points"));
  expect(livePoints).toBeGreaterThanOrEqual(4);
  await screenshot(page, "reload-reattached");
});

test("the conversation is found by its tag, replays with the same turns and chart, and exports JSON", async () => {
  expect(conversation).not.toBe("");
  const page = await signedIn(browser, "#/conversations");
  await page.getByLabel("Tag").fill(tag);
  await page.getByRole("button", { name: "Filter" }).click();
  await expect.poll(() => page.getByTestId("conversation-row").count(), { timeout: 15_000 }).toBe(1);
  await page.getByRole("link", { name: "Reload me" }).click();
  await expect.poll(() => page.getByTestId("run-status").textContent(), { timeout: 30_000 }).toMatch(/^Done: /);
  expect(await turnTexts(page)).toEqual(liveTurns);
  const points = Number(await page.getByTestId("sentiment-chart").getAttribute("data-points"));
  expect(points).toBe(livePoints);
  const download = page.waitForEvent("download");
  await page.getByRole("button", { name: "JSON" }).click();
  const file = await download;
  expect(file.suggestedFilename()).toBe(`${conversation.split("/")[1]}.json`);
  const exported = JSON.parse(readFileSync((await file.path())!, "utf-8")) as Record<string, unknown>;
  expect(JSON.stringify(exported)).toContain("Ada Lind");
  await screenshot(page, "conversations-replay");
});
