"""Inputs: what the user gives, read and checked before anything loads.

In: the YAML config, which config.py reads and checks into the typed settings of keys.py (whose key table is also the
README's and --help's), and the FASTA splits it names (fasta.py; paths.py says what an input path really is). Out: a
typed Config and per split a Records (packed ids, headers and sequences; ids.py reformats the ids), whose sequences
point into one UniqueSequences (unique.py): each distinct sequence once, with its digest, shared by every split.
Every user error found here is a one-line UserError.
"""
