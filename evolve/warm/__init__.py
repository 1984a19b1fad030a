"""The warm process per node (the zygote) and the communication op it loads once."""
