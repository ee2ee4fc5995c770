"""How a candidate is scored, apart from who proposed it."""
