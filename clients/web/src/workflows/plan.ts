// Workflow plans as people write them (YAML or JSON, the CLI's format), the bundled sample, and
// what a decision on one step leads to.
import { fromJson, type JsonValue } from "@bufbuild/protobuf";
import { orchestration } from "@callisto/client";
import { parse } from "yaml";
import sample from "../../../../deploy/samples/workflows/supplier-offer.yaml?raw";

export const SAMPLE_PLAN = sample;
export const SAMPLE_TASK = "Review the Tessaline Systems offer for Marrowick Motor Works";

/** The plan a YAML/JSON text describes, or an Error naming what is wrong. */
export function parsePlan(text: string): orchestration.WorkflowPlan {
  const data = parse(text) as JsonValue;
  return fromJson(orchestration.WorkflowPlanSchema, data);
}

export function dependents(plan: orchestration.WorkflowPlan | undefined, stepId: string): string[] {
  return (plan?.steps ?? []).filter((s) => s.dependsOn.includes(stepId)).map((s) => s.id);
}

/** What approving, modifying or rejecting `stepId` does next, in words. */
export function consequence(
  plan: orchestration.WorkflowPlan | undefined,
  stepId: string,
  decision: orchestration.ApprovalDecision,
): string {
  const next = dependents(plan, stepId);
  const after = next.length ? `the run continues with ${next.join(", ")}` : "the run goes on to its end";
  const step = plan?.steps.find((s) => s.id === stepId);
  switch (decision) {
    case orchestration.ApprovalDecision.APPROVE:
      return `The proposed output of ${stepId} is accepted as it is, and ${after}.`;
    case orchestration.ApprovalDecision.MODIFY:
      return `Your text replaces the output of ${stepId}, and ${after} with it.`;
    default:
      return step?.onFailure === orchestration.StepFailurePolicy.CONTINUE
        ? `${stepId} fails: ${next.length ? `${next.join(", ")} ${next.length > 1 ? "are" : "is"} skipped` : "nothing depends on it"}, and the other branches run to their end.`
        : `${stepId} fails, and so does the run: its other running steps are stopped.`;
  }
}
