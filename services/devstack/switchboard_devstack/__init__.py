"""Local development stack: embedded storage and a launcher for every process."""
