import { Code } from "@connectrpc/connect";
import { describe, expect, test } from "vitest";
import {
  CallistoClient,
  DeadlineExceeded,
  InvalidArgument,
  NotFound,
  Unauthenticated,
} from "../src/index.js";
import { client, GATEWAY, OTHER_KEY } from "./live.js";

describe("auth", () => {
  test("getCaller names the tenant of the key, and each key its own", async () => {
    const mine = await client().getCaller();
    const theirs = await client({ apiKey: OTHER_KEY }).getCaller();
    expect(mine.tenant).toBeTruthy();
    expect(theirs.tenant).toBeTruthy();
    expect(theirs.tenant).not.toBe(mine.tenant);
  });

  test("a missing or forged key is Unauthenticated", async () => {
    const anonymous = new CallistoClient({ baseUrl: GATEWAY });
    await expect(anonymous.getCaller()).rejects.toBeInstanceOf(Unauthenticated);
    const forged = client({ apiKey: `cal_0123456789abcdef_${"x".repeat(43)}` });
    const error = await forged.persistence.listConversations({}).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(Unauthenticated);
    expect((error as Unauthenticated).status).toBe("UNAUTHENTICATED");
  });

  test("another tenant's conversation is NotFound, never readable", async () => {
    const created = await client().persistence.createConversation({ conversation: { title: "mine only" } });
    const name = created.conversation!.name;
    const error = await client({ apiKey: OTHER_KEY })
      .persistence.getConversation({ name })
      .catch((e: unknown) => e);
    expect(error).toBeInstanceOf(NotFound);
    expect((await client().persistence.getConversation({ name })).conversation?.title).toBe("mine only");
  });
});

describe("typed errors", () => {
  test("a bad request is InvalidArgument with one field violation per problem", async () => {
    const error = await client()
      .persistence.createMessage({ parent: "conversations/Not An Id!", message: {} })
      .catch((e: unknown) => e);
    expect(error).toBeInstanceOf(InvalidArgument);
    const invalid = error as InvalidArgument;
    expect(invalid.code).toBe(Code.InvalidArgument);
    const fields = invalid.fieldViolations.map((v) => v.field);
    expect(fields).toContain("parent");
    expect(invalid.fieldViolations.every((v) => v.description.length > 0)).toBe(true);
  });

  test("a missing conversation is NotFound with the resource it looked for", async () => {
    const error = await client()
      .persistence.getConversation({ name: "conversations/never-made-here" })
      .catch((e: unknown) => e);
    expect(error).toBeInstanceOf(NotFound);
    expect((error as NotFound).message).toMatch(/never-made-here/);
  });

  test("a call past its deadline is DeadlineExceeded", async () => {
    const error = await client()
      .persistence.listConversations({}, { timeoutMs: 1 })
      .catch((e: unknown) => e);
    expect(error).toBeInstanceOf(DeadlineExceeded);
  });

  test("errors raised while a stream is read are typed too", async () => {
    const stream = client().orchestration.streamConversation({ name: "conversations/never-made-here" });
    const error = await (async () => {
      for await (const _ of stream) {
        /* nothing arrives */
      }
    })().catch((e: unknown) => e);
    expect(error).toBeInstanceOf(NotFound);
  });
});
