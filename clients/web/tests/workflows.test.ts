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

// The sample workflow's agents with a shorter plan than the sample's five steps (which the
// launcher's test runs whole from the CLI): two checks, a recommendation to approve, a summary.
const PLAN = `
steps:
  - id: policy-check
    agent: agents/policy-analyst
    instruction: In one sentence, is payment net 30 days allowed by the procurement policy?
    tools: [search_documents]
  - id: security-check
    agent: agents/security-analyst
    instruction: In one sentence, may a supplier keep a permanent VPN tunnel?
    tools: [search_documents]
  - id: recommendation
    agent: agents/procurement-lead
    depends_on: [policy-check, security-check]
    instruction: In one sentence, should Marrowick accept the offer?
    requires_approval: true
  - id: summary
    agent: agents/procurement-lead
    depends_on: [recommendation]
    instruction: Repeat the recommendation in five words.
`;

test("a workflow runs, waits for approval, is approved in Approvals and runs on to completed", async () => {
  const page = await signedIn(browser, "#/workflows");
  // The sample is there to start from; validating it shows its stages.
  expect(await page.getByLabel(/^Plan/).inputValue()).toContain("id: policy-check");
  await page.getByRole("button", { name: "Validate" }).click();
  await expect.poll(() => page.getByRole("status").textContent()).toMatch(/Valid: .*policy-check \+ security-check/);
  await page.getByLabel(/^Plan/).fill(PLAN);
  await page.getByRole("button", { name: "Run workflow" }).click();
  await page.waitForURL(/#\/workflows\/[a-z0-9-]+$/, { timeout: 60_000 });
  const run = page.url();
  // The DAG shows the steps; the two checks run, then the recommendation waits.
  await page.getByTestId("dag-step").first().waitFor({ timeout: 60_000 });
  expect(await page.getByTestId("dag-step").count()).toBe(4);
  await page.locator('[data-testid="dag-step"][data-step="recommendation"][data-state="awaiting_approval"]').waitFor({ timeout: 240_000 });
  expect(await page.locator('[data-step="policy-check"]').getAttribute("data-state")).toBe("succeeded");

  await page.getByTestId("approval-link").click();
  await page.getByTestId("approval").first().waitFor({ timeout: 15_000 });
  const card = page.locator('[data-testid="approval"].awaiting');
  expect(await card.getByTestId("proposed-output").textContent()).toBeTruthy();
  await card.getByRole("button", { name: "Approve", exact: true }).click();
  const dialog = page.getByTestId("confirm-dialog");
  await dialog.waitFor();
  expect(await dialog.textContent()).toMatch(/the run continues with summary/);
  await dialog.getByLabel(/Comment/).fill("Looks right.");
  await dialog.getByRole("button", { name: "Approve" }).click();
  await page.getByTestId("decided").first().waitFor({ timeout: 15_000 });
  const audit = await page.getByTestId("audit-entry").allTextContents();
  expect(audit.some((row) => row.includes("requested"))).toBe(true);
  expect(audit.some((row) => row.includes("approved") && row.includes("Looks right."))).toBe(true);

  await page.goto(run);
  await expect.poll(() => page.getByTestId("run-status").textContent(), { timeout: 300_000 }).toMatch(/^Done: completed/);
  for (const step of ["recommendation", "summary"]) {
    expect(await page.locator(`[data-step="${step}"]`).getAttribute("data-state")).toBe("succeeded");
  }
  await screenshot(page, "workflow-completed");
});
