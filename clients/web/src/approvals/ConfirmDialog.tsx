// Asks before a decision is sent, saying what will happen next.
import { type ReactNode, useEffect, useRef } from "react";

export function ConfirmDialog({
  title,
  body,
  confirm,
  onConfirm,
  onCancel,
  children,
}: {
  title: string;
  body: string;
  confirm: string;
  onConfirm: () => void;
  onCancel: () => void;
  children?: ReactNode;
}) {
  const dialog = useRef<HTMLDialogElement>(null);
  useEffect(() => {
    dialog.current?.showModal();
  }, []);
  return (
    <dialog ref={dialog} onClose={onCancel} aria-labelledby="confirm-title" aria-describedby="confirm-body" data-testid="confirm-dialog">
      <h2 id="confirm-title">{title}</h2>
      <p id="confirm-body">{body}</p>
      {children}
      <div className="row">
        <button type="button" onClick={onConfirm} autoFocus>
          {confirm}
        </button>
        <button type="button" className="secondary" onClick={onCancel}>
          Back
        </button>
      </div>
    </dialog>
  );
}
