"""devise: visual-semantic embeddings (DeViSE) and image search."""
