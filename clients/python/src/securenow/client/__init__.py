"""SecureNow Python SDK (securenow.client)."""
