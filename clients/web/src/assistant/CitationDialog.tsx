// The passage a numbered citation points at, in a modal dialog (Escape and the button close it).
import type { common } from "@callisto/client";
import { useEffect, useRef } from "react";

export function CitationDialog({ citation, onClose }: { citation: common.Citation | null; onClose: () => void }) {
  const dialog = useRef<HTMLDialogElement>(null);
  useEffect(() => {
    const element = dialog.current;
    if (!element) return;
    if (citation && !element.open) element.showModal();
    if (!citation && element.open) element.close();
  }, [citation]);
  return (
    <dialog ref={dialog} onClose={onClose} aria-labelledby="citation-title" data-testid="citation-dialog">
      {citation && (
        <>
          <h2 id="citation-title">
            [{citation.marker}] {citation.title || citation.documentId}
          </h2>
          <p className="muted">
            {[citation.section, citation.page ? `page ${citation.page}` : "", citation.endOffset > 0 ? `characters ${citation.startOffset}–${citation.endOffset}` : ""]
              .filter(Boolean)
              .join(" · ")}
          </p>
          <blockquote data-testid="citation-passage" style={{ whiteSpace: "pre-wrap" }}>
            {citation.text}
          </blockquote>
          {citation.sourceUri && (
            <p>
              Source: <code>{citation.sourceUri}</code>
            </p>
          )}
          <button type="button" onClick={onClose} autoFocus>
            Close
          </button>
        </>
      )}
    </dialog>
  );
}
