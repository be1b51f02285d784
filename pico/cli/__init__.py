"""Command-line logic behind the thin scripts in launch/: importable and tested."""
