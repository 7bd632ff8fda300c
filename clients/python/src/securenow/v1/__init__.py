"""Generated SecureNow API (securenow.v1). Do not edit."""
