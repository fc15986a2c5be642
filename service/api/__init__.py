"""HTTP routers (thin: validate, call the store, shape the answer) and their dependencies."""
