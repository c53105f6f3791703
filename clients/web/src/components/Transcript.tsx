// A conversation's turns: who spoke ("name (Company – Role)"), what, how long it took, its
// sentiment, the tools it called and the sources it cites.
import type { common } from "@callisto/client";
import type { TurnView } from "../run-state.js";

export function Transcript({
  turns,
  labels,
  onCitation,
}: {
  turns: TurnView[];
  labels: Record<string, string>;
  onCitation?: (citation: common.Citation) => void;
}) {
  if (turns.length === 0) return <p className="muted">No turns yet.</p>;
  return (
    <ol className="transcript" aria-label="Transcript" data-testid="transcript">
      {turns.map((turn) => (
        <li key={turn.key} className="turn" data-testid="turn" data-ended={turn.ended}>
          <div className="speaker">{labels[turn.speakerId] ?? (turn.human ? "You" : turn.speakerId)}</div>
          <div className="meta">
            {turn.turn > 0 && <>Turn {turn.turn}</>}
            {turn.generationMs !== undefined && turn.generationMs > 0 && (
              <> · generated in {(turn.generationMs / 1000).toFixed(1)} s</>
            )}
            {turn.sentiment !== undefined && <> · sentiment {turn.sentiment.toFixed(2)}</>}
            {!turn.ended && <> · speaking…</>}
            {turn.interrupted && <> · stopped</>}
          </div>
          {turn.toolCalls.length > 0 && (
            <ul className="tools" aria-label="Tool calls">
              {turn.toolCalls.map((call, i) => (
                <li key={call.id || i} data-testid="tool-call">
                  <code>{call.tool}</code>({call.arguments ? JSON.stringify(call.arguments) : ""})
                  {call.error ? <span className="error"> failed: {call.error}</span> : call.result ? <span className="muted"> · done{call.durationMs ? ` in ${Math.round(call.durationMs)} ms` : ""}</span> : <span className="muted"> · running…</span>}
                </li>
              ))}
            </ul>
          )}
          <div className="text" data-testid="turn-text">
            {turn.text}
          </div>
          {turn.citations.length > 0 && (
            <ol className="sources" aria-label="Sources">
              {turn.citations.map((citation, i) => (
                <li key={`${citation.chunkId}-${i}`} value={citation.marker || i + 1}>
                  {onCitation ? (
                    <button type="button" className="link" onClick={() => onCitation(citation)}>
                      [{citation.marker || i + 1}] {citation.title || citation.documentId}
                    </button>
                  ) : (
                    <span>
                      [{citation.marker || i + 1}] {citation.title || citation.documentId}
                    </span>
                  )}
                </li>
              ))}
            </ol>
          )}
        </li>
      ))}
    </ol>
  );
}
