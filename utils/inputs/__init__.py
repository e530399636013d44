"""Inputs: what the user gives, read and checked before anything loads.

In: the YAML config (config.py; its keys and their checks in keys.py) and the FASTA splits it names (fasta.py, with
paths.py saying what an input path really is). Out: a typed Config and per split a Records (packed ids, headers and
sequences, ids reformatted by ids.py), whose sequences point into one UniqueSequences (unique.py): each distinct
sequence once, with its digest, shared by every split. Every user error found here is a one-line UserError.
"""
