// Saves bytes the mesh returned (an HttpBody, an artifact) as a file the browser downloads.
export function saveBytes(data: Uint8Array, contentType: string, fileName: string): void {
  const copy = new Uint8Array(data.byteLength);
  copy.set(data);
  const url = URL.createObjectURL(new Blob([copy], { type: contentType || "application/octet-stream" }));
  const link = document.createElement("a");
  link.href = url;
  link.download = fileName;
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10_000);
}

export function errorText(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}
