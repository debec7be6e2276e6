"""Checks of what a user points the scripts at, run before any model loads (tokenizer: `checks.tokenizer`)."""
