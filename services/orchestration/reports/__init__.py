"""Reports a run makes (the `create_report` tool): one validated `Report` rendered as a PDF with
its table and a bar chart (`pdf`, `chart`) or as CSV (`csv_file`). Rendering is CPU work
bounded by the report's own limits; callers run it in a worker thread."""
