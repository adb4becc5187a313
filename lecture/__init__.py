"""Pure-NumPy versions of the lecture's operations, used by the tests as an oracle."""
