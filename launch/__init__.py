"""Pico's Ray layer and thin command lines: the search trainable, searcher and results export."""
