"""Rendering a stored conversation for download: the shared document model (`document`), and
Markdown, PDF and JSON renderers."""
