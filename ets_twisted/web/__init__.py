"""The HTTP face of ETS: the Resource tree, admission, issuance and the relay."""
