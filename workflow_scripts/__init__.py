"""Stage logic of the post-training comparison workflow (one module per stage)."""
