"""Demo landing-zone generator and the `make demo` runner."""
