"""Re-rankers (SPEC section 5)."""
