"""Rule kinds: one module per kind of criterion a trial file can use."""
