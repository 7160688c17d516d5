"""The study's grid: both pretrainings, then M1-M4 over seeds and label fractions."""
