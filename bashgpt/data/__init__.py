"""Data: collect bash scripts, read corpora, tokenize, pack into fixed-length blocks."""
