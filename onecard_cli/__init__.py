"""onecard command line."""
