"""Inputs: what the user gives, read and checked before anything loads.

In: the YAML config, which config.py reads and checks into the typed settings of keys.py (whose key table is also the
README's and --help's), and the FASTA splits it names (fasta.py checks each record; paths.py says what an input path
really is). reading.py streams every split once and keeps what the run needs (a shard only its own proteins; residues
and header lines in scratch files, spill.py, at a proteome's size). Out: a typed Config and per split a Records
(ids, headers and sequences packed as strings.py's Strings; ids.py makes the ids), whose sequences point into one
UniqueSequences (unique.py): each distinct sequence once, with its digest, shared by every split. Every user error
found here is a one-line UserError.
"""
