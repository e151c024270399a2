"""Model math and networks: pure PyTorch, no I/O beyond loading weight files."""
