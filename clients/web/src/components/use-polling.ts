// Runs `refresh` now and every `everyMs` while the page is shown (a page that polls a list).
import { useEffect } from "react";

export function usePolling(refresh: () => Promise<void>, everyMs: number): void {
  useEffect(() => {
    void refresh();
    const timer = setInterval(() => void refresh(), everyMs);
    return () => clearInterval(timer);
  }, [refresh, everyMs]);
}
