"""How a parameter group's step runs: executors behind one interface."""
