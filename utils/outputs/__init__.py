"""Outputs: a finished model's chunks → the files the user reads.

In: the chunk store of a finished model and the splits' records. gather.py lays the vectors out by unique sequence
and gathers each split's rows in input order; writers.py writes them as .pt / .h5 / .parquet, atomically, keyed by
protein id. The run report: workers record their progress (progress.py), and at the end of the run report.py writes
run_summary.json and run_report.html (the page and its matplotlib charts: report_html.py). Out: files under
output_dir; nothing is embedded here.
"""
