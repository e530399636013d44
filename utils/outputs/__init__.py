"""Outputs: a finished model's chunks → the files the user reads.

In: the chunk store of a finished model and the splits' records. gather.py lays the vectors out by unique sequence
and gathers each split's rows in input order; writers.py writes them as .pt / .h5 / .parquet, atomically, keyed by
protein id; report.py (numbers) and report_html.py (the page, charts by matplotlib) write run_summary.json and
run_report.html from the workers' progress records. Out: files under output_dir; nothing is embedded here.
"""
