import { beforeAll, describe, expect, test } from "vitest";
import { orchestration, persistence } from "../src/index.js";
import { client, droppingFetch } from "./live.js";

type ConversationEvent = orchestration.ConversationEvent;

function text(events: ConversationEvent[]): string {
  return events.map((e) => (e.kind.case === "token" ? e.kind.value.text : "")).join("");
}

function expectConsecutive(ids: bigint[]): void {
  for (let i = 1; i < ids.length; i++) expect(ids[i]).toBe(ids[i - 1]! + 1n);
}

describe("subscribeEvents", () => {
  test("resumes after a dropped connection with no gap and no duplicate", async () => {
    const mesh = client();
    const created = await mesh.persistence.createConversation({ conversation: { title: "resume me" } });
    const name = created.conversation!.name;
    for (let i = 1; i <= 20; i++) {
      await mesh.persistence.createMessage({
        parent: name,
        message: { role: 2, author: "me", text: `message ${i} ${"·".repeat(40)}` },
      });
    }
    await mesh.persistence.updateConversation({
      conversation: { name, status: persistence.ConversationStatus.COMPLETED },
      updateMask: { paths: ["status"] },
    });
    // The first subscription breaks after 600 bytes, in the middle of a message.
    const { fetch, calls } = droppingFetch("SubscribeEvents", 600);
    const sequences: bigint[] = [];
    for await (const event of client({ fetch }).subscribeEvents(name, { initialDelayMs: 10 })) {
      sequences.push(event.sequence);
    }
    expect(calls.filter((url) => url.includes("SubscribeEvents")).length).toBeGreaterThanOrEqual(2);
    const created20 = sequences.length;
    expect(created20).toBeGreaterThanOrEqual(20);
    expect(sequences[0]).toBe(1n);
    expectConsecutive(sequences);
  });
});

describe("runs", () => {
  let agent = "";
  beforeAll(async () => {
    const made = await client().orchestration.createAgent({
      agent: {
        displayName: "Brief greeter",
        role: "greeter",
        systemPrompt: "Answer in one short sentence.",
      },
    });
    agent = made.agent!.name;
  });

  test("a run whose stream drops mid-answer resumes: consecutive ids, one done, the stored text", async () => {
    const { fetch, calls } = droppingFetch("RunConversation", 400);
    const stream = client({ fetch }).run(
      { agents: [agent], prompt: "Say hello to the team.", budget: { maxTotalTokens: 600 } },
      { initialDelayMs: 10 },
    );
    const events: ConversationEvent[] = [];
    for await (const event of stream) events.push(event);
    expect(calls.some((url) => url.includes("StreamConversation"))).toBe(true);
    expect(stream.resumes).toBeGreaterThanOrEqual(1);
    expectConsecutive(events.map((e) => e.eventId));
    expect(events.filter((e) => e.kind.case === "done")).toHaveLength(1);
    expect(stream.done?.reason).not.toBe("cancelled"); // detached: the drop did not cancel it

    // Re-attaching from the start replays exactly the same events (after those the log held
    // before the run began: the question).
    const replay: ConversationEvent[] = [];
    for await (const event of client().streamConversation(stream.conversation)) {
      if (event.eventId >= events[0]!.eventId) replay.push(event);
    }
    expect(replay.map((e) => e.eventId)).toEqual(events.map((e) => e.eventId));
    expect(text(replay)).toBe(text(events));
    expect(text(events).length).toBeGreaterThan(0);
  });

  test("closing the stream of a detached run leaves it running; cancel stops it", async () => {
    const mesh = client();
    const stream = mesh.run({ agents: [agent], prompt: "Count slowly from one to forty in words." });
    for await (const event of stream) {
      if (event.kind.case === "token") break; // leaves the loop: the stream closes
    }
    const name = stream.conversation;
    await mesh.cancel(name, "test done");
    const events: ConversationEvent[] = [];
    for await (const event of mesh.streamConversation(name)) events.push(event);
    const done = events.at(-1);
    expect(done?.kind.case).toBe("done");
    expect(done?.kind.case === "done" && done.kind.value.reason).toBe("cancelled");
  });
});
