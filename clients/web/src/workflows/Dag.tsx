// A workflow's steps as a DAG laid out by stage (the order ValidatePlan gives), each node
// showing its state, attempts and duration; edges from depends_on.
import type { orchestration } from "@callisto/client";
import type { StepView } from "../run-state.js";

const NODE_W = 170;
const NODE_H = 64;
const GAP_X = 60;
const GAP_Y = 18;

function seconds(duration: { seconds: bigint; nanos: number } | undefined): string {
  if (!duration) return "";
  return `${(Number(duration.seconds) + duration.nanos / 1e9).toFixed(1)} s`;
}

export function Dag({ planned, steps }: { planned: orchestration.WorkflowPlanned; steps: Record<string, StepView> }) {
  const stages = planned.stages.length ? planned.stages.map((s) => s.stepIds) : [planned.plan?.steps.map((s) => s.id) ?? []];
  const at: Record<string, { x: number; y: number }> = {};
  stages.forEach((ids, column) =>
    ids.forEach((id, row) => {
      at[id] = { x: 10 + column * (NODE_W + GAP_X), y: 10 + row * (NODE_H + GAP_Y) };
    }),
  );
  const width = 20 + stages.length * (NODE_W + GAP_X) - GAP_X;
  const height = 20 + Math.max(1, ...stages.map((s) => s.length)) * (NODE_H + GAP_Y) - GAP_Y;
  const plan = planned.plan?.steps ?? [];
  return (
    <div className="table-scroll">
      <svg viewBox={`0 0 ${width} ${height}`} width={width} height={height} role="img" aria-label="Workflow steps and their dependencies" className="dag">
        {plan.flatMap((step) =>
          step.dependsOn.map((from) => {
            const a = at[from];
            const b = at[step.id];
            if (!a || !b) return null;
            return <line key={`${from}-${step.id}`} x1={a.x + NODE_W} y1={a.y + NODE_H / 2} x2={b.x} y2={b.y + NODE_H / 2} className="edge" />;
          }),
        )}
        {plan.map((step) => {
          const place = at[step.id];
          if (!place) return null;
          const view = steps[step.id];
          const state = view?.update.state ?? "pending";
          return (
            <g key={step.id} transform={`translate(${place.x},${place.y})`} className={`node state-${state}`} data-testid="dag-step" data-step={step.id} data-state={state}>
              <rect width={NODE_W} height={NODE_H} rx={8} />
              <text x={10} y={20} className="title">{step.id}</text>
              <text x={10} y={38}>{state.replace("_", " ")}</text>
              <text x={10} y={54} className="small">
                {view ? `attempt ${view.update.attempt || 1}${view.update.duration ? ` · ${seconds(view.update.duration)}` : ""}` : ""}
              </text>
            </g>
          );
        })}
      </svg>
    </div>
  );
}
