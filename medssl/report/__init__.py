"""Results tables and curve figures, rebuilt from finished run folders only."""
