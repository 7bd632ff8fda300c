"""Credentials and cryptography: passwords, tokens, API keys, encryption at rest."""
